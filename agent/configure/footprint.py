"""Footprints: detect a configuration style from the files an image holds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

# How well a footprint fits an image (like ironic-python-agent's support levels).
NONE, GENERIC, MAINLINE, PREFERRED = 0, 1, 2, 3


class Footprint(Protocol):
    name: str

    def fits(self, root: Path) -> int: ...


F = TypeVar("F", bound=Footprint)


def best(footprints: Sequence[F], root: Path) -> F | None:
    """The footprint that fits best (first one wins a tie), or None."""
    scored = [(fp.fits(root), i, fp) for i, fp in enumerate(footprints)]
    scored = [s for s in scored if s[0] > NONE]
    if not scored:
        return None
    scored.sort(key=lambda s: (-s[0], s[1]))
    log.debug("footprints for %s: %s", root, [(fp.name, score) for score, _, fp in scored])
    return scored[0][2]


def exists(root: Path, *paths: str) -> bool:
    """Any of `paths` exists in the image (symlinks judged inside the image)."""
    for p in paths:
        q = root / p.lstrip("/")
        if q.is_symlink() or q.exists():
            return True
    return False
