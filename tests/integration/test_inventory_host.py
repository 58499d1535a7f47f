"""The served `client inventory` zipapp on this very machine, with the
system's own python3 (no sysclone, no pyudev installed: the zipapp carries
pyudev), read back by `bootenv check`'s parser."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bootenv.check import parse_machine
from imageserver.clientinventory import zipapp


def test_zipapp_prints_this_machines_inventory(tmp_path: Path) -> None:
    app = tmp_path / "inventory.pyz"
    app.write_bytes(zipapp())
    r = subprocess.run(["/usr/bin/python3", "-I", str(app)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    assert inv["collector"] == "sysclone client inventory" and inv["format"] == 1
    assert inv["pci"] and all(p["modalias"].startswith("pci:") for p in inv["pci"])
    assert inv["memory_bytes"] > 0 and inv["cpu"]["threads"] >= 1
    devices, _notes = parse_machine(r.stdout, "inventory.json")
    assert {d.kind for d in devices} <= {"storage", "network"}
