"""Sizes as disk layouts write them, and their conversion to bytes.

Partition sizes are a decimal number (or `*`, "the rest") in the unit of
measurement of their disk; LVM sizes carry their own lvcreate-style suffix.
Amounts stay `Decimal` so that "0.5" GiB or "33.3" % lose nothing before
the one place where bytes are computed (and rounded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from enum import Enum

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


class Unit(Enum):
    """`unit_of_measurement` of a <disk>.  Values are the spelling we write."""

    TB = "TB"
    TIB = "TiB"
    GB = "GB"
    GIB = "GiB"
    MB = "MB"
    MIB = "MiB"
    KB = "kB"
    KIB = "KiB"
    B = "B"
    SECTORS = "s"
    PERCENT = "percent"

    @classmethod
    def parse(cls, text: str) -> Unit:
        """The schema's spellings; percent has three (DTD and XSD disagree)."""
        if text in ("percentage", "%"):
            return cls.PERCENT
        return cls(text)

    @classmethod
    def spellings(cls) -> list[str]:
        return [u.value for u in cls] + ["percentage", "%"]

    @property
    def bytes_per_unit(self) -> int | None:
        """None for units that need the disk (sectors, percent)."""
        return _UNIT_BYTES.get(self)


_UNIT_BYTES = {
    Unit.TB: 10**12, Unit.TIB: TiB, Unit.GB: 10**9, Unit.GIB: GiB,
    Unit.MB: 10**6, Unit.MIB: MiB, Unit.KB: 10**3, Unit.KIB: KiB, Unit.B: 1,
}

_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")


def parse_decimal(text: str) -> Decimal | None:
    """A plain non-negative decimal ("500", "0.5"), or None if it is not one.
    Exponents, signs, "nan" and friends that Decimal() would accept are refused."""
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex already guards
        return None


@dataclass(frozen=True)
class Size:
    """A partition size: an amount in the disk's unit, or None for `*`."""

    amount: Decimal | None

    REST_TEXT = "*"

    @property
    def is_rest(self) -> bool:
        return self.amount is None

    @classmethod
    def parse(cls, text: str) -> Size | None:
        if text == cls.REST_TEXT:
            return cls(None)
        value = parse_decimal(text)
        return None if value is None else cls(value)

    def __str__(self) -> str:
        return self.REST_TEXT if self.amount is None else format_decimal(self.amount)


def format_decimal(value: Decimal) -> str:
    """Plain notation, never "5E+2"."""
    return format(value, "f")


def size_to_bytes(amount: Decimal, unit: Unit, *, sector_size: int,
                  percent_base: int) -> int:
    """Bytes for an absolute amount, rounded up to a whole byte: asking for
    0.1 B must not give an empty partition.  Percent is of `percent_base`,
    rounded down so that shares adding up to 100 % still fit."""
    if unit is Unit.PERCENT:
        return int(Decimal(percent_base) * amount / 100)
    per = unit.bytes_per_unit if unit is not Unit.SECTORS else sector_size
    assert per is not None
    return int((amount * per).to_integral_value(rounding=ROUND_CEILING))


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment


def human(nbytes: int) -> str:
    """Bytes for messages: exact count plus a readable binary size."""
    for unit, div in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(nbytes) >= div:
            return f"{nbytes} bytes ({nbytes / div:.1f} {unit})"
    return f"{nbytes} bytes"


# --- LVM sizes -------------------------------------------------------------
# lvcreate -L / vgcreate -s take a number with an optional one-letter unit,
# case-insensitive, all binary, MiB by default (lvm(8) "Size[m|UNIT]").
_LVM_UNIT_BYTES = {
    "B": 1, "S": 512, "K": KiB, "M": MiB, "G": GiB, "T": TiB,
    "P": 1024 * TiB, "E": 1024 * 1024 * TiB,
}
_LVM_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([bBsSkKmMgGtTpPeE]?)")


@dataclass(frozen=True)
class LvmSize:
    """An LVM size: amount with its unit letter ("" = MiB); amount None = `*`
    (for a logical volume: all the free space left in its group)."""

    amount: Decimal | None
    suffix: str = ""

    @property
    def is_rest(self) -> bool:
        return self.amount is None

    @classmethod
    def parse(cls, text: str, *, allow_rest: bool) -> LvmSize | None:
        if text == "*":
            return cls(None) if allow_rest else None
        m = _LVM_SIZE.fullmatch(text)
        if not m:
            return None
        return cls(Decimal(m.group(1)), m.group(2).upper())

    @property
    def bytes(self) -> int | None:
        if self.amount is None:
            return None
        per = _LVM_UNIT_BYTES[self.suffix or "M"]
        return int((self.amount * per).to_integral_value(rounding=ROUND_CEILING))

    def __str__(self) -> str:
        return "*" if self.amount is None else f"{format_decimal(self.amount)}{self.suffix}"
