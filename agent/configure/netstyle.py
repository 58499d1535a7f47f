"""What every network style shares: the footprint interface, refusing what
a style cannot express (all at once, naming the interface and the
setting), and the result written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.configure.footprint import NONE
from agent.configure.netmodel import Iface, NetConfigError, non_default_bond_options


@dataclass(frozen=True)
class Written:
    files: tuple[str, ...]  # paths from /, in the order written
    warnings: tuple[str, ...] = ()  # settings with no equivalent, said out loud


@dataclass
class Problems:
    """What a style cannot express, collected over the whole configuration."""

    style: str
    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def refuse(self, iface: Iface, what: str) -> None:
        self.refused.append(f"{iface.where}: {what}")

    def warn(self, iface: Iface, what: str) -> None:
        self.warnings.append(f"{iface.where}: {what}")

    def raise_if_any(self) -> None:
        if self.refused:
            raise NetConfigError(
                f"the image's network style ({self.style}) cannot express "
                + "; ".join(self.refused),
                hint="change the network configuration, or install a style that can in the "
                     "golden image (systemd-networkd and NetworkManager express the most)")


class Style:
    name = "none"
    # SystemImager's control= values that mean this style (legacy, nm,
    # NetworkManager, systemd): a mismatch is reported, the footprint wins.
    controls: tuple[str, ...] = ()
    # Bonding options this style has a setting for (kernel names); None: all.
    bond_options: frozenset[str] | None = None
    kinds: tuple[str, ...] = ("ethernet", "infiniband", "bond", "vlan")

    def fits(self, root: Path) -> int:
        return NONE

    def check(self, root: Path, ifaces: list[Iface]) -> Problems:
        """Everything this style cannot write for this configuration."""
        p = Problems(self.name)
        for i in ifaces:
            if i.kind not in self.kinds:
                p.refuse(i, f"{i.kind} interfaces")
            if i.ipv4.method == "bootp" and not self.can_bootp:
                p.refuse(i, 'bootproto="bootp"')
            if i.kind == "bond" and self.bond_options is not None:
                for k, v in non_default_bond_options(i):
                    if k not in self.bond_options:
                        p.refuse(i, f"bonding option {k}={v}")
            self.check_iface(root, i, ifaces, p)
        return p

    can_bootp = False

    def check_iface(self, root: Path, i: Iface, ifaces: list[Iface], p: Problems) -> None:
        """Style-specific refusals and warnings for one interface."""

    def write(self, root: Path, ifaces: list[Iface]) -> Written:
        problems = self.check(root, ifaces)
        problems.raise_if_any()
        files = self.render(root, ifaces)
        return Written(tuple(files), tuple(problems.warnings))

    def render(self, root: Path, ifaces: list[Iface]) -> list[str]:
        raise NotImplementedError


def warn_common(i: Iface, p: Problems, *, uuid: bool = False, userctl: bool = False,
                failure_fatal: bool = False) -> None:
    """Settings that only some styles have and that change nothing about
    how the interface works: said, not refused."""
    if i.uuid and not uuid:
        p.warn(i, f"uuid {i.uuid} is a NetworkManager connection's identity; {p.style} "
                  "has no use for it")
    if i.userctl is not None and not userctl:
        p.warn(i, f"userctl (users may bring it up) has no equivalent in {p.style}")
    fatal = i.ipv4.required or (i.ipv6 is not None and i.ipv6.required)
    if fatal and not failure_fatal:
        p.warn(i, f"ipv4/ipv6_failure_fatal has no equivalent in {p.style}")
