"""How names and values in a layout must be spelled, shared by both forms
(XML and TOML) so that both accept exactly the same layouts."""

from __future__ import annotations

import re

from agent.storage.devices import DISK_PATH

# LVM's own rules (lvm(8) VALID NAMES); the XSD's pattern forgets "-" after
# the first character, which LVM allows and real group names use.
LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,127}")
MD_NAME = re.compile(r"/dev/md[0-9]+|/dev/md/[A-Za-z0-9_.:-]+")
# device-mapper names (dm name length limit 127; no "/" and not "." or "..").
DM_NAME = re.compile(r"[A-Za-z0-9+_][A-Za-z0-9+_.-]{0,126}")
# The XSD also allows an NFS-style "host:/path"; read it, `validate` refuses it.
DISK_DEV = re.compile(DISK_PATH.pattern + r"|[A-Za-z0-9.-]+:/.+")
PART_ID = re.compile(r"[0-9a-fA-F]{1,2}|[0-9a-fA-F]{4}"
                     r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
CHUNK = re.compile(r"[0-9]+[KkMmGg]?")
MD_METADATA = ("0", "0.90", "1", "1.0", "1.1", "1.2", "default", "ddf", "imsm")


def valid_lvm_name(value: str) -> bool:
    return bool(LVM_NAME.fullmatch(value)) and value not in (".", "..")
