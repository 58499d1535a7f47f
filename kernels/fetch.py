"""Downloading from a mirror over plain HTTP(S) with urllib.

The archive client takes any function shaped like `Fetch`, so unit tests
hand it one that serves bytes from memory and never touch the network.
Integrity is not this module's job: everything fetched is checked against
the signed InRelease by the caller.
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import IO, Any, Protocol

from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as progress(done_bytes, total_bytes); total is 0 when unknown."""

USER_AGENT = "sysclone-kernels/0.1"
CHUNK = 1 << 20
# Generous per-read timeout: a slow mirror is fine, a silent one is not.
TIMEOUT = 60.0
ALLOWED_SCHEMES = ("http", "https")


class FetchError(SyscloneError):
    """A download failed.  `transient` says whether trying again can help
    (connection trouble, 5xx, a short read) or not (404, a refused URL)."""

    def __init__(self, message: str, *, url: str, status: int | None = None,
                 transient: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, url=url, status=status)
        self.url = url
        self.status = status
        self.transient = transient


class Fetch(Protocol):
    def __call__(self, url: str, dest: IO[bytes], progress: Progress | None = None) -> None:
        """Write the body at `url` to `dest`, or raise FetchError."""


def check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise FetchError(f"refusing to fetch {url!r}: only http and https are supported",
                         url=url)


class _SameSchemesRedirect(urllib.request.HTTPRedirectHandler):
    # Mirrors redirect (deb.debian.org -> a CDN); that is fine because every
    # byte is verified, but a redirect must not leave http(s) (file://, ftp://).
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: Any, newurl: str) -> urllib.request.Request | None:
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def http_fetch(url: str, dest: IO[bytes], progress: Progress | None = None) -> None:
    """Fetch `url` into `dest` with urllib (honouring http_proxy/https_proxy
    from the environment, as urllib does)."""
    check_url(url)
    opener = urllib.request.build_opener(_SameSchemesRedirect())
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    log.debug("GET %s", url)
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            if progress:
                progress(0, total)
            while chunk := response.read(CHUNK):
                dest.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}", url=url, status=e.code,
                         transient=e.code >= 500 or e.code in (408, 429)) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(f"{url}: {reason}", url=url, transient=True,
                         hint="check the network, the mirror and http_proxy") from None
    if total and done != total:
        raise FetchError(f"{url}: connection closed after {done} of {total} bytes",
                         url=url, transient=True)
