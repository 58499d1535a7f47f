"""The install's configure-by-footprint phases, each run as the flow runs
it (a Session, its phase runner and reports): pre-install scripts and the
network configuration before any disk is written, the network written with
the server's configuration, the initrd phase refusing an image that lacks
what the layout needs, the layout's bootloader flavor, post-install scripts
chrooted last."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from agent import flow, network
from agent import session as agent_session
from agent.configure.initrdpolicy import storage_needs
from agent.params import resolve
from agent.phases import InstallFailed, Steps
from agent.storage.defaults import SOURCE as DEFAULT_LAYOUT
from tests.conftest import FakeCommands, FakeResult
from tests.unit.test_flow import Recorder

SI = Path(__file__).resolve().parent / "data" / "si"
MAC = "52:54:00:ab:cd:01"


def session() -> tuple[flow.Session, Recorder]:
    rep = Recorder([])
    resolved = resolve([])
    s = flow.Session([], resolved.params, rep, Steps(rep), resolved=resolved)
    return s, rep


def plan(**kw: Any) -> Any:
    """What the phases read of an InstallPlan."""
    bootloader = kw.pop("bootloader", None)
    base = dict(hostname="node07.lab.example",
                image=SimpleNamespace(name="web", server="10.0.0.2", version=3,
                                      module="web@3"),
                disks=(SimpleNamespace(disk=SimpleNamespace(path="/dev/vda")),),
                filesystems=(SimpleNamespace(mountpoint="/", fs="ext4"),
                             SimpleNamespace(mountpoint="/boot/efi", fs="vfat")),
                layout=SimpleNamespace(bootloader=bootloader, source="web.xml"),
                firmware="uefi", boot_disks=("/dev/vda1",), overrides=())
    base.update(kw)
    return SimpleNamespace(**base)


NET = network.NetConfig(network.Nic("eth0", MAC, "virtio_net", None), "dhcp", "10.0.0.57", 24,
                        "10.0.0.1", ("10.0.0.1",), "lab.example")


def scripts_of(stage: str, *named: tuple[str, bytes]) -> dict[str, Any]:
    return {"scripts": {stage: [{"name": n, "sha256": hashlib.sha256(d).hexdigest(),
                                 "data": base64.b64encode(d).decode()} for n, d in named]}}


# -- pre-install ------------------------------------------------------------------------------

def test_pre_install_runs_the_scripts_with_systemimagers_variables(
        tmp_path: Path, fake_commands: FakeCommands, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_session, "RUN_DIR", tmp_path / "run")
    s, rep = session()
    instr = scripts_of("pre-install", ("10all.check", b"#!/bin/sh\necho ok\n"))
    scripts = flow.scriptlib.from_instructions(instr)
    d = tmp_path / "run/scripts/pre-install"
    fake_commands.add([f"{d}/10all.check"], "disks look fine\n")
    assert flow.pre_install(s, plan(), instr, NET, scripts["pre-install"]) is None
    assert rep.phases() == ["pre-install"] and rep.phases("done") == ["pre-install"]
    assert "  10all.check: disks look fine" in rep.lines
    variables = dict(line.split("=", 1) for line in
                     (d / "variables.txt").read_text().splitlines())
    assert variables["IMAGENAME"] == "web" and variables["HOSTNAME"] == "node07"
    assert variables["BASE_HOSTNAME"] == "node" and variables["IPADDR"] == "10.0.0.57"
    assert variables["NETMASK"] == "255.255.255.0" and variables["DISKS"] == "/dev/vda"
    assert variables["IMAGESERVER"] == "10.0.0.2" and variables["DEVICE"] == "eth0"


def test_a_failing_pre_install_script_fails_the_phase_with_its_name(
        tmp_path: Path, fake_commands: FakeCommands, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_session, "RUN_DIR", tmp_path / "run")
    s, rep = session()
    instr = scripts_of("pre-install", ("10all.check", b"#!/bin/sh\nexit 4\n"))
    d = tmp_path / "run/scripts/pre-install"
    fake_commands.add([f"{d}/10all.check"], FakeResult(stdout="sdb missing\n", returncode=4))
    with pytest.raises(InstallFailed) as e:
        flow.pre_install(s, plan(), instr, NET,
                         flow.scriptlib.from_instructions(instr)["pre-install"])
    assert e.value.fields["phase"] == "pre-install"
    assert e.value.message == "pre-install script 10all.check failed with exit code 4: " \
                              "sdb missing"
    failed = [ev for ev in rep.log if ev[:2] == ("event", "failed")]
    assert failed[0][2]["detail"]["script"] == "10all.check"


def test_pre_install_reads_the_network_configuration_before_any_disk(tmp_path: Path) -> None:
    s, rep = session()
    instr = {"network_config": {"name": "node.xml", "text": (SI / "net-config.xml").read_text()}}
    netcfg = flow.pre_install(s, plan(), instr, NET, ())
    assert netcfg is not None and [i.name for i in netcfg.ifaces][:2] == ["enp1s0", "enp2s0"]
    assert "no pre-install scripts for this client" in rep.lines
    bad = {"network_config": {"name": "bad.xml", "text": "<config><if/></config>"}}
    with pytest.raises(InstallFailed, match=r"bad\.xml: .* problems"):
        flow.pre_install(s, plan(), bad, NET, ())


# -- configure: the network ---------------------------------------------------------------

def test_the_network_configuration_is_written_in_the_images_style(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flow, "_udev_net_names", lambda ifname: {"ID_NET_NAME_PATH": "enp1s0"})
    s, rep = session()
    root = tmp_path / "sysroot"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/NetworkManager").touch()
    unit = root / "usr/lib/systemd/system/NetworkManager.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Install]\nWantedBy=multi-user.target\n")
    netcfg = flow.netlib.parse_network_config((SI / "net-config.xml").read_text(),
                                              "net-config.xml")
    written = flow._write_network(s, NET, root, netcfg)
    assert "/etc/NetworkManager/system-connections/bond0.nmconnection" in written
    assert any(line.startswith("network: NetworkManager, net-config.xml and the install NIC")
               for line in rep.lines)
    assert any("warning: network: net-config.xml:14: alias 1: gateway 10.1.5.1 is not used"
               in line for line in rep.lines)


def test_a_configuration_for_an_image_without_a_network_style(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr(flow, "_udev_net_names", lambda ifname: {})
    s, _ = session()
    netcfg = flow.netlib.parse_network_config((SI / "net-config.xml").read_text(), "n.xml")
    with pytest.raises(flow.ConfigError, match=r"n\.xml: the image has no network style"):
        flow._write_network(s, NET, tmp_path, netcfg)
    assert flow._write_network(s, NET, tmp_path) == []  # without one: a warning only


# -- initrd: what the layout needs --------------------------------------------------------

def test_the_initrd_phase_refuses_an_image_without_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sysroot"
    for p in ("usr/sbin/update-initramfs", "lib/modules/6.1.0-18-amd64/modules.dep",
              "boot/vmlinuz-6.1.0-18-amd64", "usr/share/initramfs-tools/hooks/mdadm"):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).touch()
    # What the storage plan says the root needs: RAID 1 under LVM.
    monkeypatch.setattr(flow, "_storage_needs", lambda plan: storage_needs(
        "ext4", ["virtio_blk"], {"md", "lvm"}, {"raid1"}, set()))
    s, _ = session()
    with pytest.raises(InstallFailed) as e:
        flow.initrd(s, plan(), SimpleNamespace(), root)
    assert e.value.fields["phase"] == "initrd"
    assert e.value.message == (
        "the layout needs LVM in the initrd, but the image lacks lvm2 (no "
        "/usr/share/initramfs-tools/hooks/lvm2): initramfs-tools could not build an initrd "
        "that mounts root")
    assert e.value.hint == "install lvm2 in the golden image"


# -- bootloader: the layout's flavor ------------------------------------------------------

def bootable(root: Path) -> None:
    for p in ("usr/sbin/grub-install", "usr/lib/grub/x86_64-efi/core.efi", "usr/bin/bootctl",
              "usr/lib/systemd/boot/efi/systemd-bootx64.efi"):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).touch()


def test_the_layouts_flavor_picks_the_bootloader(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sysroot"
    bootable(root)
    installed: list[tuple[str, Any]] = []
    for cls in (flow.bootlib.SystemdBoot, flow.bootlib.Grub2):
        monkeypatch.setattr(cls, "install", lambda self, root, target, ready=None:
                            installed.append((self.name, target)))
    s, rep = session()
    systemd = SimpleNamespace(flavor=SimpleNamespace(value="systemd"), timeout=2,
                              default_entry="0")
    flow.install_bootloader(s, plan(bootloader=systemd), root)
    name, target = installed[-1]
    assert name == "systemd-boot"
    assert (target.flavor, target.timeout, target.esp_mountpoint) == ("systemd", 2, "/boot/efi")
    assert "systemd-boot for uefi on /dev/vda1" in rep.lines
    # The built-in default layout names GRUB 2 for itself only: the footprint decides.
    default = plan(bootloader=SimpleNamespace(flavor=SimpleNamespace(value="grub2"),
                                              timeout=None, default_entry=None))
    default.layout.source = DEFAULT_LAYOUT
    flow.install_bootloader(s, default, root)
    assert installed[-1][0] == "grub2" and installed[-1][1].flavor is None


def test_a_flavor_the_image_lacks_fails_the_bootloader_phase(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/grub-install").touch()
    s, _ = session()
    systemd = SimpleNamespace(flavor=SimpleNamespace(value="systemd"), timeout=None,
                              default_entry=None)
    with pytest.raises(InstallFailed, match=r"the layout asks for systemd-boot") as e:
        flow.install_bootloader(s, plan(bootloader=systemd), root)
    assert e.value.fields["phase"] == "bootloader"


# -- post-install -------------------------------------------------------------------------

def test_post_install_runs_chrooted_last(tmp_path: Path, fake_commands: FakeCommands) -> None:
    root = tmp_path / "sysroot"
    s, rep = session()
    instr = scripts_of("post-install", ("50web.motd", b"#!/bin/sh\n"))
    fake_commands.add(["chroot", str(root), "/tmp/post-install/50web.motd"], "motd set\n")
    flow.post_install(s, plan(), NET, root, flow.scriptlib.from_instructions(instr)
                      ["post-install"])
    assert fake_commands.calls == [["chroot", str(root), "/tmp/post-install/50web.motd"]]
    assert rep.phases() == ["post-install"]
    assert "  50web.motd: motd set" in rep.lines
    s2, rep2 = session()
    flow.post_install(s2, plan(), NET, root, ())
    assert "no post-install scripts for this client" in rep2.lines


# -- filesystem drivers, loaded ahead of mount ---------------------------------------------

class RecordingKmod:
    calls: ClassVar[list[str]] = []

    def lookup(self, alias: str) -> list[str]:
        self.calls.append(f"lookup {alias}")
        return {"fs-ext4": ["ext4"], "fs-vfat": ["vfat"]}.get(alias, [])

    def load(self, name: str, options: str | None = None) -> None:
        self.calls.append(f"load {name}")
        if name == "ext4":
            raise flow.SyscloneError("module ext4 is not in this boot environment")

    def close(self) -> None:
        self.calls.append("close")


def test_the_plans_filesystem_drivers_load_ahead_by_the_kernels_aliases(
        monkeypatch: pytest.MonkeyPatch) -> None:
    RecordingKmod.calls = []
    monkeypatch.setattr(flow, "Kmod", RecordingKmod)
    p = plan(filesystems=(SimpleNamespace(mountpoint="/", fs="ext4"),
                          SimpleNamespace(mountpoint="/boot/efi", fs="fat32"),
                          SimpleNamespace(mountpoint=None, fs="swap")))
    flow.preload_filesystems(p).join(10)
    # A driver that does not load is left to mount, which says why; the
    # others still load.
    assert RecordingKmod.calls == ["lookup fs-ext4", "load ext4", "lookup fs-vfat",
                                   "load vfat", "close"]
