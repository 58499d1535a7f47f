"""The golden-client side of a capture, as the image server hands it out.

`golden.py` is self-contained (standard library, Python 3.9): the API serves
it as it is (GET /v1/client/prepare.py, for `curl ... | python3 - prepare`)
and as a zipapp (GET /v1/client/sysclone-client.pyz, for `python3 FILE
prepare`).  Both are built from the file in this package, so what a client
runs is always what this server's capture code expects.
"""

from __future__ import annotations

from pathlib import Path

from imageserver import zipapps

SCRIPT = Path(__file__).with_name("golden.py")
SCRIPT_PATH = "/v1/client/prepare.py"
ZIPAPP_PATH = "/v1/client/sysclone-client.pyz"

_MAIN = b"import sys\nimport golden\nsys.exit(golden.main())\n"


def script() -> bytes:
    return SCRIPT.read_bytes()


def zipapp() -> bytes:
    """A zipapp running golden.main()."""
    return zipapps.build([("golden.py", script())], _MAIN)
