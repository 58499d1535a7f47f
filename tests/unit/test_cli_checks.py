"""Names and paths are checked where they enter the `sysclone` command line:
a host name, image name, suite or output directory that would build a path
outside where it belongs is one line of error, and nothing is written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sysclone import demo
from sysclone.cli import main
from tests.unit.mediafakes import fake_bootfiles


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "state"


def run(root: Path, *argv: str) -> int:
    return main(["--root", str(root), "--cache", str(root / "cache"), *argv])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("sysclone: error: ")
    return lines[0].removeprefix("sysclone: error: ")


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


@pytest.fixture
def demo_started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    started: list[Any] = []
    monkeypatch.setattr(demo, "run_demo", lambda state, ui, opts: started.append(opts) or 0)
    return started


# -- demo ------------------------------------------------------------------------------------

@pytest.mark.parametrize("hostname", ["../../x", "a/b", "node_1", "-node", "x" * 64, "",
                                      "node 1", "10.0.0.1", "node1..lab"])
def test_demo_refuses_bad_host_names(hostname: str, root: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     demo_started: list[Any]) -> None:
    victim = tmp_path / "x"
    victim.write_text("precious")
    assert run(root, "demo", f"--hostname={hostname}") == 1
    assert one_line_error(capsys) == (
        f"--hostname {hostname!r} is not a valid host name (RFC 1123: letters, digits and "
        "'-', in dot-separated labels of at most 63 characters)")
    assert demo_started == []
    assert victim.read_text() == "precious"
    assert tree(tmp_path) == {"x"}  # not even the state root was made


@pytest.mark.parametrize("hostname", ["node1", "web-01.lab.example", "a" * 63])
def test_demo_accepts_good_host_names(hostname: str, root: Path,
                                      demo_started: list[Any]) -> None:
    assert run(root, "demo", "--hostname", hostname) == 0
    assert [o.hostname for o in demo_started] == [hostname]


@pytest.mark.parametrize(("argv", "message"), [
    (["--image", "../img"], "image name '../img' is not valid"),
    (["--memory", "0"], "--memory 0 must be a positive number"),
    (["--disk-size", "-4"], "--disk-size -4 must be a positive number"),
    (["--timeout", "0"], "--timeout 0 must be a positive number"),
    (["--flavor", "../cloud"], "--flavor '../cloud' is not a valid kernel flavor"),
])
def test_demo_checks_its_other_options(argv: list[str], message: str, root: Path,
                                       capsys: pytest.CaptureFixture[str],
                                       demo_started: list[Any]) -> None:
    assert run(root, "demo", *argv) == 1
    assert one_line_error(capsys).startswith(message)
    assert demo_started == []


# -- image bootstrap, kernel fetch: names that become cache paths ---------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["--suite", "../../x"], "--suite '../../x' is not a valid Debian suite"),
    (["--arch", "amd64/../x"], "--arch 'amd64/../x' is not a valid Debian architecture"),
    (["--include", "vim,emacs"], "--include 'vim,emacs' is not a valid package name"),
    (["--mirror", "ftp://ftp.debian.org/debian"], "--mirror 'ftp://ftp.debian.org/debian' is "
                                                  "not a mirror URL"),
    (["--mirror", "deb.debian.org"], "--mirror 'deb.debian.org' is not a mirror URL"),
])
def test_bootstrap_checks_names_before_anything(argv: list[str], message: str, root: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "image", "bootstrap", "deb12", *argv) == 1
    assert one_line_error(capsys).startswith(message)
    assert tree(root) == set()


@pytest.mark.parametrize(("argv", "message"), [
    (["--suite", "../x"], "--suite '../x' is not a valid Debian suite"),
    (["--flavor", "Cloud"], "--flavor 'Cloud' is not a valid kernel flavor"),
    (["--mirror", "http//x"], "--mirror 'http//x' is not a mirror URL"),
])
def test_kernel_fetch_checks_names(argv: list[str], message: str, root: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "kernel", "fetch", *argv) == 1
    assert one_line_error(capsys).startswith(message)


# -- serve -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["--default-image", "../etc"], "image name '../etc' is not valid"),
    (["--rsync-port", "0"], "--rsync-port 0 is not a port number (1-65535)"),
    (["--http-port", "70000"], "--http-port 70000 is not a port number (1-65535)"),
    (["--hosts-allow", "10.0.0.0/8\n  uid = root"], "--hosts-allow '10.0.0.0/8\\n  uid = root' "
                                                    "is not an address, network or host "
                                                    "pattern"),
])
def test_serve_checks_its_options(argv: list[str], message: str, root: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "serve", *argv) == 1
    assert one_line_error(capsys).startswith(message)
    assert not (root / "run").exists()  # nothing started


# -- pxe build -------------------------------------------------------------------------------

@pytest.fixture
def syslinux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pxelinux, shim, GRUB and iPXE, faked (`pxe build` writes them all)."""
    return fake_bootfiles(tmp_path / "host", monkeypatch)


