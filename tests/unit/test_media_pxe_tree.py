"""mkmedia.pxe's tree and imageserver.netboot's switch: per-client entries
for every loader, rewritten one client at a time; a finished install
switches a client to its disk, `clients reinstall` back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageserver import netboot
from imageserver.netboot import NetbootSwitch, register_tree
from mkmedia.pxe import ClientEntry, TreeInfo, build_tree, ipxe_unmatched, read_info, set_client
from sysclone.cli import main
from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot
from tests.unit.mediafakes import fake_bootfiles

MAC = "52:54:00:12:34:56"
KEY = "01-52-54-00-12-34-56"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fake_bootfiles(tmp_path / "host", monkeypatch)


@pytest.fixture
def bootenv(tmp_path: Path) -> Path:
    be = tmp_path / "bootenv"
    be.mkdir()
    (be / "kernel").write_bytes(b"bzImage")
    (be / "initrd.img").write_bytes(b"initrd")
    return be


def tree(out: Path, bootenv: Path, clients: list[ClientEntry] = (), **kw) -> Path:
    info = TreeInfo("IMAGESERVER=10.0.0.3 IMAGENAME=web", **kw)
    return build_tree(out, bootenv / "kernel", bootenv / "initrd.img", info, clients)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_the_tree_holds_every_loader(tmp_path, host, bootenv):
    out = tree(tmp_path / "tftp", bootenv)
    assert files(out) == {
        "pxelinux.0", "ldlinux.c32", "bootx64.efi", "grubx64.efi", "mmx64.efi", "ipxe.efi",
        "undionly.kpxe", "kernel", "initrd.img", "pxelinux.cfg/default", "grub/grub.cfg",
        "boot.ipxe", "ipxe/default.ipxe", "sysclone-pxe.json"}
    # shim as the file the firmware gets, GRUB's netboot image as grubx64.efi
    assert (out / "bootx64.efi").read_bytes() == b"shimx64.efi.signed"
    assert (out / "grubx64.efi").read_bytes() == b"grubnetx64.efi.signed"
    assert "chain --autofree ipxe/01-${netX/mac:hexhyp}.ipxe" in (out / "boot.ipxe").read_text()
    info = read_info(out)
    assert info == TreeInfo("IMAGESERVER=10.0.0.3 IMAGENAME=web")


def test_client_entries_by_mac_and_by_ip(tmp_path, host, bootenv):
    out = tree(tmp_path / "tftp", bootenv, [
        ClientEntry(KEY, append="IMAGENAME=db HOSTNAME=db1"),
        ClientEntry("C0A80A", mode="local")])
    assert "APPEND initrd=initrd.img IMAGENAME=db HOSTNAME=db1" in (
        out / f"pxelinux.cfg/{KEY}").read_text()
    grub = (out / f"grub/grub.cfg-{KEY}").read_text()
    assert "linux /kernel IMAGENAME=db HOSTNAME=db1 BOOTIF=01-52-54-00-12-34-56" in grub
    assert "LOCALBOOT 0" in (out / "pxelinux.cfg/C0A80A").read_text()
    assert "    exit" in (out / "grub/grub.cfg-C0A80A").read_text()
    # iPXE finds clients by MAC or whole address only: no file for a subnet.
    assert (out / f"ipxe/{KEY}.ipxe").is_file()
    assert not list((out / "ipxe").glob("c0a80a*"))


def test_a_rebuild_keeps_switched_clients_and_drops_removed_ones(tmp_path, host, bootenv):
    out = tree(tmp_path / "tftp", bootenv, [ClientEntry("0A000005", append="HOSTNAME=x")])
    set_client(out, ClientEntry(KEY, "local", auto=True), KEY)
    tree(out, bootenv)  # no clients given this time
    info = read_info(out)
    assert list(info.clients) == [KEY]  # the switched one stays on its disk
    assert not (out / "pxelinux.cfg/0A000005").exists()
    assert not (out / "grub/grub.cfg-0A000005").exists()
    assert not (out / "ipxe/0a000005.ipxe").exists()
    assert "LOCALBOOT 0" in (out / f"pxelinux.cfg/{KEY}").read_text()


def test_a_rebuild_with_fewer_loaders_removes_their_files_only(tmp_path, host, bootenv):
    """A TFTP server hands out whatever is in the tree: a dropped loader's
    menus would boot clients with the old parameters.  Files the admin put
    there stay."""
    out = tree(tmp_path / "tftp", bootenv, [ClientEntry("0A000005", append="HOSTNAME=x")])
    (out / "grub/site.cfg").write_text("admin's own")
    (out / "README.site").write_text("admin's own")
    build_tree(out, bootenv / "kernel", bootenv / "initrd.img",
               TreeInfo("IMAGENAME=new", ("pxelinux",)))
    assert files(out) == {"pxelinux.0", "ldlinux.c32", "kernel", "initrd.img",
                          "pxelinux.cfg/default", "sysclone-pxe.json", "grub/site.cfg",
                          "README.site"}
    assert not (out / "ipxe").exists()  # left empty: gone
    assert "IMAGENAME=new" in (out / "pxelinux.cfg/default").read_text()


def test_networks_iPXE_cannot_match_are_named():
    info = TreeInfo("IMAGENAME=web")
    clients = [ClientEntry(KEY), ClientEntry("0A000005"), ClientEntry("0A0000", mode="local"),
               ClientEntry("C0A8", append="HOSTNAME=x")]
    assert ipxe_unmatched(info, clients) == (
        "iPXE and UEFI HTTP boot clients in 10.0.0.0/24 (local), 192.168.0.0/16 (install) get "
        "the default entry: iPXE matches a MAC or a whole address, not a network (pxelinux "
        "and GRUB do)")
    assert ipxe_unmatched(info, clients[:2]) is None
    assert ipxe_unmatched(TreeInfo("x", ("pxelinux", "grub")), clients) is None


def test_loaders_can_be_chosen(tmp_path, host, bootenv):
    out = tree(tmp_path / "tftp", bootenv, loaders=("grub",))
    assert not (out / "pxelinux.0").exists() and not (out / "boot.ipxe").exists()
    assert (out / "grub/grub.cfg").is_file()


def test_missing_loaders_name_their_packages(tmp_path, host, bootenv):
    (host / "usr/lib/shim/shimx64.efi.signed").unlink()
    (host / "usr/lib/ipxe/ipxe.efi").unlink()
    with pytest.raises(SyscloneError, match=r"shimx64\.efi\.signed, /usr/lib/ipxe/ipxe\.efi "
                                            r"not found") as e:
        tree(tmp_path / "tftp", bootenv)
    assert e.value.hint == "apt install shim-signed ipxe"
    assert not (tmp_path / "tftp").exists()


def test_a_corrupt_description_is_one_error(tmp_path, host, bootenv):
    out = tree(tmp_path / "tftp", bootenv)
    (out / "sysclone-pxe.json").write_text('{"append": "x", "clients": {"../x": {}}}')
    with pytest.raises(SyscloneError, match="not a sysclone PXE tree description"):
        read_info(out)


# -- the switch ---------------------------------------------------------------------------------

@pytest.fixture
def state(tmp_path: Path, host: Path, bootenv: Path) -> StateRoot:
    s = StateRoot(tmp_path / "root", tmp_path / "cache")
    tree(s.pxe, bootenv)
    return s


def done(hostname: str = "node1", mac: str = MAC, timings: dict | None = None) -> dict:
    return {"kind": "done", "hostname": hostname, "mac": mac, "ip": "10.0.0.7",
            "timings": {"plan": 1.0, "finish": 2.0} if timings is None else timings}


def log_events(state: StateRoot, name: str, *events: dict) -> None:
    state.logs.mkdir(parents=True, exist_ok=True)
    with (state.logs / f"{name}.jsonl").open("a") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")


def test_a_finished_install_switches_the_client_to_its_disk(state):
    NetbootSwitch(state).on_event(done())
    info = read_info(state.pxe)
    assert info.clients[KEY] == ClientEntry(KEY, "local", None, "node1", auto=True)
    assert "LOCALBOOT 0" in (state.pxe / f"pxelinux.cfg/{KEY}").read_text()
    assert "    exit" in (state.pxe / f"grub/grub.cfg-{KEY}").read_text()
    assert "exit" in (state.pxe / f"ipxe/{KEY}.ipxe").read_text()


@pytest.mark.parametrize("ev", [
    done(timings={"plan": 1.0}),  # a dry run ends with `done` too, before any disk is written
    {**done(), "kind": "failed"},
    {**done(), "mac": None},
])
def test_only_finished_installs_switch(state, ev):
    NetbootSwitch(state).on_event(ev)
    assert read_info(state.pxe).clients == {}


def test_trees_made_without_switching_are_left_alone(tmp_path, state, bootenv):
    other = tree(tmp_path / "other", bootenv, switch=False)
    register_tree(state, other)
    registered = tree(tmp_path / "registered", bootenv)
    register_tree(state, registered)
    NetbootSwitch(state).on_event(done())
    assert read_info(other).clients == {}
    assert KEY in read_info(registered).clients
    assert netboot.managed_trees(state) == [state.pxe, registered]


def test_a_clients_own_entry_keeps_its_parameters_when_switched_and_back(state):
    set_client(state.pxe, ClientEntry(KEY, append="IMAGENAME=db"), KEY)
    NetbootSwitch(state).on_event(done())
    assert read_info(state.pxe).clients[KEY].mode == "local"
    log_events(state, "node1", done())
    assert netboot.reinstall(state, "node1") == [(state.pxe, KEY)]
    entry = read_info(state.pxe).clients[KEY]
    assert (entry.mode, entry.append) == ("install", "IMAGENAME=db")
    assert "IMAGENAME=db" in (state.pxe / f"pxelinux.cfg/{KEY}").read_text()


def test_reinstall_removes_the_switchs_entry(state, capsys):
    NetbootSwitch(state).on_event(done())
    log_events(state, "node1", {"kind": "hello", "hostname": "node1", "mac": MAC}, done())
    assert main(["--root", str(state.root), "clients", "reinstall", "node1"]) == 0
    assert read_info(state.pxe).clients == {}
    assert not (state.pxe / f"pxelinux.cfg/{KEY}").exists()
    assert f"node1: {state.pxe} entry {KEY} installs at the next network boot" in \
        capsys.readouterr().err
    # a second time: nothing to do, and said so
    assert main(["--root", str(state.root), "clients", "reinstall", "node1"]) == 0
    assert "node1 already installs at its next network boot" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["nosuch", "../etc", "a/b"])
def test_reinstall_of_an_unknown_client(state, name, capsys):
    log_events(state, "node1", done())
    assert main(["--root", str(state.root), "clients", "reinstall", name]) == 1
    assert capsys.readouterr().err == (f"sysclone: error: unknown client {name!r} (known "
                                       "clients: node1)\n")


def test_reinstall_of_a_client_without_a_mac(state):
    log_events(state, "node2", {"kind": "hello", "hostname": "node2"})
    with pytest.raises(ConfigError, match="never reported its MAC"):
        netboot.reinstall(state, "node2")


def test_the_api_server_switches(state):
    """The switch is subscribed by the API server itself: `serve` and the
    demo get it without asking."""
    from imageserver.api import ApiServer
    from imageserver.instructions import ServerPolicy
    from imageserver.monitor import Monitor

    mon = Monitor(state.logs)
    api = ApiServer(("127.0.0.1", 0), state, ServerPolicy(rsync_port=873), mon)
    try:
        mon.record(done())
    finally:
        api.server_close()
    assert read_info(state.pxe).clients[KEY].mode == "local"


def test_media_pxe_command(state, tmp_path, capsys):
    be = state.bootenvs / "standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(b"k")
    (be / "initrd.img").write_bytes(b"i")
    out = tmp_path / "lab"
    assert main(["--root", str(state.root), "media", "pxe", "--output", str(out),
                 "--append", "IMAGESERVER=10.0.0.3", "--client", MAC, "HOSTNAME=web1",
                 "--local", "10.0.0.0/24", "--loaders", "pxelinux,grub"]) == 0
    info = read_info(out)
    assert info.loaders == ("pxelinux", "grub")
    assert info.clients[KEY].append == "IMAGESERVER=10.0.0.3 HOSTNAME=web1"
    assert info.clients["0A0000"].mode == "local"
    assert out in netboot.managed_trees(state)  # registered for the switch
    assert main(["--root", str(state.root), "media", "pxe", "--output", str(out),
                 "--loaders", "pxelinux,uefi"]) == 1
    assert "--loaders: unknown loader 'uefi'" in capsys.readouterr().err


@pytest.fixture
def cli_state(state: StateRoot) -> StateRoot:
    """`state` with the standard boot environment `media pxe` takes."""
    be = state.bootenvs / "standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(b"k")
    (be / "initrd.img").write_bytes(b"i")
    return state


def test_media_pxe_warns_of_network_entries_ipxe_cannot_match(cli_state, tmp_path, capsys):
    argv = ["--root", str(cli_state.root), "pxe", "build", "--output", str(tmp_path / "lab"),
            "--client", "10.0.0.0/24", "si.disk=sda"]
    assert main(argv) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning: iPXE")]
    assert warnings == ["warning: iPXE and UEFI HTTP boot clients in 10.0.0.0/24 (install) "
                        "get the default entry: iPXE matches a MAC or a whole address, not a "
                        "network (pxelinux and GRUB do)"]
    assert main([*argv, "--loaders", "pxelinux,grub"]) == 0
    assert "warning: iPXE" not in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "says"), [
    (["--client", MAC, "HOSTNAME=a", "--local", "52:54:00:12:34:56"],
     f"--client {MAC} 'HOSTNAME=a' and --local {MAC} name the same client"),
    (["--client", MAC, "HOSTNAME=a", "--client", "52:54:00:12:34:56", "HOSTNAME=b"],
     f"--client {MAC} 'HOSTNAME=a' and --client {MAC} 'HOSTNAME=b' name the same client"),
    (["--local", "10.0.0.0/24", "--client", "0A0000", "HOSTNAME=c"],
     "--client 0A0000 'HOSTNAME=c' and --local 10.0.0.0/24 name the same client"),
])
def test_conflicting_client_entries_are_refused(cli_state, tmp_path, capsys, extra, says):
    """Which entry was meant cannot be guessed: the last one used to win,
    or --local dropped the --client string, without a word."""
    out = tmp_path / "lab"
    assert main(["--root", str(cli_state.root), "pxe", "build", "--output", str(out), *extra]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_a_client_given_the_same_entry_twice_is_one_entry(cli_state, tmp_path):
    out = tmp_path / "lab"
    assert main(["--root", str(cli_state.root), "pxe", "build", "--output", str(out),
                 "--local", MAC, "--local", KEY]) == 0
    info = read_info(out)
    assert info is not None and list(info.clients) == [KEY]
