"""updateclient --autoinstall against a fake image server on loopback and
fake commands: what it downloads and checks, the one-shot GRUB entry it
writes, and the commands it runs, in order, for `grub-reboot` and for
`--kexec`.  (It reinstalls a VM for real in tests/e2e.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imageserver.updateclient import client
from tests.conftest import FakeCommands, FakeResult

KERNEL = b"MZ the boot environment's kernel"
INITRD = b"070701 the boot environment's initrd"
UUID = "0f6a2c1e-5b8d-4c2a-9d3e-2b1a7c6d5e4f"
NET = {"interface": "enp0s2", "mac": "52:54:00:12:34:56", "method": "dhcp",
       "address": "10.0.2.15/24", "gateway": "10.0.2.2", "dns": ["10.0.2.3"]}
WORDS = ["console=ttyS0,115200", "IMAGESERVER=127.0.0.1", "si.server-port={port}",
         "IMAGENAME=web", "si.post-action=reboot", "HOSTNAME=node1",
         "BOOTIF=01-52-54-00-12-34-56", "si.disk=/dev/vda"]


@dataclass
class FakeServer:
    """The image server's API as autoinstall uses it; every request kept."""

    files: dict[str, bytes] = field(default_factory=lambda: {
        "kernel": KERNEL, "initrd.img": INITRD})
    manifest: dict[str, Any] = field(default_factory=lambda: {
        "kernel": {"version": "6.1.0-9-amd64", "sha256": hashlib.sha256(KERNEL).hexdigest()},
        "initrd": {"sha256": hashlib.sha256(INITRD).hexdigest(), "size": len(INITRD)}})
    images: tuple[str, ...] = ("web",)
    requests: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            fake.requests.append(f"GET {self.path}")
            path, _, query = self.path.partition("?")
            if path == "/v1/update":
                image = dict(q.split("=", 1) for q in query.split("&"))["image"]
                if image.split("@")[0] not in fake.images:
                    return self.answer(404, json.dumps(
                        {"error": "not-found", "message": f"no image {image!r}",
                         "hint": "sysclone image list"}).encode())
                return self.answer(200, json.dumps(
                    {"version": 1, "hostname": "node1", "image": {
                        "name": image, "version": 2, "module": f"{image}@2",
                        "rsync_port": 873}, "overrides": [], "written": []}).encode())
            if path == "/v1/bootenv/manifest.json":
                return self.answer(200, json.dumps(fake.manifest).encode())
            name = path.removeprefix("/v1/bootenv/")
            if name in fake.files:
                return self.answer(200, fake.files[name])
            self.answer(404, b"{}")

        def do_POST(self) -> None:
            fake.requests.append(f"POST {self.path}")
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fake.events.append(json.loads(body))
            self.answer(200, b"{}")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = httpd.server_address[1]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           fake_commands: FakeCommands) -> Path:
    """An installed system's root (GRUB's, with a separate /boot), and the
    script's commands going to the argv fakes through its own run()."""
    root = tmp_path / "sysroot"
    (root / "etc/grub.d").mkdir(parents=True)
    (root / "boot").mkdir()
    monkeypatch.setattr(client.os, "geteuid", lambda: 0)
    monkeypatch.setattr(client, "_console_words", lambda: ["console=ttyS0,115200"])
    monkeypatch.setattr(client, "_systemd_runs", lambda: True)

    def run(argv: list[str], *, input: str | None = None, **kw: Any
            ) -> subprocess.CompletedProcess:
        out, err = (proc := fake_commands.popen(argv)).communicate(input)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    monkeypatch.setattr(client.subprocess, "run", run)
    return root


def autoinstall(server: FakeServer, root: Path, *more: str) -> dict[str, Any]:
    a = client.build_parser().parse_args(
        ["--autoinstall", "--server", "127.0.0.1", "--port", str(server.port), "--image", "web",
         "--hostname", "node1", "--root", str(root), "--append", "si.disk=/dev/vda", *more])
    assert client.check_args(a) == ""
    return client.autoinstall(a, NET)


