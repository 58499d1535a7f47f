"""`sysclone layout`: check, plan and convert disk layouts on the server.

    layout check FILE...                    every problem of each layout, as the agent
                                            would refuse it (exit 1 if any)
    layout plan FILE --disk SIZE[,SIZE...]  the install plan the agent would make on
                [--firmware bios|uefi]      disks of those sizes (nothing is touched)
    layout convert FILE [--to xml|toml]     SystemImager XML <-> TOML, same layout

`plan` runs the agent's own planning code (agent.planner.make_plan) against
imagined disks: what it prints is what a client's si.dry-run prints for
the same disks, firmware and image.  sysclone.cli registers the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sysclone import checks
from sysclone.errors import ConfigError
from sysclone.imagecli import Add
from sysclone.paths import StateRoot
from sysclone.ui import Ui

if TYPE_CHECKING:
    from agent.bootenvinfo import BootenvInfo

# What `layout plan` calls the image and server when none is given.
NO_IMAGE = "IMAGE"
NO_SERVER = "IMAGESERVER"


def cmd_layout_check(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from agent.storage import layoutfile
    from agent.storage.validate import check

    bad = 0
    for name in a.files:
        try:
            layout = layoutfile.load(name)
        except ConfigError as e:  # schema: the reader stops at the first problem
            print(f"{e.message}" + (f"\n    hint: {e.hint}" if e.hint else ""))
            bad += 1
            continue
        problems = check(layout)
        for p in problems:
            print(p.message + (f"\n    hint: {p.hint}" if p.hint else ""))
        if problems:
            bad += 1
        else:
            fs = sum(1 for e in layout.fsinfo if not e.is_comment)
            print(f"{name}: ok ({len(layout.disks)} disk(s), {fs} fstab line(s))")
    if bad:
        raise ConfigError(f"{bad} of {len(a.files)} layout(s) have problems (listed above)")
    return 0


def parse_disks(text: str) -> list[Any]:
    """--disk 20G,20G, each optionally with :key=value facts for selectors
    (500G:bus=nvme:model=Samsung 980:serial=S5GX)."""
    from agent.disks import Disk
    from agent.storage.selectors import parse_bytes

    disks = []
    names = iter(f"sd{chr(ord('a') + i)}" for i in range(26))
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        size_text, *facts = item.split(":")
        try:
            size = parse_bytes(size_text)
        except ValueError as e:
            raise ConfigError(f"--disk {item}: {e}", hint="e.g. --disk 20G,20G") from None
        kw: dict[str, Any] = {}
        for fact in facts:
            key, _, value = fact.partition("=")
            field = {"bus": "transport", "model": "model", "serial": "serial", "wwn": "wwn",
                     "by_path": "by_path", "name": "name"}.get(key)
            if field is None or not value:
                raise ConfigError(f"--disk {item}: {fact!r} is not KEY=VALUE",
                                  hint="keys: name, bus, model, serial, wwn, by_path")
            kw[field] = (value,) if field == "by_path" else value
        name = kw.pop("name", None) or next(names)
        disks.append(Disk(name=name, size=size, **kw))
    if not disks:
        raise ConfigError("layout plan needs --disk SIZE[,SIZE...]")
    return disks


def _image(state: StateRoot, name: str | None) -> dict[str, Any]:
    if not name:
        return {"name": NO_IMAGE}
    from imageserver.names import ImageRef
    from imageserver.store import ImageStore

    info = ImageStore(state).info(ImageRef.parse(name))
    usage = info.usage
    return {"name": name, "bytes": usage.bytes if usage else None,
            "files": usage.files if usage else None,
            "usage": usage.by_dir if usage else {}}


def _tools(bootenv: Path | None, state: StateRoot
           ) -> tuple[set[str], str, BootenvInfo, frozenset[str] | None]:
    """The programs the boot environment carries: what the agent's plan
    checks mkfs, mdadm, lvm and cryptsetup against; what its manifest
    says of the storage stacks it cannot build; and the kernel modules it
    has (None when there is no manifest to say)."""
    import json

    from agent.bootenvinfo import BootenvInfo
    from agent.initramfs import module_name
    from bootenv import tools

    manifest = (bootenv or state.bootenvs / "standard") / "manifest.json"
    groups: tuple[str, ...] = tools.DEFAULT_TOOLS
    where = "the default tool groups"
    info = BootenvInfo()
    modules: frozenset[str] | None = None
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except ValueError as e:
            raise ConfigError(f"{manifest}: not a boot environment manifest ({e})") from None
        groups = tuple(data.get("inputs", {}).get("tool_groups") or groups)
        where = str(manifest.parent)
        info = BootenvInfo(str(data.get("flavor") or ""), data.get("storage") or {})
        mods = data.get("modules") if isinstance(data.get("modules"), dict) else {}
        names = [str(m["name"]) for m in mods.get("list") or () if isinstance(m, dict)
                 and m.get("name")] + [str(n) for n in mods.get("builtin_names") or ()]
        modules = frozenset(module_name(n) for n in names) if names else None
    elif bootenv is not None:
        raise ConfigError(f"--bootenv {bootenv}: no manifest.json there")
    return set(tools.resolve(groups)), where, info, modules


def cmd_layout_plan(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from agent.disks import NoProbe
    from agent.initramfs import module_name
    from agent.planner import make_plan

    if a.hostname != "HOSTNAME":  # the placeholder the plan prints when none is given
        checks.host_name(a.hostname, "--hostname")
    checks.positive(a.ram, "--ram")
    path = Path(a.file)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read disk layout: {e.strerror}") from None
    from agent.storage import layoutfile

    layout = {"name": path.name, "format": layoutfile.format_of(path.name, text), "text": text}
    disks = parse_disks(a.disk)
    have, where, info, modules = _tools(Path(a.bootenv) if a.bootenv else None, state)
    fw = a.firmware or _layout_firmware(layout)
    plan = make_plan(instructions={"image": _image(state, a.image), "layout": layout},
                     server=NO_SERVER, hostname=a.hostname, targets=disks, fw=fw,
                     ram_bytes=a.ram << 20, have_tool=lambda tool: tool in have,
                     probe=NoProbe(), bootenv=info,
                     have_module=None if modules is None
                     else (lambda m: module_name(m) in modules))
    print(plan.describe())
    ui.info(f"(the tools checked are those of {where}; nothing was written)")
    return 0


def _layout_firmware(layout: dict[str, Any]) -> str:
    """The firmware the layout's <bootloader> asks for, else BIOS."""
    from agent.storage import layoutfile
    from agent.storage.model import InstallType

    lay = layoutfile.parse(layout["text"], layout["name"], layout["format"])
    bl = lay.bootloader
    return "uefi" if bl is not None and bl.install_type is InstallType.EFI else "bios"


