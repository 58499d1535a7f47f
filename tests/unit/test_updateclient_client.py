"""The updateclient script's own logic, without rsync or a server: reading
rsync's itemized changes, the excludes, the health check, the rollback
point's record, the installer's parameters.  (It runs for real, rsync and
all, in tests/integration/test_updateclient.py.)"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from imageserver.updateclient import client
from imageserver.updateclient.client import Change, Plan, parse_itemized

ITEMIZED = """\
receiving incremental file list
.d..t...... ./
>f.st...... etc/motd
>f+++++++++ usr/bin/htop
cd+++++++++ usr/share/htop/
cL+++++++++ usr/bin/top2 -> htop
hf+++++++++ usr/bin/htop2 => usr/bin/htop
.f...p..... etc/shadow
*deleting   etc/issue.net
*deleting   usr/share/old/
>f+++++++++ usr/share/doc/a\\#012b
>f.st...... boot/vmlinuz-6.1.0-9-amd64
cd+++++++++ lib/modules/6.1.0-9-amd64/

Number of files: 9 (reg: 5, dir: 3, link: 1)
Total transferred file size: 1,234,567 bytes
Total bytes sent: 1,024
Total bytes received: 98,304
"""


def test_parse_itemized():
    changes = parse_itemized(ITEMIZED)
    by_path = {c.path: c for c in changes}
    assert by_path["."].kind == "changed"
    assert by_path["etc/motd"].kind == "changed"
    assert by_path["usr/bin/htop"].kind == "created"
    assert by_path["usr/share/htop"].kind == "created"
    assert by_path["usr/bin/top2"].kind == "created"  # the symlink, without its target
    assert by_path["usr/bin/htop2"].link == "usr/bin/htop"
    assert by_path["etc/shadow"].kind == "changed"
    assert by_path["etc/issue.net"].kind == "deleted"
    assert by_path["usr/share/old"].kind == "deleted"
    assert "usr/share/doc/a\nb" in by_path  # rsync's \#ooo escapes undone
    assert len(changes) == 12


def test_plan_and_wire():
    plan = Plan(parse_itemized(ITEMIZED), client._number(client._TRANSFER, ITEMIZED))
    assert plan.transfer_bytes == 1234567
    assert plan.kernel_changed
    assert "usr/bin/htop" in plan.transfer() and "etc/issue.net" not in plan.transfer()
    assert plan.transfer().count("usr/bin/htop") == 1  # a hard link's other name once
    wire = client.Wire()
    wire.add(ITEMIZED)
    assert (wire.sent, wire.received) == (1024, 98304)
    assert not Plan([Change("etc/motd", ">f.st......")]).kernel_changed
    assert Plan([Change("usr/lib/modules/6.1.0-9-amd64/x.ko", ">f+++++++++")]).kernel_changed


def test_excludes(tmp_path):
    root = tmp_path / "root"
    (root / "etc/sysclone").mkdir(parents=True)
    (root / "etc/sysclone/updateclient.exclude").write_text("# site\n/srv/data/**\n\n")
    extra = tmp_path / "more"
    extra.write_text("/opt/local/**\n")
    out = client.excludes_for(str(root), ["/etc/network/interfaces.d/enp0s2", "/etc/we*rd"],
                              ["/var/cache/**"], [str(extra)])
    assert out[:3] == ["/proc/**", "/sys/**", "/dev/**"]
    for p in ("/var/log/**", "/home/**", "/etc/ssh/ssh_host_*", "/etc/machine-id",
              "/etc/fstab", "/etc/crypttab", "/etc/hostname", "/boot/efi/**",
              "/etc/network/interfaces.d/enp0s2", "/etc/we\\*rd", "/srv/data/**",
              "/opt/local/**", "/var/cache/**", "/var/lib/sysclone", "lost+found/",
              "/var/lib/systemd/timers/", "/etc/lvm/backup/**", "/etc/lvm/archive/**"):
        assert p in out
    with pytest.raises(client.UpdateError, match="no such file"):
        client.excludes_for(str(root), [], [], [str(tmp_path / "nope")])
    with pytest.raises(client.UpdateError, match="line break"):
        client.excludes_for(str(root), [], ["a\nb"], [])


def test_a_mounted_pseudo_filesystem_is_excluded_with_its_mount_point(monkeypatch):
    """Updating the running system: /proc's mount point shows the mounted
    proc's root (0555, dated from boot), not the image's directory under
    it, so neither is compared; on a real machine each such directory was
    a change, off the root's filesystem, and made the rollback point
    copies instead of a snapshot."""
    monkeypatch.setattr(client, "skipped_mounts", lambda: ["/proc", "/run/user/0", "/we ird*"])
    out = client.excludes_for("/", [], [], [])
    assert {"/proc", "/run/user/0", "/we ird\\*"} <= set(out)
    assert "/proc" not in client.excludes_for("/mnt/other", [], [], [])


def boot_tree(root: Path, kvers: tuple[str, ...] = ("6.1.0-9-amd64",), *, initrd: bool = True,
              grub: str | None = None) -> Path:
    (root / "boot/grub").mkdir(parents=True, exist_ok=True)
    for k in kvers:
        (root / f"boot/vmlinuz-{k}").write_bytes(b"kernel")
        if initrd:
            (root / f"boot/initrd.img-{k}").write_bytes(b"initrd")
    text = grub if grub is not None else "".join(
        f"linux /boot/vmlinuz-{k}\ninitrd /boot/initrd.img-{k}\n" for k in kvers)
    (root / "boot/grub/grub.cfg").write_text(text)
    return root


def test_health_of_a_good_system(tmp_path):
    root = boot_tree(tmp_path)
    assert client.health_problems(str(root), [], None) == []
    assert set(client.kernels(str(root))) == {"6.1.0-9-amd64"}
    assert client.boot_state(str(root)) == ["boot/grub/grub.cfg",
                                            "boot/initrd.img-6.1.0-9-amd64"]


def test_health_problems(tmp_path):
    root = boot_tree(tmp_path / "a", ("6.1.0-9-amd64", "6.1.0-10-amd64"),
                     grub="linux /boot/vmlinuz-6.1.0-9-amd64\ninitrd /boot/initrd.img-x\n")
    (root / "boot/initrd.img-6.1.0-10-amd64").unlink()
    problems = client.health_problems(str(root), [], None)
    assert "kernel 6.1.0-10-amd64 has no initrd" in problems
    assert "the boot loader configuration does not name kernel 6.1.0-10-amd64" in problems
    assert ("the boot loader configuration does not name initrd.img-6.1.0-9-amd64"
            in problems)
    bare = boot_tree(tmp_path / "b")
    (bare / "boot/grub/grub.cfg").unlink()
    assert client.health_problems(str(bare), [], None)[0].startswith(
        "no boot loader configuration")


def test_health_commands_come_from_the_file_then_the_options(tmp_path):
    (tmp_path / "etc/sysclone").mkdir(parents=True)
    (tmp_path / "etc/sysclone/updateclient.health").write_text(
        "# what must work\nsystemctl is-active sshd\n\n")
    assert client.health_commands(str(tmp_path), ["false"]) == [
        "systemctl is-active sshd", "false"]


def test_remove_paths_deepest_first_and_keeps_what_is_not_empty(tmp_path):
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/b/f").write_text("x")
    (tmp_path / "keep/excluded").mkdir(parents=True)
    (tmp_path / "keep/excluded/log").write_text("x")
    kept = client.remove_paths(str(tmp_path), ["a", "a/b", "a/b/f", "keep", "gone", "."])
    assert not (tmp_path / "a").exists() and kept == ["keep"]


def test_rollback_point_record(tmp_path):
    with pytest.raises(client.UpdateError, match="no rollback point"):
        client.RollbackPoint.load(str(tmp_path))
    p = client.RollbackPoint(str(tmp_path), saved=["etc/motd"], created=["usr/bin/htop"],
                             kernel_changed=True, image="web@2", time=1.0)
    p.save()
    q = client.RollbackPoint.load(str(tmp_path))
    assert q == p and q.source == str(tmp_path / "tree")


def test_installer_parameters_from_the_live_network():
    server = client.Server("10.0.2.2", 18181)
    dhcp = {"interface": "enp0s2", "mac": "52:54:00:AB:00:01", "method": "dhcp",
            "address": "10.0.2.15/24", "gateway": "10.0.2.2", "dns": ["10.0.2.3"]}
    words = client.cmdline_params(server, "web", "node1", dhcp, ["si.disk=/dev/vda"],
                                  ["console=ttyS0,115200"])
    assert words == ["console=ttyS0,115200", "IMAGESERVER=10.0.2.2", "si.server-port=18181",
                     "IMAGENAME=web", "si.post-action=reboot", "HOSTNAME=node1",
                     "BOOTIF=01-52-54-00-ab-00-01", "si.disk=/dev/vda"]
    static = {**dhcp, "method": "static", "domain": "lab.example"}
    words = client.cmdline_params(server, "web", None, static, [], [])
    assert words[-5:] == ["si.ip-address=10.0.2.15", "si.netmask=24", "si.gateway=10.0.2.2",
                          "si.dns-servers=10.0.2.3", "si.domainname=lab.example"]
    # The agent reads them as they are written.
    from agent.params import parse_cmdline, resolve

    params = resolve([parse_cmdline(" ".join(words))]).params
    assert str(params.ip_address) == "10.0.2.15" and params.netmask == 24


def test_live_network_from_iproute2(monkeypatch):
    answers = {
        "route": [{"dst": "default", "gateway": "10.0.2.2", "dev": "enp0s2"}],
        "addr": [{"ifname": "enp0s2", "address": "52:54:00:12:34:56", "addr_info": [
            {"family": "inet", "local": "10.0.2.15", "prefixlen": 24, "dynamic": True,
             "valid_life_time": 86000}]}]}

    def run(argv, **kw):
        return subprocess.CompletedProcess(argv, 0, json.dumps(answers[argv[3]]), "")

    monkeypatch.setattr(client, "run", run)
    net = client.live_network()
    assert net["interface"] == "enp0s2" and net["method"] == "dhcp"
    assert net["address"] == "10.0.2.15/24" and net["mac"] == "52:54:00:12:34:56"
    answers["addr"][0]["addr_info"][0].update(dynamic=False, valid_life_time=4294967295)
    assert client.live_network()["method"] == "static"
    answers["route"] = []
    with pytest.raises(client.UpdateError, match="no default route"):
        client.live_network()


def args(*argv: str) -> argparse.Namespace:
    return client.build_parser().parse_args(list(argv))


@pytest.mark.parametrize(("argv", "problem"), [
    (["--port", "0"], "--port must be 1-65535"),
    (["--server=-x"], "is not a host"),
    (["--image", "web/../x"], "is not NAME or NAME@N"),
    (["--image", "web@0"], "is not NAME or NAME@N"),
    (["--rollback", "--dry-run"], "go alone"),
    (["--kexec"], "go with --autoinstall"),
    (["--autoinstall", "--append", "a b"], "one word each"),
    (["--bwlimit", "-1"], "must be positive"),
    (["--rollback", "--local-initrd"], "--local-initrd goes with an update"),
    (["--dry-run", "--local-initrd"], "--local-initrd goes with an update"),
])
def test_bad_arguments(argv, problem):
    assert problem in client.check_args(args(*argv))


def test_good_arguments():
    assert client.check_args(args("--server", "10.0.0.3", "--image", "web@2")) == ""
    assert client.main(["--kexec"]) == 2


def test_the_script_is_python_3_9():
    """No syntax newer than 3.9 (match, except*, PEP 604 unions outside
    annotations...): compiled with the 3.9 grammar."""
    import ast

    source = client.__file__
    ast.parse(Path(source).read_text(), feature_version=(3, 9))


INPUTS = ["etc/fstab", "etc/crypttab", "etc/mdadm/", "etc/initramfs-tools/", "etc/modprobe.d/"]


@pytest.mark.parametrize(("pattern", "rel", "covers"), [
    ("/etc/fstab", "etc/fstab", True),
    ("/etc/fstab", "etc/fstab.d/x", False),
    ("/etc/initramfs-tools/conf.d/**", "etc/initramfs-tools/conf.d/resume", True),
    ("/etc/initramfs-tools/", "etc/initramfs-tools/modules", True),  # a parent
    ("/etc/modprobe.d/*.conf", "etc/modprobe.d/blacklist.conf", True),
    ("/etc/modprobe.d/*.conf", "etc/modprobe.d/x.local", False),
    ("/var/log/**", "etc/fstab", False),
    ("*.conf", "etc/modprobe.d/a.conf", True),  # a bare name matches at any depth
    ("modprobe.d", "etc/modprobe.d/a.conf", True),
    ("etc/mdadm/mdadm.conf", "etc/mdadm/mdadm.conf", True),
    ("/etc/we\\*rd", "etc/we*rd", True),  # an escaped, literal *
    ("/etc/we\\*rd", "etc/wexrd", False),
])
def test_what_an_exclude_pattern_covers(pattern, rel, covers):
    assert client._pattern_matches(pattern, rel) is covers


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_initrd_files_a_machine_keeps_are_sent(tmp_path):
    root = _tree(tmp_path, {"etc/fstab": "UUID=a / ext4\n", "etc/mdadm/mdadm.conf": "ARRAY\n",
                            "etc/initramfs-tools/initramfs.conf": "MODULES=most\n",
                            "etc/initramfs-tools/conf.d/resume": "RESUME=UUID=b\n",
                            "etc/motd": "hello\n"})
    excludes = ["/etc/fstab", "/etc/mdadm/mdadm.conf", "/etc/initramfs-tools/conf.d/resume",
                "/var/log/**"]
    assert client.initrd_files(str(root), INPUTS, excludes) == {
        "etc/fstab": "UUID=a / ext4\n", "etc/mdadm/mdadm.conf": "ARRAY\n",
        "etc/initramfs-tools/conf.d/resume": "RESUME=UUID=b\n"}
    # Synced files are the image's: nothing to send.
    assert client.initrd_files(str(root), INPUTS, ["/var/log/**"]) == {}
    # An older server names no inputs: built here.
    assert client.initrd_files(str(root), [], excludes) is None


@pytest.mark.parametrize("trouble", ["binary", "big", "symlink", "many"])
def test_initrd_files_that_cannot_be_sent_mean_building_here(tmp_path, trouble):
    root = _tree(tmp_path, {"etc/fstab": "x\n"})
    d = root / "etc/modprobe.d"
    d.mkdir(parents=True)
    if trouble == "binary":
        (d / "a.conf").write_bytes(b"\xff\xfe")
    elif trouble == "big":
        (d / "a.conf").write_text("x" * (client.MAX_INITRD_FILE_BYTES + 1))
    elif trouble == "symlink":
        (d / "a.conf").symlink_to("/etc/fstab")
    else:
        for i in range(client.MAX_INITRD_FILES + 1):
            (d / f"{i}.conf").write_text("options x\n")
    assert client.initrd_files(str(root), INPUTS, ["/etc/modprobe.d/**"]) is None


def _tar(members: list[tuple[str, bytes | None]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            else:
                info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def test_a_server_built_initrd_is_unpacked(tmp_path):
    data = _tar([("boot/initrd.img-6.1.0-9-amd64", b"initrd"),
                 ("var/lib/initramfs-tools/6.1.0-9-amd64", b"sha1\n")])
    written = client.unpack_initrd(data, str(tmp_path), "6.1.0-9-amd64")
    assert written == ["boot/initrd.img-6.1.0-9-amd64", "var/lib/initramfs-tools/6.1.0-9-amd64"]
    initrd = tmp_path / "boot/initrd.img-6.1.0-9-amd64"
    assert initrd.read_bytes() == b"initrd" and initrd.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "boot").iterdir()] == [initrd.name]  # no temp left


@pytest.mark.parametrize("members", [
    [("boot/initrd.img-6.1.0-9-amd64", b"x"), ("etc/shadow", b"x")],
    [("boot/initrd.img-6.1.0-9-amd64", b"x"), ("boot/../etc/6.1.0-9-amd64", b"x")],
    [("boot/initrd.img-6.1.0-9-amd64", None)],
    [("boot/initrd.img-5.10.0-1-amd64", b"x")],
    [("var/lib/initramfs-tools/6.1.0-9-amd64", b"x")],
])
def test_a_server_built_initrd_with_unexpected_entries_is_refused(tmp_path, members):
    with pytest.raises(client.UpdateError, match=r"unexpected entry|sent no initrd"):
        client.unpack_initrd(_tar(members), str(tmp_path), "6.1.0-9-amd64")
    assert not (tmp_path / "etc").exists()


def test_the_running_script_keeps_itself(tmp_path, monkeypatch):
    """Run from a file inside the system being updated, the script excludes
    its own copy (a later --rollback runs it); imported or piped, nothing."""
    (tmp_path / "root").mkdir()
    script = tmp_path / "root/update*client.py"
    script.write_text("")
    assert client.own_script(str(tmp_path)) is None
    monkeypatch.setattr(client, "SCRIPT_FILE", str(script))
    assert client.own_script(str(tmp_path)) == "/root/update*client.py"
    assert client.own_script(str(tmp_path / "root/elsewhere")) is None
    assert "/root/update\\*client.py" in client.excludes_for(str(tmp_path), [], [], [])


def test_a_refused_rollback_writes_nothing(tmp_path):
    """No rollback point: refused before the lock, so the machine gets no
    state directory from it."""
    import argparse

    a = argparse.Namespace(system_root=str(tmp_path), no_health_check=True, server=None,
                           no_report=True, hostname=None)
    with pytest.raises(client.UpdateError, match="no rollback point"):
        client.rollback(a)
    assert list(tmp_path.iterdir()) == []