def words(server: FakeServer) -> list[str]:
    return [w.format(port=server.port) for w in WORDS]


def grub_tools(fake: FakeCommands, root: Path, seen: dict[str, Any]) -> None:
    chroot = ["chroot", str(root)]
    for tool in ("mount", "umount"):
        fake.add([tool])
    fake.add([*chroot, "grub-mkrelpath", "/boot/sysclone/kernel"], "/sysclone/kernel\n")
    fake.add([*chroot, "grub-mkrelpath", "/boot/sysclone/initrd.img"], "/sysclone/initrd.img\n")
    fake.add([*chroot, "grub-probe", "--target=fs_uuid"], UUID + "\n")

    def update_grub(argv: list[str]) -> FakeResult:
        script = root / client.GRUB_SCRIPT
        seen["script"] = script.read_text()
        seen["mode"] = script.stat().st_mode & 0o777
        return FakeResult()

    fake.add([*chroot, "update-grub"], update_grub)
    fake.add([*chroot, "grub-reboot"])
    fake.add(["systemctl", "reboot"])


def test_grub_reboot(server, system, fake_commands: FakeCommands):
    seen: dict[str, Any] = {}
    grub_tools(fake_commands, system, seen)
    result = autoinstall(server, system)
    assert result == {"image": "web", "cmdline": words(server), "method": "grub"}

    # Downloaded, checked, kept with the parameters it boots with.
    boot = system / "boot/sysclone"
    assert (boot / "kernel").read_bytes() == KERNEL
    assert (boot / "initrd.img").read_bytes() == INITRD
    assert (boot / "cmdline").read_text() == " ".join(words(server)) + "\n"
    assert sorted(p.name for p in boot.iterdir()) == ["cmdline", "initrd.img", "kernel"]
    assert server.requests[:4] == [
        "GET /v1/update?hostname=node1&image=web", "GET /v1/bootenv/manifest.json",
        "GET /v1/bootenv/kernel", "GET /v1/bootenv/initrd.img"]

    # A grub.d script that prints one entry, by id, with the paths as GRUB
    # sees them on the /boot filesystem; gone once update-grub has run.
    assert seen["mode"] == 0o755
    head, entry = seen["script"].split("exec tail -n +4 \"$0\"\n")
    assert head.startswith("#!/bin/sh\n") and len(head.splitlines()) == 2
    assert entry == (
        f"menuentry 'sysclone autoinstall' --id {client.ENTRY_ID} {{\n"
        f"    search --no-floppy --fs-uuid --set=root {UUID}\n"
        f"    linux /sysclone/kernel {' '.join(words(server))}\n"
        "    initrd /sysclone/initrd.img\n"
        "}\n")
    assert not (system / client.GRUB_SCRIPT).exists()

    # In order: the system's own tools with /proc, /sys, /dev, the one-shot
    # entry, the report to the monitor, then the reboot.
    chroot = ["chroot", str(system)]
    assert fake_commands.calls == [
        ["mount", "-t", "proc", "proc", f"{system}/proc"],
        ["mount", "-t", "sysfs", "sysfs", f"{system}/sys"],
        ["mount", "--bind", "/dev", f"{system}/dev"],
        [*chroot, "grub-mkrelpath", "/boot/sysclone/kernel"],
        [*chroot, "grub-mkrelpath", "/boot/sysclone/initrd.img"],
        [*chroot, "grub-probe", "--target=fs_uuid", "/boot/sysclone/kernel"],
        [*chroot, "update-grub"],
        [*chroot, "grub-reboot", client.ENTRY_ID],
        ["umount", "-l", f"{system}/dev"],
        ["umount", "-l", f"{system}/sys"],
        ["umount", "-l", f"{system}/proc"],
        ["systemctl", "reboot"],
    ]
    assert server.requests[4:] == ["POST /v1/events"]
    assert server.events[0]["message"] == "rebooting into a reinstall with image web"


