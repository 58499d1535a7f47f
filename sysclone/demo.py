"""`sysclone demo`: the product's main job, end to end, on a QEMU machine.

    golden image (debootstrap) -> kernel flavor -> boot environment
      -> image server (rsync + API) -> PXE tree -> blank VM installs over
         the network and powers off -> the same VM boots from its own disk
         to a login prompt

A QEMU VM (TCG, SeaBIOS, 512 MB, virtio NIC and disk) stands in for bare
metal; QEMU's user network provides DHCP and TFTP, and reaches the image
server on the host's loopback as 10.0.2.2.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.markers import DONE_MARKER, FAILED_MARKER
from ci.qemu import INSTALLER_ARGS, Vm, VmError, VmSpec, blank_disk
from sysclone.errors import SyscloneError
from sysclone.paths import StateRoot
from sysclone.ui import Ui

HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking: the host's loopback
BOOT_MEMORY_MIB = 256  # at least, for the installed system's first boot
# Console lines that mean the install will not finish.
INSTALL_FAILED = rf"{FAILED_MARKER}|agent exited with status|Kernel panic"


@dataclass(frozen=True)
class DemoOptions:
    image: str = "demo"
    hostname: str = "demo-node1"
    memory_mib: int = 512
    disk_gib: int = 4
    timeout: int = 1800
    flavor: str = "amd64"  # Debian's generic kernel: drives bare metal too
    mac: str = "52:54:00:5c:10:01"
    post_action: str = "poweroff"


@dataclass
class DemoResult:
    disk: Path
    install_seconds: float
    boot_seconds: float
    timings: dict[str, float]
    serial_logs: tuple[Path, ...]


def install_append(hostname: str, image: str, http_port: int, rsync_port: int,
                   post_action: str, extra: str = "") -> str:
    return (f"console=ttyS0,115200 panic=5 {INSTALLER_ARGS} IMAGESERVER={HOST_FROM_GUEST} "
            f"IMAGENAME={image} "
            f"HOSTNAME={hostname} si.server-port={http_port} si.rsync-port={rsync_port} "
            f"si.post-action={post_action} {extra}").strip()


def prepare(state: StateRoot, ui: Ui, opts: DemoOptions) -> Path:
    """Image, kernel and boot environment (each reused when already there);
    returns the boot environment directory."""
    from bootenv.standard import build_bootenv
    from imageserver.store import ImageStore

    if not ImageStore(state).exists(opts.image):
        from imageserver.bootstrap import BootstrapSpec, bootstrap_image
        from kernels.aptsources import find_debian_mirror

        spec = BootstrapSpec(mirror=find_debian_mirror().uri)
        with ui.step(f"bootstrap the golden image {opts.image!r}") as update:
            bootstrap_image(state, opts.image, spec, on_line=update)
    else:
        ui.info(f"==> image {opts.image!r} is in the store")
    result = build_bootenv(state, ui, flavor=opts.flavor)
    d = result.data["initrd"]
    ui.info(f"    initrd.img {d['size'] / 2**20:.1f} MiB ({d['compression']})")
    return result.kernel.parent


def pxe_vm(state: StateRoot, name: str, bootenv: Path, disk: Path, append: str, *,
           memory_mib: int = 512, mac: str = VmSpec.mac,
           more_disks: tuple[Path, ...] = ()) -> VmSpec:
    """A VM that PXE-boots the boot environment with `append` as its install
    parameters, through QEMU's TFTP from its own PXE tree."""
    from mkmedia.pxe import PxeSpec, write_tree

    tftp = state.pxe / name
    write_tree(tftp, PxeSpec(bootenv / "kernel", bootenv / "initrd.img", append))
    return VmSpec(name=name, workdir=state.vms, memory_mib=memory_mib,
                  disks=(disk, *more_disks), mac=mac, tftp_root=tftp, bootfile="pxelinux.0",
                  boot="n")


def unpack_failure(console: str, name: str, bootenv: Path, memory_mib: int
                   ) -> SyscloneError | None:
    """The clear error for a VM too small for the boot environment's initrd
    (the kernel's "Initramfs unpacking failed", then a panic), else None."""
    if "Initramfs unpacking failed" not in console:
        return None
    size = (bootenv / "initrd.img").stat().st_size >> 20
    return SyscloneError(
        f"{name}: the kernel could not unpack the boot environment's {size} MiB initrd "
        f"in {memory_mib} MiB of RAM",
        hint="give the VM more memory (--memory), or build a boot environment for VMs: "
             "sysclone bootenv build --flavor cloud-amd64 --modules "
             "filesystems,virtio_blk,virtio_net,virtio_pci,af_packet")


