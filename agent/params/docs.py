"""The parameter reference, rendered from the table for --help and the README."""

from __future__ import annotations

import textwrap
from typing import Literal

from agent.params.kinds import Kind, Shape
from agent.params.table import PARAMS, SI_BREAK_STEPS, SUPPORTED_PROTOCOLS, Param

_ORIGINS = {"4.9": "SystemImager 4.9", "4.3": "SystemImager 4.3 variable, si. name by sysclone",
            "sysclone": "sysclone"}


def _description(p: Param) -> str:
    """The help text, and for a parameter sysclone does not act on yet,
    what happens when it is set anyway."""
    if p.refused is None:
        return p.help
    when = "set to yes" if p.kind is Kind.BOOL else "set"
    return f"{p.help} Not supported by sysclone yet: the install stops with an error when " \
           f"it is {when} ({p.refused})."


def _default(p: Param) -> str:
    if p.default is None or p.default == ():
        return "-"
    return p.format_value(p.default)


def _legacy_names(p: Param) -> list[str]:
    names = []
    for alias in p.aliases:
        if alias.origin == "rd.sis":
            continue  # every 4.9 name has one; said once in the notes
        note = f"={alias.flag_value} when on" if alias.flag_value else ""
        names.append(alias.name + note + (" (deprecated)" if alias.deprecated else ""))
    return names


def _local_vars(p: Param) -> list[str]:
    names = [p.var]
    names += [a.name for a in p.aliases if a.is_variable and a.name not in names]
    if p.derived_var not in names:
        names.append(p.derived_var)
    return names


def _notes() -> list[str]:
    supported = ", ".join(sorted(str(s) for s in SUPPORTED_PROTOCOLS))
    return [
        "Booleans take 1/0, y/n, yes/no; a bare name means on. The last occurrence wins, "
        "except for si.break, which adds up.",
        "Precedence, lowest first: default < DHCP < kernel command line < local.cfg in the "
        "initrd < local.cfg on the boot medium (a sysclone USB "
        "disk's SYSCLONECFG partition) < server config. si.skip-local-cfg on the "
        "kernel command line ignores the local.cfg files.",
        "Every SystemImager 4.9 name is also accepted with the older rd.sis. prefix "
        "(deprecated). Old upper-case names are recognized only exactly as spelled.",
        "In local.cfg, write VARIABLE=value with the names of the local.cfg column (or the "
        "si. name).",
        f"si.dl-protocol accepts every 4.9 protocol; sysclone implements: {supported}.",
        "si.break steps: " + ", ".join(SI_BREAK_STEPS) + " (plus sysclone's phase names; "
        "sysclone-agent phases lists them with the SystemImager names each one stands for).",
        "Unknown si., rd.sis. and sysclone. names on the kernel command line, and unknown si. "
        "names in local.cfg or a server config, stop the install with an error.",
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_docs(fmt: Literal["markdown", "text"] = "markdown", *, width: int = 79) -> str:
    """The reference of every install parameter: a markdown table for the
    README, or an indented text list for --help (wrapped at width)."""
    if fmt == "markdown":
        lines = [
            "| Parameter | Value | Default | Old names | local.cfg | DHCP | Description |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in PARAMS:
            value = p.metavar() + (" (repeatable)" if p.shape is Shape.REPEATABLE else "")
            dhcp = ", ".join(str(o) for o in p.dhcp) or "-"
            cells = [f"`{p.name}`", value, _default(p), ", ".join(_legacy_names(p)) or "-",
                     ", ".join(_local_vars(p)), dhcp,
                     f"{_description(p)} *({_ORIGINS[p.origin]})*"]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        lines.append("")
        lines += [f"- {note}" for note in _notes()]
        return "\n".join(lines) + "\n"
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}")
    def wrap(text: str, first: str, rest: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                             break_on_hyphens=False, break_long_words=False)

    lines = []
    for p in PARAMS:
        head = f"{p.name}={p.metavar()}"
        if p.shape is Shape.REPEATABLE:
            head += "  (repeatable)"
        lines.append(f"{head}  [default: {_default(p)}]")
        lines += wrap(_description(p), "    ", "    ")
        extra = []
        legacy = _legacy_names(p)
        if legacy:
            extra.append("also: " + ", ".join(legacy))
        extra.append("local.cfg: " + ", ".join(_local_vars(p)))
        if p.dhcp:
            extra.append("DHCP option " + ", ".join(str(o) for o in p.dhcp))
        lines += wrap("; ".join(extra), "    ", "      ")
    lines.append("")
    for note in _notes():
        lines += wrap(note, "* ", "  ")
    return "\n".join(lines) + "\n"
