"""The image store's rule for a name (an image, an override).

A name ends up in paths, rsyncd.conf section headers and rsync URLs.
imageserver.names checks what enters the server by it, the agent's plan
what comes from the server (its overrides).  A module of its own: both
sides import it, the image server's command line at every start.
"""

from __future__ import annotations

import re

# \Z: no trailing newline.  No leading '-' (an option), '.' (hidden, '..')
# or '@' (the version separator); no '/' (a path); no '..' anywhere.
STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")


def is_store_name(name: str) -> bool:
    return bool(STORE_NAME.match(name)) and ".." not in name
