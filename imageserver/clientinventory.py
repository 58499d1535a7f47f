"""`sysclone client inventory` for machines without sysclone, as the image
server hands it out: agent/inventory.py (standard library and pyudev,
Python 3.9+) and pyudev itself in one zipapp.

    curl -fsSo inventory.pyz http://SERVER:8181/v1/client/inventory.pyz
    python3 inventory.pyz > machine.json

Built from this checkout's files, so what a machine runs is what the agent
runs; fixed timestamps, so the same sources give the same bytes.
"""

from __future__ import annotations

import functools
from pathlib import Path

from imageserver import zipapps

ZIPAPP_PATH = "/v1/client/inventory.pyz"

_MAIN = b"import sys\nimport inventory\nsys.exit(inventory.main())\n"


def _files() -> list[tuple[str, bytes]]:
    import pyudev

    from agent import inventory

    files = [("inventory.py", Path(inventory.__file__).read_bytes())]
    top = Path(pyudev.__file__).parent
    for p in sorted(top.rglob("*.py")):
        files.append((f"pyudev/{p.relative_to(top).as_posix()}", p.read_bytes()))
    return files


@functools.lru_cache(maxsize=1)
def zipapp() -> bytes:
    return zipapps.build(_files(), _MAIN)
