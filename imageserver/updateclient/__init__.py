"""updateclient as the image server hands it out, and what it tells it.

`client.py` is self-contained (standard library, Python 3.9): the API
serves it as it is (GET /v1/client/updateclient.py), so an installed
machine needs only Python and rsync to be brought up to date:

    curl -fsS http://SERVER:8181/v1/client/updateclient.py | python3 - --server SERVER

and as a zipapp with its bytecode (GET /v1/client/updateclient.pyz), for a
machine that updates regularly: `python3 /root/updateclient.pyz ...` skips
compiling its 1,650 lines at every run (imageserver.zipapps).

`sysclone updateclient` (sysclone/updatecli.py) runs the same code where
sysclone is installed, and `sysclone push-update` sends it over SSH.

GET /v1/update?hostname=&image= answers what the client is to sync to:
the image version and its rsync module (the current version unless
NAME@N is asked; without a name, the image the client last installed or
updated to, then the server's default image), the overrides an install
would get, and the files its install wrote (fstab, host name, network
configuration...), which an update leaves alone, and the paths initrd
tools read (when a kernel changes, the client sends its own copies of
those it keeps, and the server builds its initrd: POST /v1/initrd).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from agent.configure.initrd import INITRD_INPUTS
from agent.params.kinds import is_hostname
from imageserver import zipapps
from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.monitor import client_id
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

SCRIPT = Path(__file__).with_name("client.py")
SCRIPT_PATH = "/v1/client/updateclient.py"
ZIPAPP_PATH = "/v1/client/updateclient.pyz"
UPDATE_PATH = "/v1/update"
FINISH_PHASE = "finish"


# The archive's own path is the script's file: an update leaves it alone
# (client.own_script), and a later --rollback runs it.
_MAIN = (b"import os, sys\nimport updateclient\n"
         b"updateclient.SCRIPT_FILE = os.path.abspath(sys.argv[0])\n"
         b"sys.exit(updateclient.main())\n")


def script() -> bytes:
    return SCRIPT.read_bytes()


@functools.lru_cache(maxsize=1)
def zipapp() -> bytes:
    return zipapps.build([("updateclient.py", script())], _MAIN, bytecode=True)


def _events(state: StateRoot, hostname: str) -> list[dict[str, Any]]:
    f = state.logs / f"{client_id({'hostname': hostname})}.jsonl"
    if not f.is_file():
        return []
    out = []
    for line in f.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def last_image(events: list[dict[str, Any]]) -> str | None:
    """The image of the client's last finished install or update (its name:
    the client follows the image's current version)."""
    for ev in reversed(events):
        finished = (ev.get("kind") == "done" and FINISH_PHASE in (ev.get("timings") or {})) \
            or (ev.get("kind") == "updated")
        if finished and isinstance(ev.get("image"), str):
            return str(ev["image"]).split("@")[0]
    return None


def install_written(events: list[dict[str, Any]]) -> list[str]:
    """The files the client's last finished install wrote, as absolute
    paths (agents report some relative to the root: etc/dracut.conf.d/...);
    nothing with a line break or a `..` component."""
    for ev in reversed(events):
        if ev.get("kind") == "done" and FINISH_PHASE in (ev.get("timings") or {}):
            out = []
            for w in ev.get("written") or ():
                if not isinstance(w, str) or not w.strip("/") or "\n" in w or "\r" in w \
                        or ".." in w.split("/"):
                    continue
                out.append("/" + w.lstrip("/"))
            return list(dict.fromkeys(out))
    return []


def answer(state: StateRoot, policy: ServerPolicy, store: ImageStore,
           q: dict[str, str]) -> dict[str, Any]:
    hostname = q.get("hostname") or None
    if hostname is not None and not is_hostname(hostname):
        raise ConfigError(f"host name {hostname!r} is not valid")
    events = _events(state, hostname) if hostname else []
    image = q.get("image") or last_image(events) or policy.default_image
    if not image:
        raise ConfigError("no image named for this client",
                          hint="pass --image NAME[@N], or start the server with "
                               "--default-image")
    # What an install would get, from the same code (version, overrides).
    instr = resolve(state, ClientQuery(hostname=hostname, mac=q.get("mac") or None,
                                       image=image), policy, store)
    img = instr["image"]
    return {"version": 1, "hostname": hostname,
            "image": {k: img[k] for k in ("name", "version", "module", "rsync_port")},
            "overrides": list(instr.get("overrides") or ()),
            "written": install_written(events),
            # What initrd tools read: the client sends its own copies of
            # these (those it keeps out of updates) when the server builds
            # its initrd.
            "initrd_inputs": list(INITRD_INPUTS)}
