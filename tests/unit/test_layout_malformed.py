"""Malformed and impossible layouts (tests/unit/data/layouts/bad, both
forms; each file says in its first comment what is wrong and the words the
refusal must contain) are refused three ways, each naming the problem:

- by `sysclone layout check`, with the file and line;
- by the agent's plan (agent.planner.make_plan), on disks they would fit;
- by the agent's whole flow, before any disk byte changes: the machine's
  disks are image files (libparted writes to a file as to a disk), hashed
  before and after, and the install stops in its plan phase.

Then layouts that only the machine makes impossible (selectors matching no
disk or several, volumes too big for their group, the other firmware, a
kept filesystem that is not the one recorded): the plan refuses those."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from agent import disks as disklib
from agent import flow
from agent.disks import Disk, NoProbe, Signature
from agent.planner import make_plan
from agent.report import FAILED_MARKER
from sysclone.cli import main
from sysclone.errors import ConfigError
from tests.unit.test_flow import Machine, dhcp, machine  # noqa: F401  (fixtures)

GiB = 1 << 30
MiB = 1 << 20
BAD_DIR = Path(__file__).resolve().parent / "data" / "layouts" / "bad"
BAD = sorted(p for p in BAD_DIR.iterdir() if p.suffix in (".xml", ".toml"))


def expected(path: Path) -> str:
    m = re.search(r"expect: (.*?)\s*(-->)?$", path.read_text(), re.M)
    assert m, f"{path.name} says nothing about what is wrong"
    return m.group(1)


def instructions(path: Path) -> dict[str, Any]:
    fmt = "toml" if path.suffix == ".toml" else "systemimager-xml"
    return {"image": {"name": "deb12", "usage": {"/": GiB}},
            "layout": {"name": path.name, "format": fmt, "text": path.read_text()}}


def firmware_of(path: Path) -> str:
    """The firmware each layout is for, so that no refusal is about that."""
    return "uefi" if re.search(r'install_type\s*=\s*"efi"', path.read_text()) else "bios"


def test_there_are_at_least_forty_in_both_forms() -> None:
    assert len(BAD) >= 40
    assert len([p for p in BAD if p.suffix == ".toml"]) >= 15
    assert len([p for p in BAD if p.suffix == ".xml"]) >= 15
    assert len({expected(p) for p in BAD}) >= 40  # forty different problems


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_layout_check_names_the_problem(path: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--root", str(tmp_path), "layout", "check", str(path)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert expected(path) in out, out
    # file:line where the reader knows the line (all but the empty-root case)
    assert re.search(rf"{re.escape(str(path))}:\d+: ", out), out
    assert err.strip().splitlines()[-1] == \
        "sysclone: error: 1 of 1 layout(s) have problems (listed above)"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_the_agents_plan_refuses_it(path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        make_plan(instructions=instructions(path), server="10.0.0.2", hostname="node1",
                  targets=[Disk("vda", 20 * GiB), Disk("vdb", 20 * GiB),
                           Disk("vdc", 20 * GiB)],
                  fw=firmware_of(path), ram_bytes=GiB, have_tool=lambda t: True,
                  probe=NoProbe())
    assert expected(path) in str(e.value)


class FileDisk(Disk):
    """A disk whose device is a file."""

    @property
    def path(self) -> str:
        return self.name


def _sha256(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


@pytest.fixture
def file_disks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Three 4 MiB disks with content (so that any write shows), as the
    machine's disks."""
    files = []
    for i in range(3):
        f = tmp_path / f"disk{i}.img"
        with f.open("wb") as out:
            for _ in range(4):
                out.write(hashlib.sha256(f"{i}".encode()).digest() * (MiB // 32))
        files.append(f)
    monkeypatch.setattr(disklib, "list_disks",
                        lambda: [FileDisk(str(f), f.stat().st_size) for f in files])
    return files


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_the_agent_writes_no_byte(path: Path, machine: Machine, dhcp: Any,  # noqa: F811
                                  file_disks: list[Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    before = _sha256(file_disks)
    machine.answers.update(instructions(path))
    monkeypatch.setattr(flow, "firmware", lambda: firmware_of(path))
    # Were the plan wrong, partitioning would go ahead and write the files.
    machine.commands.add(["wipefs"], "")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 HOSTNAME=node1")
    assert rc == 1
    assert rep.lines[-1].startswith(f"{FAILED_MARKER}: [plan] "), rep.lines[-1]
    assert expected(path) in rep.lines[-1]
    assert "partition" not in rep.phases()
    assert not [c for c in machine.ran() if c[0] in ("wipefs", "mdadm", "lvm", "cryptsetup")]
    assert _sha256(file_disks) == before


# -- impossible on this machine --------------------------------------------------------------

LAYOUTS = BAD_DIR.parent


def plan_of(name: str, disks: list[Disk], fw: str = "bios", probe: Any = None,
            image: dict[str, Any] | None = None) -> Any:
    path = LAYOUTS / name
    instr = instructions(path)
    if image is not None:
        instr["image"] = image
    return make_plan(instructions=instr, server="10.0.0.2", hostname="node1", targets=disks,
                     fw=fw, ram_bytes=GiB, have_tool=lambda t: True,
                     probe=probe or NoProbe())


class FakeProbe(NoProbe):
    def __init__(self, signatures: dict[str, Signature]) -> None:
        self.signatures = signatures

    def signature(self, device: str) -> Signature | None:
        return self.signatures.get(device)


KEPT = Signature("xfs", "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "data", 1, MiB, 10 * GiB)

IMPOSSIBLE = [
    ("selector-none", "luks-raid5-lvm.toml", [Disk(n, 20 * GiB, transport="sata")
                                              for n in ("sda", "sdb", "sdc")], "uefi", None,
     "disk /dev/sda (size=>=16GiB, bus=nvme, order=1) matches none of this machine's usable "
     "disks"),
    ("selector-too-small", "luks-raid5-lvm.toml", [Disk(n, 8 * GiB, transport="nvme")
                                                   for n in ("nvme0n1", "nvme1n1", "nvme2n1")],
     "uefi", None, "matches none of this machine's usable disks"),
    ("too-few-disks", "luks-raid5-lvm.toml", [Disk("nvme0n1", 20 * GiB, transport="nvme")],
     "uefi", None, "the layout needs 3 disk(s)"),
    ("uefi-layout-on-bios", "luks-raid5-lvm.toml",
     [Disk(n, 20 * GiB, transport="nvme") for n in ("nvme0n1", "nvme1n1", "nvme2n1")], "bios",
     None, "is for UEFI machines (install_type=\"efi\"), but this machine booted BIOS"),
    ("bios-layout-on-uefi", "raid1-lvm.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)],
     "uefi", None, "is for BIOS machines (install_type=\"legacy\"), but this machine booted "
                   "UEFI"),
    ("kept-partition-missing", "keep-data.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)],
     "bios", {}, "/dev/vdb1 does not exist on /dev/vdb"),
    ("kept-other-uuid", "keep-data.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)], "bios",
     {"/dev/vdb1": Signature("xfs", "11111111-2222-4333-8444-555555555555", "", 1, MiB,
                             GiB)},
     "keeps /dev/vdb1 with UUID 9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d, but its xfs has UUID "
     "11111111-2222-4333-8444-555555555555"),
    ("kept-other-fs", "keep-data.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)], "bios",
     {"/dev/vdb1": Signature("ext4", KEPT.uuid, "", 1, MiB, GiB)},
     "keeps xfs on /dev/vdb1 (format=\"no\"), but it holds ext4"),
    ("kept-empty", "keep-data.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)], "bios",
     {"/dev/vdb1": Signature("", "", "", 1, MiB, GiB)}, "but it holds no filesystem"),
    ("raid-disk-too-small", "raid1-lvm.toml", [Disk("vda", 400 * MiB), Disk("vdb", 8 * GiB)],
     "bios", None, "volume group sys is 0 bytes but its volumes need"),
]


@pytest.mark.parametrize(("name", "disks", "fw", "signatures", "message"),
                         [c[1:] for c in IMPOSSIBLE], ids=[c[0] for c in IMPOSSIBLE])
def test_impossible_on_this_machine(name: str, disks: list[Disk], fw: str,
                                    signatures: dict[str, Signature] | None,
                                    message: str) -> None:
    probe = FakeProbe(signatures) if signatures is not None else None
    with pytest.raises(ConfigError) as e:
        plan_of(name, disks, fw, probe)
    assert message in str(e.value)


def test_the_image_must_fit_the_volumes() -> None:
    disks = [Disk(n, 20 * GiB, transport="nvme") for n in ("nvme0n1", "nvme1n1", "nvme2n1")]
    with pytest.raises(ConfigError) as e:
        plan_of("luks-raid5-lvm.toml", disks, "uefi",
                image={"name": "big", "usage": {"/": 12 * GiB}})
    assert e.value.message.startswith("the image does not fit: / needs 12,657 MiB of image "
                                      "data but /dev/sys/root (8,192 MiB xfs) holds about ")


def test_volumes_too_big_for_their_group() -> None:
    text = (LAYOUTS / "raid1-lvm.toml").read_text().replace(
        'name = "root"\nsize = "*"', 'name = "root"\nsize = "20G"')
    instr = {"image": {"name": "deb12"},
             "layout": {"name": "big-root.toml", "format": "toml", "text": text}}
    with pytest.raises(ConfigError) as e:
        make_plan(instructions=instr, server="10.0.0.2", hostname="node1",
                  targets=[Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)], fw="bios",
                  ram_bytes=GiB, have_tool=lambda t: True, probe=NoProbe())
    assert e.value.message == ("big-root.toml: volume group sys is 8036286464 bytes (7.5 GiB) "
                               "but its volumes need 22011707392 bytes (20.5 GiB)")


def test_a_selector_matching_two_disks() -> None:
    text = (LAYOUTS / "luks-raid5-lvm.toml").read_text().replace(", order = 1 }", " }")
    instr = {"image": {"name": "deb12"},
             "layout": {"name": "two.toml", "format": "toml", "text": text}}
    disks = [Disk(n, 20 * GiB, transport="nvme") for n in ("nvme0n1", "nvme1n1", "nvme2n1")]
    with pytest.raises(ConfigError) as e:
        make_plan(instructions=instr, server="10.0.0.2", hostname="node1", targets=disks,
                  fw="uefi", ram_bytes=GiB, have_tool=lambda t: True, probe=NoProbe())
    assert e.value.message == ("two.toml: disk /dev/sda (size=>=16GiB, bus=nvme) matches 3 "
                               "disks: /dev/nvme0n1, /dev/nvme1n1, /dev/nvme2n1")
