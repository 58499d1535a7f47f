"""`sysclone bootenv check`, `kernel add` and `bootenv build`'s driver
options at the command line: exit codes, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bootenv import drivers
from bootenv.drivers import DriverRequest
from kernels.moduledb import ModuleDB, loaded_modules, parse_dep
from kernels.tree import KernelTree
from sysclone.cli import main
from tests.conftest import DATA

KVER = "6.1.0-50-cloud-amd64"
KERNELS = DATA / "kernels"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A state root with the cloud kernel (excerpt) named `golden-k` and a
    UYOK-loaded boot environment built from it in ROOT/bootenv/uyok."""
    root = tmp_path / "root"
    tree = root / "kernels" / "golden-k"
    mdir = tree / "lib/modules" / KVER
    shutil.copytree(KERNELS / KVER, mdir)
    for p in parse_dep((mdir / "modules.dep").read_text()):
        (mdir / p).parent.mkdir(parents=True, exist_ok=True)
        (mdir / p).write_bytes(b"\x7fELF")
    (tree / "vmlinuz").write_bytes(b"bzImage")
    KernelTree(tree, KVER, "amd64", origin="image", image="golden@1").write()
    db = ModuleDB.load(mdir)
    req = DriverRequest.parse("loaded", loaded=loaded_modules(
        (KERNELS / "proc-modules.golden-vm").read_text()))
    d = drivers.choose(db, mdir, None, req, ("core",))
    be = root / "bootenv" / "uyok"
    be.mkdir(parents=True)
    (be / "manifest.json").write_text(json.dumps({
        "kernel": {"version": KVER, "name": "golden-k", "path": str(tree)},
        "modules": drivers.manifest(db, d), "firmware": drivers.firmware_manifest(d)}))
    return root


def run(root: Path, *argv: str) -> int:
    return main(["--root", str(root), *argv])


def test_check_passes_and_fails_with_exit_codes(root, tmp_path, capsys):
    ok = tmp_path / "ok.txt"
    ok.write_text("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n"
                  "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n"
                  "virtio:d00000001v00001AF4\nvirtio:d00000002v00001AF4\nacpi:PNP0A03:\n")
    assert run(root, "bootenv", "check", str(root / "bootenv/uyok"), "--inventory", str(ok)) == 0
    out = capsys.readouterr().out
    assert "virtio_blk" in out and out.rstrip().splitlines()[-1].startswith("ok: ")
    scsi = tmp_path / "scsi.txt"
    scsi.write_text(ok.read_text() + "virtio:d00000008v00001AF4\n")
    assert run(root, "bootenv", "check", str(root / "bootenv/uyok"),
               "--inventory", str(scsi)) == 1
    out = capsys.readouterr().out
    assert "FAIL: storage virtio:d00000008v00001AF4: no driver: virtio_scsi would drive it" in out


DISK = {"slot": "0000:00:03.0", "vendor": "1af4", "device": "1001", "class": "010000",
        "modalias": "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        "children": ["virtio:d00000002v00001AF4"], "driver": "virtio-pci"}
NIC = {"slot": "0000:00:02.0", "vendor": "1af4", "device": "1000", "class": "020000",
       "modalias": "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
       "children": ["virtio:d00000001v00001AF4"], "driver": "virtio-pci"}


def test_check_by_client_name(root, capsys):
    log = root / "log"
    log.mkdir()
    (log / "node01.inventory.json").write_text(json.dumps({
        "pci": [DISK, NIC], "disks": [{"name": "vda", "controller": "0000:00:03.0"}],
        "nics": [{"name": "ens2", "pci": "0000:00:02.0", "mac": "52:54:00:12:34:56"}],
        "install_nic": "52:54:00:12:34:56"}))
    assert run(root, "bootenv", "check", str(root / "bootenv/uyok"), "--client", "node01") == 0
    out = capsys.readouterr().out
    assert "virtio_pci, virtio_blk" in out and "virtio_pci, virtio_net" in out
    assert run(root, "bootenv", "check", str(root / "bootenv/uyok"), "--client", "node02") == 1
    assert "no inventory from client 'node02'" in capsys.readouterr().err


def test_a_machine_without_a_nic_fails(root, tmp_path, capsys):
    """It cannot fetch the image: it used to pass ("ok: ... drives ... the
    install NIC"), with a note."""
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"pci": [DISK], "nics": [],
                               "disks": [{"name": "vda", "controller": "0000:00:03.0"}]}))
    assert run(root, "bootenv", "check", str(root / "bootenv/uyok"), "--inventory",
               str(inv)) == 1
    out = capsys.readouterr().out
    assert "FAIL: no NIC in the inventory" in out and "ok:" not in out


