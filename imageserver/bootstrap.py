"""Building a golden image from scratch with debootstrap.

`sysclone image bootstrap` is the no-golden-machine-yet path: a minimal
Debian (minbase, a kernel, GRUB, systemd, ifupdown with a DHCP client) is
debootstrapped, prepared the way si_prepareclient prepares a golden client
(no machine-id, no cached packages, a serial console so VMs can be watched),
and stored as an image.  The finished tree is cached as a tarball keyed by
every input, so a rerun with the same inputs only unpacks it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imageserver.seal import NewVersion, seal
from imageserver.store import ImageInfo, ImageStore, check_name
from imageserver.versions import Versions
from sysclone.errors import SyscloneError
from sysclone.paths import StateRoot
from sysclone.run import output, run, spawn

log = logging.getLogger(__name__)

# Bump when prepare_golden() changes what it writes: old cached trees are
# then rebuilt instead of reused.
PREPARE_VERSION = 1

# dbus: systemd-logind needs it to act on the ACPI power button, so the
# machine shuts down cleanly when asked (as a real server's install would).
DEFAULT_PACKAGES = (
    "linux-image-cloud-amd64", "grub-pc", "systemd", "systemd-sysv", "udev", "kmod",
    "initramfs-tools", "zstd", "ifupdown", "isc-dhcp-client", "iproute2", "dbus",
)

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# What an --include takes the place of.  debootstrap installs every package
# it is given, without resolving conflicts: dracut and initramfs-tools
# conflict, and a second network stack beside ifupdown would make the
# image's network style ambiguous (sysclone configures the installed system
# by the footprint it finds).
REPLACES: dict[str, tuple[str, ...]] = {
    "dracut": ("initramfs-tools",),
    "systemd-networkd": ("ifupdown", "isc-dhcp-client"),
}

# Names --include accepts that are not Debian packages: part of a package
# already installed, switched on in the golden image instead.
# systemd-networkd ships in systemd; a golden client that uses it has it
# enabled, as `systemctl enable systemd-networkd` leaves it.
SERVICES: dict[str, tuple[str, ...]] = {
    "systemd-networkd": ("systemd-networkd.service",),
}


def package_set(include: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The default packages plus `include`, minus what an included one
    replaces (REPLACES), in a stable order: it is part of the cache key."""
    dropped = {d for pkg in include for d in REPLACES.get(pkg, ())}
    return tuple(dict.fromkeys([*(p for p in DEFAULT_PACKAGES if p not in dropped),
                                *include]))


@dataclass(frozen=True)
class BootstrapSpec:
    mirror: str
    suite: str = "bookworm"
    arch: str = "amd64"
    variant: str = "minbase"
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    serial_console: bool = True
    keyring: Path = KEYRING
    extra: dict[str, str] = field(default_factory=dict)

    def cache_key(self, debootstrap_version: str) -> str:
        d = asdict(self)
        d["keyring"] = str(self.keyring)
        d["debootstrap"] = debootstrap_version
        d["prepare"] = PREPARE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]

    def tarball_name(self, key: str) -> str:
        """The cached tree's file name (in the cache's debootstrap/), for
        the cache key `key`."""
        return f"{self.suite}-{self.arch}-{key}.tar.zst"


def debootstrap_version() -> str:
    out = output(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"], check=False)
    return out.strip() or "unknown"


GRUB_SERIAL = """
# sysclone bootstrap: console on the first serial port too, so a VM can be
# watched (and a login prompt seen) without a screen.
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
"""

INTERFACES = """# The loopback network interface
auto lo
iface lo inet loopback

# Interfaces of installed clients are written here by sysclone.
source /etc/network/interfaces.d/*
"""


def prepare_golden(tree: Path, spec: BootstrapSpec) -> None:
    """Make a fresh tree a good golden client, as si_prepareclient would."""
    # Every clone must get its own machine-id on first boot.
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (tree / "etc/hostname").write_text("golden\n")
    (tree / "etc/fstab").write_text("# written by sysclone when this image is installed\n")
    (tree / "etc/network").mkdir(parents=True, exist_ok=True)
    (tree / "etc/network/interfaces.d").mkdir(exist_ok=True)
    (tree / "etc/network/interfaces").write_text(INTERFACES)
    if spec.serial_console:
        grub = tree / "etc/default/grub"
        if grub.is_file():
            grub.write_text(grub.read_text() + GRUB_SERIAL)
    for name in spec.packages:
        for unit in SERVICES.get(name, ()):
            enable_unit(tree, unit)


def enable_unit(tree: Path, unit: str) -> None:
    """`systemctl enable` in the golden tree, without running anything."""
    from agent.configure.units import enable

    enable(tree, unit)


def _run_debootstrap(spec: BootstrapSpec, target: Path,
                     on_line: Callable[[str], None] | None) -> None:
    # debootstrap lays down the base; what --include adds goes in after,
    # through apt.  debootstrap's resolver takes the first of alternatives
    # ("initramfs-tools | linux-initramfs-tool", the kernel's), cannot follow
    # a virtual package (polkitd's "default-logind | logind", which
    # network-manager needs) and cannot remove a conflicting one.
    later = [p for p in spec.packages if p not in DEFAULT_PACKAGES and p not in SERVICES]
    packages = [p for p in spec.packages if p in DEFAULT_PACKAGES]
    argv = ["debootstrap", f"--variant={spec.variant}", f"--arch={spec.arch}",
            f"--include={','.join(packages)}", "--components=main",
            f"--keyring={spec.keyring}", spec.suite, str(target), spec.mirror]
    tail: list[str] = []
    with spawn(argv) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail, line][-8:]
            if on_line:
                on_line(line)
        rc = proc.wait()
    if rc != 0:
        log_file = target / "debootstrap/debootstrap.log"
        hint = f"see {log_file}" if log_file.exists() else None
        raise SyscloneError(f"debootstrap {spec.suite} from {spec.mirror} failed: "
                            + "; ".join(tail[-3:]), hint=hint)
    if later:
        _apt_install(target, later, on_line)