def cmd_layout_convert(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from agent.storage import layoutfile
    from agent.storage.validate import check

    layout = layoutfile.load(a.file)
    src = layoutfile.format_of(a.file, Path(a.file).read_bytes())
    to = {"xml": layoutfile.XML, "toml": layoutfile.TOML, None: None}[a.to] or \
        (layoutfile.TOML if src == layoutfile.XML else layoutfile.XML)
    text = layoutfile.render(layout, to)
    # What is written must read back as the same layout, or nothing is written.
    if layoutfile.parse(text, f"{a.file} converted", to) != layout:
        raise ConfigError(f"{a.file}: the {to} form does not read back the same", hint="a bug")
    for p in check(layout):
        ui.info(f"warning: {p.message}")
    if a.output:
        Path(a.output).write_text(text)
        ui.info(f"{a.file} ({src}) -> {a.output} ({to})")
    else:
        print(text, end="")
    return 0


# The TOML form in short (what a TOML parse error's hint points to).
TOML_FORM = """\
The TOML form has SystemImager's elements and attributes as tables and keys:

  [[disk]]                      dev = "/dev/sda", label_type = "gpt",
                                unit_of_measurement = "MiB"
  [[disk.part]]                 num = 1, size = 1 (or "*"), p_type = "primary",
                                flags = ["bios_grub"]
  [[raid_disk]], [[luks_dev]]   RAID arrays, LUKS volumes
  [[lvm_group]], [[lvm_group.lv]]  LVM groups and their volumes
  [bootloader]                  flavor = "grub2", install_type = "legacy"
  [[bootloader.target]]         dev = "/dev/sda"
  [[fsinfo]]                    line = 10, real_dev = "/dev/sda2", mp = "/",
                                fs = "ext4"

`sysclone layout convert LAYOUT.xml --to toml` shows any XML layout in it."""


def add_layout_commands(sub: Any, add: Add) -> None:
    la = sub.add_parser("layout", help="check, plan and convert disk layouts",
                        description="Disk layouts: SystemImager XML or its TOML form.",
                        epilog=TOML_FORM, formatter_class=argparse.RawDescriptionHelpFormatter)
    lsub = la.add_subparsers(dest="layout_command", metavar="ACTION", required=True)
    p = add(lsub, "check", cmd_layout_check,
            "list every problem of each layout, as the agent would refuse it (exit 1 if any)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p = add(lsub, "plan", cmd_layout_plan,
            "print the install plan the agent would make on disks of the given sizes "
            "(--disk is required)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--disk", default="", metavar="SIZE[,SIZE...]",
                   help="the machine's disks in order, e.g. 20G,20G (G = GiB, GB = 10^9); "
                        "each may add :name=, :bus=, :model=, :serial=, :wwn=, :by_path= for "
                        "selectors")
    p.add_argument("--firmware", choices=("bios", "uefi"),
                   help="the machine's firmware (default: what the layout's bootloader says, "
                        "else bios)")
    p.add_argument("--image", metavar="NAME[@N]",
                   help="check that this stored image fits (default: no image data)")
    p.add_argument("--hostname", default="HOSTNAME")
    p.add_argument("--ram", type=int, default=2048, metavar="MiB",
                   help="the machine's memory, for the default layout's swap (default 2048)")
    p.add_argument("--bootenv", metavar="DIR",
                   help="check tools against this boot environment (default: "
                        "ROOT/bootenv/standard, else the default tool groups)")
    p = add(lsub, "convert", cmd_layout_convert,
            "convert a layout between SystemImager XML and TOML (the same layout)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--to", choices=("xml", "toml"),
                   help="the form to write (default: the other one)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
