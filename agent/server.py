"""The agent's side of the image server's HTTP API."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)

# The image's initrds as the server lists them (imageserver.initrdlisting).
INITRD_LISTING = "/v1/initrd-listing"


class ServerError(SyscloneError):
    pass


@dataclass(frozen=True)
class ImageServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def get(self, path: str, query: dict[str, str | None], *, attempts: int = 4,
            timeout: float = 10.0) -> dict[str, Any]:
        q = urllib.parse.urlencode({k: v for k, v in query.items() if v})
        url = f"{self.url}{path}?{q}"
        last: Exception | None = None
        for i in range(attempts):
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    body = r.read()
                try:
                    data = json.loads(body)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    raise ServerError(f"{self.url}{path} did not answer with a JSON object",
                                      hint="is this a sysclone image server?")
                return data
            except urllib.error.HTTPError as e:
                # The server explains itself in a JSON body: pass its words on.
                try:
                    body = json.loads(e.read())
                except ValueError:
                    body = {}
                raise ServerError(body.get("message") or f"image server answered {e.code}",
                                  hint=body.get("hint"), status=e.code) from None
            except (urllib.error.URLError, OSError) as e:
                last = e
                reason = getattr(e, "reason", e)
                log.info("image server %s: %s (attempt %d/%d)", self.url, reason, i + 1,
                         attempts)
                if i + 1 < attempts:  # no wait after the last attempt
                    time.sleep(min(2.0 * (i + 1), 5.0))
        reason = getattr(last, "reason", last)
        raise ServerError(f"image server {self.host}:{self.port} is unreachable: {reason}",
                          hint="check IMAGESERVER= / si.server-port= and that "
                               "`sysclone serve` runs")

    def instructions(self, *, hostname: str | None, mac: str | None, image: str | None,
                     layout: str | None, network_config: str | None = None,
                     script: str | None = None) -> dict[str, Any]:
        return self.get("/v1/instructions", {"hostname": hostname, "mac": mac,
                                             "image": image, "layout": layout,
                                             "network_config": network_config,
                                             "script": script})

    def luks_key(self, *, hostname: str | None, image: str | None, volume: str) -> bytes:
        """A LUKS volume's key (GET /v1/luks-key, imageserver.lukskeys)."""
        data = self.get("/v1/luks-key", {"hostname": hostname, "image": image,
                                         "volume": volume})
        try:
            return base64.b64decode(str(data["key"]), validate=True)
        except (KeyError, ValueError):
            raise ServerError(f"{self.url}/v1/luks-key sent no usable key") from None

    def post(self, path: str, body: dict[str, Any], *, timeout: float = 900.0) -> bytes:
        """POST a JSON body, return the raw answer (one attempt: the work
        behind it is not always safe to repeat blindly)."""
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())
            except ValueError:
                err = {}
            raise ServerError(err.get("message") or f"image server answered {e.code}",
                              hint=err.get("hint"), status=e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerError(f"image server {self.host}:{self.port}: "
                              f"{getattr(e, 'reason', e)}") from None
