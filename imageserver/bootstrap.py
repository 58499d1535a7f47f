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


def _run_debootstrap(spec: BootstrapSpec, target: Path,
                     on_line: Callable[[str], None] | None) -> None:
    argv = ["debootstrap", f"--variant={spec.variant}", f"--arch={spec.arch}",
            f"--include={','.join(spec.packages)}", "--components=main",
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
    key = spec.cache_key(debootstrap_version())
    tarball = state.cache("debootstrap", f"{spec.suite}-{spec.arch}-{key}.tar.zst")
    details = {"suite": spec.suite, "arch": spec.arch, "variant": spec.variant,
               "mirror": spec.mirror, "packages": list(spec.packages), "cache_key": key}
    v = Versions(state)
    with v.lock(name), v.stage(name) as s:
        work = s.tree
        if use_cache and tarball.is_file():
            if on_line:
                on_line(f"I: using cached tree {tarball}")
            run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
                 "-xpf", str(tarball), "-C", str(work)])
        else:
            _run_debootstrap(spec, work, on_line)
            prepare_golden(work, spec)
            tarball.parent.mkdir(parents=True, exist_ok=True)
            tmp = tarball.with_suffix(".tmp")
            run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
                 "-cpf", str(tmp), "-C", str(work), "."])
            tmp.replace(tarball)
        # A rebuild from the same inputs shares every unchanged file with the
        # previous version.
        seal(v, s, NewVersion(origin="bootstrap", source=spec.mirror, details=details,
                              dedupe=True), on_line)
    return store.info(name)