def test_grub_reboot_without_rebooting_or_reporting(server, system, fake_commands):
    grub_tools(fake_commands, system, {})
    autoinstall(server, system, "--no-reboot", "--no-report")
    assert fake_commands.calls[-4][-2:] == ["grub-reboot", client.ENTRY_ID]
    assert not any(c[0] in ("systemctl", "reboot") for c in fake_commands.calls)
    assert not any(r.startswith("POST") for r in server.requests)


def test_a_failed_update_grub_leaves_no_script(server, system, fake_commands):
    grub_tools(fake_commands, system, {})
    fake_commands.add(["chroot", str(system), "update-grub"],
                      FakeResult(stderr="grub-probe: error: cannot find a device", returncode=1))
    with pytest.raises(client.UpdateError, match=r"update-grub failed .*cannot find a device"):
        autoinstall(server, system)
    assert not (system / client.GRUB_SCRIPT).exists()
    assert not any("grub-reboot" in c for c in fake_commands.calls)
    assert fake_commands.calls[-1][:2] == ["umount", "-l"]  # unmounted all the same


def kexec_load(server: FakeServer, root: Path, *flags: str) -> list[str]:
    boot = root / "boot/sysclone"
    return ["kexec", *flags, "-l", f"{boot}/kernel", f"--initrd={boot}/initrd.img",
            "--command-line=" + " ".join(words(server))]


def test_kexec(server, system, fake_commands: FakeCommands):
    fake_commands.add(["kexec"])
    fake_commands.add(["systemctl", "kexec"])
    result = autoinstall(server, system, "--kexec")
    assert result["method"] == "kexec"
    assert (system / "boot/sysclone/kernel").read_bytes() == KERNEL
    # The files the script just checked and wrote; no GRUB at all.
    assert fake_commands.calls == [kexec_load(server, system, "-s"), ["systemctl", "kexec"]]
    assert not (system / client.GRUB_SCRIPT).exists()
    assert server.requests[-1] == "POST /v1/events"


def test_kexec_without_kexec_file_load_nor_systemd(server, system, fake_commands, monkeypatch):
    monkeypatch.setattr(client, "_systemd_runs", lambda: False)
    fake_commands.add(["kexec"])
    fake_commands.add(["kexec", "-s"], FakeResult(stderr="kexec_file_load failed: "
                                                         "Function not implemented",
                                                  returncode=255))
    autoinstall(server, system, "--kexec")
    assert fake_commands.calls == [kexec_load(server, system, "-s"), kexec_load(server, system),
                                   ["kexec", "-e"]]


def test_a_file_that_does_not_match_the_manifest_is_not_kept(server, system, fake_commands):
    server.files["initrd.img"] = b"something else"
    with pytest.raises(client.UpdateError, match=r"initrd\.img does not match its manifest"):
        autoinstall(server, system)
    assert not (system / "boot/sysclone/initrd.img").exists()
    assert not list((system / "boot/sysclone").glob("*.tmp"))
    assert fake_commands.calls == []


def test_a_manifest_without_checksums_is_refused(server, system, fake_commands):
    del server.manifest["kernel"]["sha256"]
    with pytest.raises(client.UpdateError, match="gives no sha256 for kernel"):
        autoinstall(server, system, "--kexec")
    assert "GET /v1/bootenv/kernel" not in server.requests
    assert fake_commands.calls == []


def test_an_unknown_image_stops_before_anything(server, system, fake_commands):
    server.images = ()
    with pytest.raises(client.UpdateError, match="no image 'web'"):
        autoinstall(server, system)
    assert server.requests == ["GET /v1/update?hostname=node1&image=web"]
    assert not (system / "boot/sysclone").exists()
    assert fake_commands.calls == []


