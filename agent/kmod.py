"""Kernel module lookup and loading through libkmod, via ctypes.

kmodpy (the PyPI binding) was tried first and is not used: its `modprobe`
inserts only the named module (kmod_module_insert_module, so dependencies
are not loaded despite its docstring), it cannot tell builtin modules from
missing ones, `Kmod(mod_dir)` only accepts bytes, its lookup never unrefs the
modules it returns, and it needs `ctypes.util.find_library` (ldconfig) at
import, which an initramfs does not have.  The few libkmod calls we need are
bound here instead; kmod_module_probe_insert_module does what modprobe does
(dependencies, softdeps, options, blacklist).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import SyscloneError

KMOD_PROBE_APPLY_BLACKLIST = 0x20000
KMOD_MODULE_BUILTIN = 0


class KmodError(SyscloneError):
    pass


def _bind(lib: ctypes.CDLL) -> None:
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    sig = {
        "kmod_new": (vp, [cp, ctypes.POINTER(cp)]),
        "kmod_unref": (vp, [vp]),
        "kmod_load_resources": (ci, [vp]),
        "kmod_module_new_from_lookup": (ci, [vp, cp, ctypes.POINTER(vp)]),
        "kmod_module_new_from_name": (ci, [vp, cp, ctypes.POINTER(vp)]),
        "kmod_list_next": (vp, [vp, vp]),
        "kmod_module_get_module": (vp, [vp]),
        "kmod_module_get_name": (cp, [vp]),
        "kmod_module_get_path": (cp, [vp]),
        "kmod_module_get_initstate": (ci, [vp]),
        "kmod_module_unref": (vp, [vp]),
        "kmod_module_unref_list": (ci, [vp]),
        "kmod_module_probe_insert_module": (ci, [vp, ctypes.c_uint, cp, vp, vp, vp]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


@dataclass
class _Module:
    name: str
    ptr: int


class Kmod:
    """A libkmod context over one modules directory (default: running kernel)."""

    def __init__(self, modules_dir: Path | None = None, libname: str = "libkmod.so.2") -> None:
        try:
            self._lib = ctypes.CDLL(libname, use_errno=True)
        except OSError as e:
            raise KmodError(f"cannot load {libname}: {e}") from e
        _bind(self._lib)
        d = str(modules_dir).encode() if modules_dir else None
        self._ctx = self._lib.kmod_new(d, None)
        if not self._ctx:
            raise KmodError(f"kmod_new failed for {modules_dir or 'the running kernel'}")
        self._lib.kmod_load_resources(self._ctx)

    def close(self) -> None:
        if self._ctx:
            self._lib.kmod_unref(self._ctx)
            self._ctx = None

    def __enter__(self) -> Kmod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _modules(self, lst: int | None) -> list[_Module]:
        out = []
        it = lst
        while it:
            mod = self._lib.kmod_module_get_module(it)
            out.append(_Module(self._lib.kmod_module_get_name(mod).decode(), mod))
            it = self._lib.kmod_list_next(lst, it)
        return out

    def lookup(self, alias: str) -> list[str]:
        """Module names matching a modalias or module name (builtins included)."""
        lst = ctypes.c_void_p()
        err = self._lib.kmod_module_new_from_lookup(self._ctx, alias.encode(), ctypes.byref(lst))
        if err < 0:
            raise KmodError(f"lookup of {alias!r} failed: {os.strerror(-err)}")
        mods = self._modules(lst.value)
        names = [m.name for m in mods]
        for m in mods:
            self._lib.kmod_module_unref(m.ptr)
        if lst.value:
            self._lib.kmod_module_unref_list(lst)
        return names

    def is_builtin(self, name: str) -> bool:
        mod = ctypes.c_void_p()
        if self._lib.kmod_module_new_from_name(self._ctx, name.encode(), ctypes.byref(mod)) < 0:
            return False
        try:
            return (self._lib.kmod_module_get_path(mod) is None
                    and self._lib.kmod_module_get_initstate(mod) == KMOD_MODULE_BUILTIN)
        finally:
            self._lib.kmod_module_unref(mod)

    def load(self, name: str, options: str | None = None) -> None:
        """modprobe `name`: dependencies first, blacklist applied, loaded is fine."""
        mod = ctypes.c_void_p()
        err = self._lib.kmod_module_new_from_name(self._ctx, name.encode(), ctypes.byref(mod))
        if err < 0:
            raise KmodError(f"module {name}: {os.strerror(-err)}")
        try:
            if self._lib.kmod_module_get_path(mod) is None:
                if self._lib.kmod_module_get_initstate(mod) == KMOD_MODULE_BUILTIN:
                    return
                raise KmodError(f"module {name} is not in this boot environment")
            err = self._lib.kmod_module_probe_insert_module(
                mod, KMOD_PROBE_APPLY_BLACKLIST, options.encode() if options else None,
                None, None, None)
            if err < 0 and -err != errno.EEXIST:
                raise KmodError(f"loading module {name} failed: {os.strerror(-err)}")
        finally:
            self._lib.kmod_module_unref(mod)