@pytest.fixture
def bootenv(root: Path) -> Path:
    be = root / "bootenv/standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(b"k")
    (be / "initrd.img").write_bytes(b"i")
    return be


def test_pxe_build_without_a_boot_environment(root: Path, syslinux: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "pxe", "build") == 1
    assert one_line_error(capsys) == (
        f"no boot environment in {root}/bootenv/standard: kernel and initrd.img are missing "
        "(build one with 'sysclone bootenv build' (or pass --bootenv DIR))")
    assert not (root / "pxe").exists()


def test_pxe_build_with_a_half_boot_environment(root: Path, tmp_path: Path, syslinux: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    half = tmp_path / "half"
    half.mkdir()
    (half / "kernel").write_bytes(b"k")
    assert run(root, "pxe", "build", "--bootenv", str(half)) == 1
    assert one_line_error(capsys) == (f"no boot environment in --bootenv {half}: initrd.img is "
                                      "missing (build one with 'sysclone bootenv build')")


@pytest.mark.parametrize("where", ["file", "image", "bootenv"])
def test_pxe_build_output_checks(where: str, root: Path, tmp_path: Path, syslinux: Path,
                                 bootenv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = {"file": tmp_path / "afile", "image": root / "images/deb12/srv/tftp",
              "bootenv": bootenv}[where]
    if where == "file":
        target.write_text("not a directory")
    assert run(root, "pxe", "build", "--output", str(target)) == 1
    assert one_line_error(capsys) == {
        "file": f"--output {target}: exists and is not a directory",
        "image": f"--output {target}: is inside the image store {root}/images (choose a "
                 "directory outside it: clients receive the images)",
        "bootenv": f"the PXE tree {target} is the boot environment itself (write it to "
                   "another directory with --output)"}[where]
    assert not (root / "images").exists()


@pytest.mark.parametrize(("append", "message"), [
    (["si.hostnme=www1"], "si.hostnme: unknown install parameter (the APPEND line) (did you "
                          "mean si.hostname?)"),
    (["sysclone.bench=rsync"], "sysclone.bench: unknown parameter (the APPEND line)"),
    (["IMAGESERVER=10.0.0.300"], "IMAGESERVER (si.image-server): '10.0.0.300' is not a host "
                                 "name or IPv4 address"),
])
def test_pxe_build_reads_the_install_parameters_first(append: list[str], message: str,
                                                      root: Path, syslinux: Path,
                                                      bootenv: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert run(root, "pxe", "build", *append) == 1
    assert one_line_error(capsys).startswith(message)
    assert not (root / "pxe").exists()


def test_pxe_build_warns_about_deprecated_names(root: Path, syslinux: Path, bootenv: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "pxe", "build", "IMAGESERVER=10.0.0.3", "SCRIPTNAME=web") == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("warning: the APPEND line: SCRIPTNAME is a deprecated name for "
                      "si.script-name")
    assert (root / "pxe/pxelinux.cfg/default").is_file()


@pytest.mark.parametrize("argv, says", [
    (["si.ssh-user=root"], "si.ssh-user: 'root' is not supported by sysclone yet"),
    (["si.ip-address=10.0.0.5", "si.netmask=24", "si.gateway=10.1.0.1"],
     "si.gateway: '10.1.0.1' is outside 10.0.0.0/24"),
    (["--client", "52:54:00:12:34:56", "si.break=bogus"],
     "si.break: 'bogus' is not a step of the install (--client 52:54:00:12:34:56)"),
])
def test_pxe_build_refuses_what_the_agent_would(argv: list[str], says: str, root: Path,
                                                syslinux: Path, bootenv: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "pxe", "build", *argv) == 1
    assert one_line_error(capsys).startswith(says)
    assert not (root / "pxe").exists()


# -- bootenv build ---------------------------------------------------------------------------

def test_bootenv_build_output_must_be_a_directory(root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    assert run(root, "bootenv", "build", "--output", str(tmp_path / "afile")) == 1
    assert one_line_error(capsys) == f"--output {tmp_path}/afile: exists and is not a directory"


def test_bootenv_build_reads_the_local_cfg_first(root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "bootenv", "build", "--local-cfg", str(tmp_path / "nope.cfg")) == 1
    assert one_line_error(capsys) == f"--local-cfg {tmp_path}/nope.cfg: no such file"
    cfg = tmp_path / "local.cfg"
    cfg.write_text("IMAGESERVER=10.0.0.3\nsi.imagename=web\n")
    assert run(root, "bootenv", "build", "--local-cfg", str(cfg)) == 1
    assert one_line_error(capsys).startswith(
        f"si.imagename: unknown install parameter (local.cfg at {cfg}, line 2)")
    cfg.write_text("IMAGESERVER=10.0.0.3\nsi.break=fetch,nowhere\n")
    assert run(root, "bootenv", "build", "--local-cfg", str(cfg)) == 1
    assert one_line_error(capsys).startswith("si.break: 'nowhere' is not a step")


# -- a path that cannot be used at all -------------------------------------------------------

def test_an_unusable_path_is_one_line_too(root: Path, tmp_path: Path, syslinux: Path,
                                          bootenv: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "tftp"  # below a file: cannot be made
    assert run(root, "pxe", "build", "--output", str(out)) == 1
    assert one_line_error(capsys) == f"Not a directory: {out}"


def test_debug_still_shows_the_traceback(root: Path, tmp_path: Path, syslinux: Path,
                                         bootenv: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError):
        main(["--debug", "--root", str(root), "pxe", "build", "--output",
              str(tmp_path / "afile" / "tftp")])
    assert os.path.isfile(tmp_path / "afile")


def test_demo_names_an_initrd_too_big_for_the_vm(tmp_path: Path) -> None:
    from sysclone.demo import unpack_failure

    (tmp_path / "initrd.img").write_bytes(b"\0" * (31 << 20))
    console = "[ 1.85] Initramfs unpacking failed: write error\n[ 3.5] Kernel panic - not syncing"
    err = unpack_failure(console, "node-install", tmp_path, 128)
    assert err is not None
    assert str(err).startswith("node-install: the kernel could not unpack the boot "
                               "environment's 31 MiB initrd in 128 MiB of RAM (give the VM more")
    assert unpack_failure("Kernel panic - not syncing: other", "n", tmp_path, 128) is None


# -- layout plan, --root ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["--hostname", "../x"], "--hostname '../x' is not a valid host name"),
    (["--hostname", "a b"], "--hostname 'a b' is not a valid host name"),
    (["--ram", "0"], "--ram 0 must be a positive number"),
    (["--ram", "-5"], "--ram -5 must be a positive number"),
])
def test_layout_plan_checks_what_it_is_told_about_the_machine(
        argv: list[str], says: str, root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    layout = tmp_path / "l.xml"
    layout.write_text("<config/>")
    assert run(root, "layout", "plan", str(layout), "--disk", "20G", *argv) == 1
    assert one_line_error(capsys).startswith(says)


def test_a_state_root_that_is_a_file_is_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["--root", str(f), "image", "list"]) == 1
    assert one_line_error(capsys) == (f"state root {f} (--root or SYSCLONE_ROOT) exists and "
                                      "is not a directory")