def install_vm(state: StateRoot, ui: Ui, opts: DemoOptions, bootenv: Path, disk: Path,
               *, append_extra: str = "", on_event: Any = None,
               done: str = DONE_MARKER) -> tuple[Vm, float]:
    """PXE-boot a VM with the boot environment and let the agent install it
    (or do what `append_extra` asks, ending with the `done` console line).
    Returns the (stopped) VM and the seconds it took."""
    from imageserver.monitor import format_event
    from imageserver.serve import ServeConfig, free_port, serving

    cfg = ServeConfig(address="127.0.0.1", rsync_port=free_port(), http_port=free_port(),
                      default_image=opts.image)
    with serving(state, cfg) as srv:
        def show(ev: dict[str, Any]) -> None:
            line = format_event(ev)
            if line:
                ui.info("    " + line)
            if on_event:
                on_event(ev)

        srv.monitor.subscribe(show)
        append = install_append(opts.hostname, opts.image, cfg.http_port, cfg.rsync_port,
                                opts.post_action, append_extra)
        spec = pxe_vm(state, f"{opts.hostname}-install", bootenv, disk, append,
                      memory_mib=opts.memory_mib, mac=opts.mac)
        ui.info(f"==> install {opts.hostname}: PXE boot of a blank VM ({opts.memory_mib} MiB, "
                f"{disk.stat().st_size / 2**30:.0f} GiB disk), console in "
                f"{state.vms / (spec.name + '.serial.log')}")
        t0 = time.monotonic()
        vm = Vm(spec)
        with vm:
            try:
                vm.wait_for(done, opts.timeout, fail=INSTALL_FAILED)
            except VmError as e:
                err = unpack_failure(vm.console_text(), spec.name, bootenv, opts.memory_mib)
                if err:
                    raise err from e
                raise
            vm.wait_exit(120)
        return vm, time.monotonic() - t0


def boot_vm(state: StateRoot, opts: DemoOptions, disk: Path, timeout: float = 600
            ) -> tuple[Vm, float, str]:
    """Boot the installed disk alone; wait for the login prompt, then press
    the power button."""
    # The installer runs in 128 MiB; the installed Debian's own initramfs
    # (unpacked whole by its kernel) needs more than that to boot.
    spec = VmSpec(name=f"{opts.hostname}-boot", workdir=state.vms,
                  memory_mib=max(opts.memory_mib, BOOT_MEMORY_MIB), disks=(disk,), mac=opts.mac,
                  boot="c")
    t0 = time.monotonic()
    with Vm(spec) as vm:
        _, line = vm.wait_for(r"\S+ login:", timeout)
        seconds = time.monotonic() - t0
        # A slow shutdown is not the demo's concern: the VM is killed then.
        with contextlib.suppress(VmError):
            vm.powerdown(300)
    return vm, seconds, line.strip()


def run_demo(state: StateRoot, ui: Ui, opts: DemoOptions) -> int:
    t_all = time.monotonic()
    bootenv = prepare(state, ui, opts)
    disk = blank_disk(state.vms / f"{opts.hostname}.img", opts.disk_gib << 30)
    done: dict[str, Any] = {}

    def keep_done(ev: dict[str, Any]) -> None:
        if ev.get("kind") == "done":
            done.update(ev)

    try:
        _, install_s = install_vm(state, ui, opts, bootenv, disk, on_event=keep_done)
    except SyscloneError as e:
        raise SyscloneError(f"install of {opts.hostname} failed: {e.message}",
                            hint=e.hint) from None
    ui.info(f"    installed in {install_s:.0f}s (VM start to power-off)")
    ui.info(f"==> boot {opts.hostname} from its own disk")
    vm2, boot_s, prompt = boot_vm(state, opts, disk)
    if not prompt.startswith(opts.hostname):
        raise SyscloneError(f"the installed system came up as {prompt!r}, "
                            f"not {opts.hostname}", hint=f"console: {vm2.serial_log}")
    ui.info(f"    login prompt after {boot_s:.0f}s: {prompt}")
    ui.info("")
    ui.info("Summary")
    for name, t in ui.timings:
        ui.info(f"  {name:<60} {t:7.1f}s")
    for name, t in (done.get("timings") or {}).items():
        ui.info(f"  agent phase {name:<48} {t:7.1f}s")
    ui.info(f"  {'install VM, start to power-off':<60} {install_s:7.1f}s")
    ui.info(f"  {'installed VM, start to login prompt':<60} {boot_s:7.1f}s")
    ui.info(f"  {'total':<60} {time.monotonic() - t_all:7.1f}s")
    ui.info(f"installed disk: {disk}")
    (state.vms / f"{opts.hostname}.json").write_text(json.dumps(
        {"disk": str(disk), "install_seconds": install_s, "boot_seconds": boot_s,
         "timings": done.get("timings"), "prompt": prompt}, indent=2))
    return 0
