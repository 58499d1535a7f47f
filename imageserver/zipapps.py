"""The one-file programs the image server hands to machines without
sysclone (`client prepare`, the inventory, updateclient), as zipapps:
`python3 FILE ...`.

Fixed timestamps and modes, so the same sources give the same bytes.  With
`bytecode`, each module also travels compiled for this server's Python, as
an unchecked hash-based .pyc (PEP 552: no timestamp in it): zipimport takes
it on a client whose Python has the same magic number and skips compiling
the source -- 21 ms of the ~80 ms of Python that a no-op updateclient run
adds to its rsync -- and on any other version falls back to the source, as
a plain script would.
"""

from __future__ import annotations

import importlib.util
import io
import marshal
import zipfile
from collections.abc import Sequence

SHEBANG = b"#!/usr/bin/env python3\n"
_DATE = (1980, 1, 1, 0, 0, 0)
_UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked


def pyc(source: bytes, filename: str) -> bytes:
    """`source` compiled as this Python's import system writes it: magic
    number, flags, the source's hash, the marshalled code."""
    code = compile(source, filename, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + _UNCHECKED_HASH.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def build(files: Sequence[tuple[str, bytes]], main: bytes, *, bytecode: bool = False) -> bytes:
    """A zipapp of `files` (name in the archive, contents) whose
    __main__.py is `main`."""
    entries = [("__main__.py", main)]
    for name, data in files:
        entries.append((name, data))
        # A module at the top of the archive: zipimport looks for NAME.pyc
        # beside NAME.py (no __pycache__ in a zip).
        if bytecode and name.endswith(".py") and "/" not in name:
            entries.append((name + "c", pyc(data, name)))
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_DATE)
            info.external_attr = 0o644 << 16
            z.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()
