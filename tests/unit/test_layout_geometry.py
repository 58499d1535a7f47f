"""Partition geometry: sizes to aligned byte ranges, checked with numbers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agent.storage.geometry import plan_partitions, usable_area
from agent.storage.model import Disk, LabelType, Partition, PartType
from agent.storage.sixml import load_layout
from agent.storage.units import GiB, MiB, Size, TiB, Unit
from sysclone.errors import ConfigError


def mib(plan):
    """(number, start MiB, size MiB) -- every value must be whole MiB."""
    out = []
    for p in plan:
        assert p.start % MiB == 0 and p.size % MiB == 0, p
        out.append((p.number, p.start // MiB, p.size // MiB))
    return out


def make_disk(label: str, unit: str, *parts: tuple[int, str, str], dev: str = "/dev/sda") -> Disk:
    return Disk(dev=dev, label=LabelType(label), unit=Unit.parse(unit), partitions=tuple(
        Partition(number=n, size=Size.parse(size), kind=PartType(kind)) for n, size, kind in parts))


def test_simple_on_20_gib(compat):
    (sda,) = load_layout(compat / "disk-layout-simple.xml").disks
    plan = plan_partitions(sda, 20 * GiB)
    # 500 MB = 476.8 MiB -> 477; the extended partition takes the rest;
    # each logical partition follows 1 MiB for its boot record.
    assert mib(plan) == [(1, 1, 477), (2, 478, 20002), (5, 479, 489), (6, 969, 19511)]
    assert [p.device for p in plan] == ["/dev/sda1", "/dev/sda2", "/dev/sda5", "/dev/sda6"]
    assert plan[-1].end == 20 * GiB  # msdos: up to the last MiB
    assert [p.kind for p in plan] == [PartType.PRIMARY, PartType.EXTENDED, PartType.LOGICAL,
                                      PartType.LOGICAL]
    assert plan[0].partition is sda.partition(1)


def test_complex_lays_out_by_number(compat):
    (sda,) = load_layout(compat / "disk-layout-complex.xml").disks
    plan = plan_partitions(sda, 20 * GiB)
    assert mib(plan) == [(1, 1, 500), (2, 501, 1024), (3, 1525, 4096), (4, 5621, 14859),
                         (5, 5622, 8712), (6, 14335, 2048), (7, 16384, 4096)]
    ext = plan[3]
    assert all(ext.start < p.start and p.end <= ext.end for p in plan[4:])


def test_gpt_leaves_room_for_the_backup_header(compat):
    (sda,) = load_layout(compat / "disk-layout-EFI.xml").disks
    plan = plan_partitions(sda, 20 * GiB)
    # The last 16.5 KiB hold the backup GPT: the last whole MiB is lost.
    assert mib(plan) == [(1, 1, 512), (2, 513, 2048), (3, 2561, 2048), (4, 4609, 15870)]
    assert plan[-1].end == 20 * GiB - MiB
    # With just enough extra room for it, the last MiB is usable.
    plan = plan_partitions(sda, 20 * GiB + 16 * 1024 + 512)
    assert plan[-1].end == 20 * GiB


def test_usable_area():
    assert usable_area(LabelType.GPT, 10 * GiB, 512, MiB) == (MiB, 10 * GiB - MiB)
    assert usable_area(LabelType.MSDOS, 10 * GiB, 512, MiB) == (MiB, 10 * GiB)
    assert usable_area(LabelType.MSDOS, 10 * GiB + 123, 512, MiB) == (MiB, 10 * GiB)


def test_sectors():
    d = make_disk("gpt", "MiB", (1, "1", "primary"), (2, "*", "primary"))
    first, rest = plan_partitions(d, 1 * GiB)
    assert (first.start_sector, first.size_sectors, first.last_sector) == (2048, 2048, 4095)
    assert (rest.start_sector, rest.last_sector) == (4096, (GiB - MiB) // 512 - 1)


def test_4k_sectors():
    d = make_disk("gpt", "s", (1, "2048", "primary"), (2, "*", "primary"))
    first, rest = plan_partitions(d, 1 * GiB, sector_size=4096)
    assert first.size == 8 * MiB  # 2048 sectors of 4 KiB
    assert (first.start_sector, first.size_sectors) == (256, 2048)
    assert rest.end == GiB - MiB


def test_units_decimal_versus_binary():
    d = make_disk("gpt", "GB", (1, "1", "primary"), (2, "1.5", "primary"))
    one, half = plan_partitions(d, 10 * GiB)
    assert one.size == 954 * MiB  # 10^9 bytes = 953.67 MiB, rounded up
    assert half.size == 1431 * MiB
    d = make_disk("gpt", "GiB", (1, "1", "primary"), (2, "0.5", "primary"))
    assert [p.size for p in plan_partitions(d, 10 * GiB)] == [GiB, GiB // 2]
    d = make_disk("gpt", "kB", (1, "1", "primary"))
    assert plan_partitions(d, 10 * GiB)[0].size == MiB  # never smaller than asked


def test_percent_of_usable_area():
    d = make_disk("msdos", "%", (1, "50", "primary"), (2, "25", "primary"),
                  (3, "25", "primary"))
    plan = plan_partitions(d, 1025 * MiB)  # 1024 MiB usable after the first MiB
    assert mib(plan) == [(1, 1, 512), (2, 513, 256), (3, 769, 256)]
    d = make_disk("msdos", "percent", (1, "33.3", "primary"), (2, "*", "primary"))
    assert mib(plan_partitions(d, 1025 * MiB)) == [(1, 1, 340), (2, 341, 684)]


def test_rest_in_the_middle():
    d = make_disk("gpt", "MiB", (1, "100", "primary"), (2, "*", "primary"),
                  (3, "200", "primary"))
    assert mib(plan_partitions(d, 1 * GiB)) == [(1, 1, 100), (2, 101, 722), (3, 823, 200)]


def test_fixed_size_extended_keeps_its_size():
    d = make_disk("msdos", "MiB", (1, "100", "primary"), (2, "300", "extended"),
                  (5, "100", "logical"), (6, "*", "logical"), (3, "*", "primary"))
    assert mib(plan_partitions(d, 1 * GiB)) == [
        (1, 1, 100), (2, 101, 300), (5, 102, 100), (6, 203, 198), (3, 401, 623)]


def test_msdos_addresses_2_tib_only(compat):
    (sda,) = load_layout(compat / "disk-layout-simple.xml").disks
    plan = plan_partitions(sda, 3 * TiB)
    assert plan[-1].end == 2 * TiB
    assert plan_partitions(sda, 3 * TiB, sector_size=4096)[-1].end == 3 * TiB


def test_convert_and_none_plan_nothing():
    for label in ("none", "convert"):
        assert plan_partitions(make_disk(label, "MiB", (1, "*", "primary")), GiB) == []


def test_too_small_names_disk_need_and_size(compat):
    (sda,) = load_layout(compat / "disk-layout-simple.xml").disks
    with pytest.raises(ConfigError) as err:
        plan_partitions(sda, 900 * MiB)
    # 1 MiB table + 477 MiB + the extended partition's least: 1 + 489 + 1 + 1 MiB.
    message = err.value.message
    assert "disk /dev/sda is too small" in message
    assert f"it needs {970 * MiB} bytes (970.0 MiB)" in message
    assert f"the disk has {900 * MiB} bytes (900.0 MiB)" in message


def test_too_small_without_rest():
    d = make_disk("gpt", "GiB", (1, "4", "primary"), (2, "4", "primary"), dev="/dev/vdb")
    with pytest.raises(ConfigError) as err:
        plan_partitions(d, 8 * GiB)
    assert "disk /dev/vdb is too small" in err.value.message
    assert f"needs {8 * GiB + 2 * MiB} bytes" in err.value.message


def test_extended_smaller_than_its_logicals():
    d = make_disk("msdos", "MiB", (1, "100", "extended"), (5, "99", "logical"),
                  (6, "*", "logical"))
    with pytest.raises(ConfigError) as err:
        plan_partitions(d, GiB)
    assert "extended partition 1 of /dev/sda is 104857600 bytes (100.0 MiB)" in str(err.value)
    assert "need 106954752 bytes (102.0 MiB)" in str(err.value)


def test_tiny_percentage():
    d = make_disk("gpt", "%", (1, "0.01", "primary"))
    with pytest.raises(ConfigError, match=r"partition 1 of /dev/sda: 0\.01% of"):
        plan_partitions(d, GiB)


def test_msdos_too_big_for_label_hint():
    d = make_disk("msdos", "TiB", (1, "3", "primary"))
    with pytest.raises(ConfigError) as err:
        plan_partitions(d, 4 * TiB)
    assert 'label_type="gpt"' in err.value.hint


def test_bad_arguments():
    d = make_disk("gpt", "MiB", (1, "*", "primary"))
    with pytest.raises(ValueError):
        plan_partitions(d, GiB, sector_size=1000)
    with pytest.raises(ValueError):
        plan_partitions(d, GiB, sector_size=4096, alignment=2048)


def test_decimal_sizes_stay_exact():
    d = make_disk("gpt", "MiB", (1, "0.5", "primary"))
    assert d.partitions[0].size.amount == Decimal("0.5")
    assert plan_partitions(d, GiB)[0].size == MiB


def test_logicals_without_extended_are_refused():
    d = make_disk("msdos", "MiB", (1, "*", "primary"), (5, "10", "logical"))
    with pytest.raises(ConfigError, match="/dev/sda has logical partitions but no extended"):
        plan_partitions(d, GiB)
