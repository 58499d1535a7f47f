"""What the running boot environment was built to do: etc/sysclone/bootenv.json,
written by bootenv.build.

A boot environment can lack the tools of a storage stack on purpose (UYOK
`--modules loaded` from a client that never used md, LVM or LUKS leaves
mdadm, lvm and cryptsetup out, with their kernel modules); the file says
which stacks it can build and, for the others, why not and which modules a
rebuild must add.  The plan turns that into its refusal, before any disk
is touched, instead of a bare "mdadm is missing".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sysclone.errors import ConfigError

log = logging.getLogger(__name__)

PATH = Path("/etc/sysclone/bootenv.json")

# The tool group (bootenv.tools) each tool the plan checks belongs to.
TOOL_GROUP = {"mdadm": "raid", "lvm": "lvm", "cryptsetup": "crypt", "mke2fs": "ext4",
              "mkfs.xfs": "xfs", "mkfs.btrfs": "btrfs", "mkfs.fat": "vfat", "mkswap": "core"}


@dataclass(frozen=True)
class BootenvInfo:
    flavor: str = ""
    # tool group -> {"can": bool, "what": ..., "why": ..., "add_modules": [...]}
    storage: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = PATH) -> BootenvInfo:
        """The running boot environment's description; an empty one where
        there is none (an older build, a host running `layout plan`)."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            log.warning("%s cannot be read (%s): plan refusals will not say why", path, e)
            return cls()
        storage = data.get("storage") if isinstance(data, dict) else None
        if not isinstance(storage, dict):
            return cls()
        return cls(str(data.get("flavor") or ""),
                   {k: v for k, v in storage.items() if isinstance(v, dict)})

    def missing_tool(self, tool: str, what: str, modules: Sequence[str] = ()) -> ConfigError:
        """The plan's refusal when `tool` is not here: `what` is what cannot
        be done ("cannot create xfs"), `modules` the kernel modules the
        layout needs beyond the stack's own (raid1 for a RAID1 array)."""
        group = TOOL_GROUP.get(tool, "")
        stack = self.storage.get(group) or {}
        why = stack.get("why")
        if not why:
            return ConfigError(f"this boot environment {what} ({tool} is missing)",
                               hint=f"rebuild it with the {group or tool} tool group")
        add = [*(str(m) for m in stack.get("add_modules") or ()),
               *(m for m in modules if m not in (stack.get("add_modules") or ()))]
        fix = (f"rebuild it with --add-modules {','.join(add)}" if stack.get("add_modules")
               else f"rebuild it with --tools including {group}")
        return ConfigError(f"this boot environment has no {tool}, so it {what}: {why}; {fix}")