def test_a_system_without_grub_needs_kexec(server, system, fake_commands):
    (system / "etc/grub.d").rmdir()
    with pytest.raises(client.UpdateError, match="does not boot with GRUB") as e:
        autoinstall(server, system)
    assert e.value.hint == "use --kexec"
    assert server.requests == [] and fake_commands.calls == []


def test_an_unreachable_server(system, fake_commands):
    dead = FakeServer(port=1)
    with pytest.raises(client.UpdateError, match="unreachable"):
        autoinstall(dead, system)
    assert not (system / "boot/sysclone").exists()


@pytest.mark.parametrize("change, says", [
    ({"hostname": "node_1"}, "this machine's host name 'node_1' is not one the installer takes"),
    ({"net": {"method": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
              "domain": "lab_x.example", "dns": ["10.0.2.3"]}},
     "search domain 'lab_x.example' is not one the installer takes"),
    ({"net": {"method": "static", "address": "10.0.2.15/32", "gateway": "10.0.2.2",
              "dns": ["10.0.2.3"]}},
     "default route via 10.0.2.2 is not inside its network 10.0.2.15/32"),
])
def test_what_the_installer_would_refuse_stops_before_anything(server, system, fake_commands,
                                                               change, says):
    """Refused at the installer's start, these would leave the machine at a
    shell after its reboot: they are found here, before a file is written."""
    a = client.build_parser().parse_args(
        ["--autoinstall", "--server", "127.0.0.1", "--port", str(server.port), "--image", "web",
         "--hostname", change.get("hostname", "node1"), "--root", str(system)])
    with pytest.raises(client.UpdateError, match=None) as e:
        client.autoinstall(a, {**NET, **change.get("net", {})})
    assert says in str(e.value)
    assert not (system / "boot/sysclone").exists() and fake_commands.calls == []


def test_a_server_by_name_needs_an_ipv4_dns_server_when_static():
    static = {"method": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
              "dns": ["fd00::53"]}
    with pytest.raises(client.UpdateError, match=r"the image server 'imgsrv\.lab' is a name, "
                                                 r"and this machine has no IPv4 DNS server"):
        client.check_install_words(client.Server("imgsrv.lab", 8181), "node1", static)
    client.check_install_words(client.Server("imgsrv.lab", 8181), "node1",
                               {**static, "dns": ["10.0.2.3"]})
    client.check_install_words(client.Server("imgsrv.lab", 8181), "node1",
                               {**static, "method": "dhcp"})


@pytest.mark.parametrize("name", ["node1", "node-1.lab.example", "lab.example.", "1234",
                                  "10.0.0", "node_1", "-node", "a..b", "", "x" * 64])
def test_the_host_name_rule_is_the_installers(name):
    from agent.params.kinds import is_hostname

    assert client._host_name_ok(name) is is_hostname(name)


def test_static_words_keep_only_ipv4_dns_servers():
    server = client.Server("10.0.2.2", 18181)
    net = {"method": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
           "dns": ["fd00::53", "10.0.2.3"]}
    assert "si.dns-servers=10.0.2.3" in client.cmdline_params(server, "web", None, net, [], [])


def test_sysclone_updateclient_checks_the_words_with_the_installers_parser(server, system):
    """`sysclone updateclient --autoinstall` passes the words through the
    agent's own parser too (sysclone.mediacli.check_install_params)."""
    from sysclone.errors import ConfigError
    from sysclone.mediacli import check_install_params

    a = client.build_parser().parse_args(
        ["--autoinstall", "--server", "127.0.0.1", "--port", str(server.port), "--image", "web",
         "--hostname", "node1", "--root", str(system), "--append", "si.break=nowhere"])
    with pytest.raises(ConfigError, match=r"si\.break: 'nowhere' is not a step"):
        client.dispatch(a, NET, check_install_params)
    assert not (system / "boot/sysclone").exists()
