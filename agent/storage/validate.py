"""Does a layout make sense?  Checked before anything touches a disk.

The readers (`sixml`, `tomlread`) already enforced the schema; this checks
what a schema cannot: partition numbering rules of each table type, `*`
and percentages, that every device referenced exists, belongs to the
layout and is used for one thing only, RAID member counts, LVM groups and
LUKS volumes, the mount table (mount points, labels, UUIDs, btrfs
subvolumes, kept filesystems, the options passed to mkfs), and that the
bootloader can boot (an ESP for EFI, a BIOS boot partition for grub on
GPT, a /boot grub can read).

Every problem is one line naming the file, the line of the offending item
and the item; `validate` raises the first as ConfigError, `check` returns
them all (for `sysclone layout check`).  Disk sizes are not known here:
`geometry` and the plan check that everything fits.

The checks live in validate_disks, validate_stack, validate_fsinfo and
validate_boot; `Checker` (agent.storage.checker) is what they share.
"""

from __future__ import annotations

from agent.storage import validate_boot, validate_disks, validate_fsinfo, validate_stack
from agent.storage.checker import Checker, Problem
from agent.storage.model import Layout
from sysclone.errors import ConfigError

__all__ = ["Checker", "Problem", "check", "validate"]


def check(layout: Layout) -> list[Problem]:
    """Every problem found, in file order within each kind of check."""
    c = Checker(layout)
    validate_disks.check(c)
    validate_stack.check(c)
    validate_fsinfo.check(c)
    validate_boot.check(c)
    return c.problems


def validate(layout: Layout) -> None:
    """Raise ConfigError for the first problem (the others ride along in
    its `problems` field and are counted in the hint)."""
    problems = check(layout)
    if not problems:
        return
    first = problems[0]
    hint = first.hint
    if len(problems) > 1:
        more = f"{len(problems) - 1} more problem(s) in this layout"
        hint = f"{hint}; {more}" if hint else more
    raise ConfigError(first.message, hint=hint, problems=[p.message for p in problems])
