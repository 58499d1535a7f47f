"""The golden-client side of a capture, as the image server hands it out.

`golden.py` is self-contained (standard library, Python 3.9): the API serves
it as it is (GET /v1/client/prepare.py, for `curl ... | python3 - prepare`)
and as a zipapp (GET /v1/client/sysclone-client.pyz, for `python3 FILE
prepare`).  Both are built from the file in this package, so what a client
runs is always what this server's capture code expects.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

SCRIPT = Path(__file__).with_name("golden.py")
SCRIPT_PATH = "/v1/client/prepare.py"
ZIPAPP_PATH = "/v1/client/sysclone-client.pyz"

_MAIN = b"import sys\nimport golden\nsys.exit(golden.main())\n"


def script() -> bytes:
    return SCRIPT.read_bytes()


def zipapp() -> bytes:
    """A zipapp running golden.main(); fixed timestamps, so the same source
    gives the same bytes."""
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (("__main__.py", _MAIN), ("golden.py", script())):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()