POLICY_RC_D = "#!/bin/sh\n# sysclone bootstrap: no daemon starts in the golden tree\nexit 101\n"


def _apt_install(target: Path, packages: list[str],
                 on_line: Callable[[str], None] | None) -> None:
    """apt-get install in the fresh tree (from the package lists debootstrap
    left there), daemons kept from starting, as curtin's chroots do."""
    from agent.chroot import chroot_target

    if on_line:
        on_line(f"I: installing {', '.join(packages)} with apt")
    policy = target / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    # The host's resolver for the download: the tree's may point into its
    # /run (systemd-resolved's stub), which is empty while chrooted.
    resolv = target / "etc/resolv.conf"
    saved = resolv.readlink() if resolv.is_symlink() else None
    text = resolv.read_bytes() if saved is None and resolv.is_file() else None
    resolv.unlink(missing_ok=True)
    resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
    try:
        with chroot_target(target, efi=False):
            res = run(["apt-get", "install", "-y", "--no-install-recommends", *packages],
                      target=target, check=False,
                      env={"DEBIAN_FRONTEND": "noninteractive"})
    finally:
        policy.unlink()
        resolv.unlink(missing_ok=True)
        if saved is not None:
            resolv.symlink_to(saved)
        elif text is not None:
            resolv.write_bytes(text)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise SyscloneError(f"apt-get install {' '.join(packages)} in the new tree failed: "
                            + "; ".join(tail))


def golden_tree(state: StateRoot, spec: BootstrapSpec, work: Path, *, use_cache: bool = True,
                on_line: Callable[[str], None] | None = None) -> str:
    """debootstrap a golden tree into the empty directory `work`, or unpack
    it from the cache (keyed by every input, written on a miss); returns the
    cache key.  Integration tests build their chroots with it too, so a
    tree made for a test and an image bootstrapped with the same packages
    share one cache entry."""
    if not spec.keyring.is_file():
        raise SyscloneError(f"keyring {spec.keyring} not found",
                            hint="install debian-archive-keyring")
    key = spec.cache_key(debootstrap_version())
    tarball = state.cache("debootstrap", spec.tarball_name(key))
    if use_cache and tarball.is_file():
        if on_line:
            on_line(f"I: using cached tree {tarball}")
        run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
             "-xpf", str(tarball), "-C", str(work)])
        return key
    _run_debootstrap(spec, work, on_line)
    prepare_golden(work, spec)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_suffix(".tmp")
    run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
         "-cpf", str(tmp), "-C", str(work), "."])
    tmp.replace(tarball)
    return key


def bootstrap_image(state: StateRoot, name: str, spec: BootstrapSpec, *, force: bool = False,
                    use_cache: bool = True,
                    on_line: Callable[[str], None] | None = None) -> ImageInfo:
    """debootstrap (or unpack from cache) a golden tree and store it as a new
    version of `name` (version 1 if it is new).  Nothing is replaced: `force`
    is kept for callers of the old signature and means nothing any more."""
    del force
    store = ImageStore(state)
    check_name(name)
    if not spec.keyring.is_file():
        raise SyscloneError(f"keyring {spec.keyring} not found",
                            hint="install debian-archive-keyring")
    v = Versions(state)
    with v.lock(name), v.stage(name) as s:
        key = golden_tree(state, spec, s.tree, use_cache=use_cache, on_line=on_line)
        details = {"suite": spec.suite, "arch": spec.arch, "variant": spec.variant,
                   "mirror": spec.mirror, "packages": list(spec.packages), "cache_key": key}
        # A rebuild from the same inputs shares every unchanged file with the
        # previous version.
        seal(v, s, NewVersion(origin="bootstrap", source=spec.mirror, details=details,
                              dedupe=True), on_line)
    return store.info(name)