def test_a_kernel_that_does_not_exist_is_an_error(root, tmp_path, capsys):
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"pci": [DISK, NIC]}))
    be = str(root / "bootenv/uyok")
    assert run(root, "bootenv", "check", be, "--inventory", str(inv), "--kernel", "nosuch") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"sysclone: error: --kernel nosuch: no such kernel ({root}/kernels/nosuch) (a name "
        "`sysclone kernel list` shows, or a kernel tree directory)")
    assert run(root, "bootenv", "check", be, "--inventory", str(inv), "--kernel",
               "golden-k") == 0


@pytest.mark.parametrize("argv, message", [
    (["--inventory", "/nonexistent.json"], "--inventory /nonexistent.json: No such file"),
    ([], "give --inventory FILE or --client NAME"),
    (["--inventory", "x", "--client", "n"], "--inventory and --client exclude each other"),
])
def test_check_errors(root, capsys, argv, message):
    assert run(root, "bootenv", "check", str(root / "bootenv/uyok"), *argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_check_an_inventory_that_does_not_parse(root, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"pci": [}')
    assert run(root, "bootenv", "check", str(root / "bootenv/uyok"), "--inventory",
               str(bad)) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_check_a_directory_without_manifest(root, tmp_path, capsys):
    assert run(root, "bootenv", "check", str(tmp_path), "--inventory", "x") == 1
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["kernel", "add", "k"], "exactly one of --from-image, --from-host, --package, --flavor"),
    (["kernel", "add", "k", "--from-host", "--flavor", "amd64"], "exactly one of"),
    (["kernel", "add", "../k", "--from-host"], "kernel name '../k' is not valid"),
    (["kernel", "add", "k", "--flavor", "amd64", "--version", "6.1"],
     "--version goes with --from-image or --from-host"),
    (["kernel", "add", "k", "--from-image", "nope"], "unknown image 'nope'"),
    (["kernel", "add", "k", "--package", "/nonexistent.deb"], "no such file"),
    (["bootenv", "build", "--kernel", "golden-k", "--modules", "loaded"],
     "image golden@1 has no recorded modules"),
    (["bootenv", "build", "--kernel", "golden-k", "--modules-from", "/nonexistent"],
     "--modules-from /nonexistent: No such file"),
    (["bootenv", "build", "--kernel", "nokernel"], "no kernel named 'nokernel'"),
    (["clients", "show"], "expected `clients`, `clients show NAME`"),
])
def test_one_line_errors(root, capsys, monkeypatch, argv, message):
    monkeypatch.setattr("kernels.aptsources.find_debian_mirror",
                        lambda **kw: __import__("kernels.aptsources").aptsources.DebianMirror(
                            "http://deb.debian.org/debian", "bookworm"))
    monkeypatch.setattr("kernels.apt.debian_keyring", lambda: Path("/k.gpg"))
    assert run(root, *argv) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]


def test_modules_from_a_listing_that_does_not_parse(root, tmp_path, capsys):
    listing = tmp_path / "mods"
    listing.write_text("this is not lsmod\n")
    assert run(root, "bootenv", "build", "--kernel", "golden-k", "--modules-from",
               str(listing)) == 1
    assert "expected a /proc/modules or lsmod line" in capsys.readouterr().err
