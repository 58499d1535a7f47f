"""Checking an archive's InRelease signature with gpgv, the way apt does.

gpgv exits non-zero as soon as *one* signature cannot be checked, and Debian
signs each InRelease with several keys (the current and next release's
archive keys, the release team's key), so a keyring holding only one of them
fails by exit code although the file is fine.  Like apt we read gpgv's
machine-readable status instead and accept the file when at least one
signature is good, made with a strong digest, by a key we were told to trust
— and none is bad.  The plaintext we go on to parse is what gpgv says was
signed, never our own reading of the armored file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sysclone.errors import ConfigError, SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

_STATUS = "[GNUPG:] "
# OpenPGP hash algorithm ids too weak to trust (MD5, SHA-1, RIPEMD-160).
_WEAK_DIGESTS = frozenset({"1", "2", "3"})
_ARMOR_RE = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----\s*?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S
)


class SignatureError(SyscloneError):
    """A signed file could not be verified."""


@dataclass
class _Signature:
    good: bool = False
    valid_fingerprints: tuple[str, ...] = ()
    digest: str = ""
    problems: list[str] = field(default_factory=list)


def dearmor(text: str) -> bytes:
    """The binary OpenPGP packets of every ASCII-armored key block in `text`
    (gpgv reads only binary keyrings; .asc files and inline Signed-By keys
    are armored)."""
    packets = b""
    blocks = _ARMOR_RE.findall(text)
    if not blocks:
        raise ValueError("no 'BEGIN PGP PUBLIC KEY BLOCK' found")
    for block in blocks:
        lines = [line.strip() for line in block.splitlines()]
        # Armor headers (Comment:, Version:) end at the first empty line.
        if lines and ":" in lines[0]:
            lines = lines[lines.index(""):] if "" in lines else []
        body = [line for line in lines if line and not line.startswith("=")]
        try:
            packets += base64.b64decode("".join(body), validate=True)
        except binascii.Error as e:
            raise ValueError(f"bad base64 in key block: {e}") from None
    return packets


def binary_keyrings(
    keyrings: Sequence[Path], inline_keys: Sequence[str], workdir: Path
) -> list[Path]:
    """Paths gpgv can read: binary keyrings as they are, armored ones and
    inline keys converted into `workdir` (named by content, so re-runs reuse
    them)."""
    out: list[Path] = []
    armored: list[tuple[str, str]] = [(text, "inline Signed-By key") for text in inline_keys]
    for path in keyrings:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"keyring {path}: cannot read it: {e.strerror}",
                              hint="install debian-archive-keyring or fix Signed-By") from None
        if data.lstrip().startswith(b"-----BEGIN PGP"):
            armored.append((data.decode("ascii", "replace"), str(path)))
        else:
            out.append(path)
    for text, what in armored:
        try:
            packets = dearmor(text)
        except ValueError as e:
            raise ConfigError(f"{what}: not a usable OpenPGP key: {e}") from None
        dest = workdir / f"{hashlib.sha256(packets).hexdigest()}.gpg"
        if not dest.exists():
            workdir.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(packets)
            tmp.replace(dest)
        out.append(dest)
    return out


def _parse_status(status: str) -> list[_Signature]:
    sigs: list[_Signature] = []
    for line in status.splitlines():
        if not line.startswith(_STATUS):
            continue
        keyword, *args = line[len(_STATUS):].split()
        if keyword == "NEWSIG" or not sigs:
            sigs.append(_Signature())
            if keyword == "NEWSIG":
                continue
        sig = sigs[-1]
        if keyword == "GOODSIG":
            sig.good = True
        elif keyword == "VALIDSIG" and len(args) >= 9:
            # VALIDSIG <fpr> <date> <ts> <expire> <version> <rsvd> <pk-algo>
            #          <hash-algo> <class> [<primary-fpr>]
            sig.valid_fingerprints = tuple(a.upper() for a in (args[0], *args[9:10]))
            sig.digest = args[7]
        elif keyword in ("BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG", "NO_PUBKEY"):
            sig.problems.append(f"{keyword} {args[0] if args else ''}".strip())
    return sigs


def check_status(status: str, fingerprints: Sequence[str] = ()) -> list[str]:
    """Judge gpgv's status output; return the fingerprints of the good
    signatures or raise SignatureError saying why none counts."""
    wanted = {f.upper() for f in fingerprints}
    sigs = _parse_status(status)
    bad = [p for s in sigs for p in s.problems if p.startswith("BADSIG")]
    if bad:
        raise SignatureError(f"bad signature ({', '.join(bad)})")
    good: list[str] = []
    reasons: list[str] = []
    for sig in sigs:
        # gpg reports exactly one of GOODSIG/EXPSIG/EXPKEYSIG/REVKEYSIG/
        # BADSIG/ERRSIG per signature: only GOODSIG (with its VALIDSIG) counts.
        if not (sig.good and sig.valid_fingerprints):
            reasons += sig.problems or ["incomplete signature status"]
            continue
        if sig.digest in _WEAK_DIGESTS:
            reasons.append(f"weak digest algorithm {sig.digest} by {sig.valid_fingerprints[0]}")
            continue
        if wanted and not any(f.endswith(w) for f in sig.valid_fingerprints for w in wanted):
            reasons.append(f"signed by {sig.valid_fingerprints[0]}, not one of the Signed-By keys")
            continue
        good.append(sig.valid_fingerprints[0])
    if not good:
        raise SignatureError(
            "no good signature from a trusted key"
            + (f" ({'; '.join(reasons)})" if reasons else " (not signed)")
        )
    return good


def _check_clearsigned_shape(data: bytes, what: str) -> None:
    # apt refuses clearsigned files with anything before the header or after
    # the signature: text there is not covered by the signature but a lax
    # reader might still take it in.
    text = data.decode("utf-8", "replace")
    ok = (
        text.startswith("-----BEGIN PGP SIGNED MESSAGE-----\n")
        and text.count("-----BEGIN PGP SIGNED MESSAGE-----") == 1
        and text.count("-----BEGIN PGP SIGNATURE-----") == 1
        and text.rstrip().endswith("-----END PGP SIGNATURE-----")
    )
    if not ok:
        raise SignatureError(f"{what}: not a single clearsigned message")


def verify_clearsigned(
    path: Path, keyrings: Sequence[Path], *, fingerprints: Sequence[str] = (), what: str = ""
) -> str:
    """Verify a clearsigned file with gpgv and return its signed text.
    `keyrings` must be binary (see binary_keyrings)."""
    what = what or str(path)
    _check_clearsigned_shape(path.read_bytes(), what)
    if not keyrings:
        raise ConfigError(f"{what}: no keyring to verify it with",
                          hint="install debian-archive-keyring or set Signed-By")
    argv: list[str | Path] = ["gpgv", "--status-fd", "2", "--output", "-"]
    for keyring in keyrings:
        argv += ["--keyring", keyring]
    argv.append(path)
    result = run(argv, check=False)
    try:
        signers = check_status(result.stderr, fingerprints)
    except SignatureError as e:
        raise SignatureError(f"{what}: {e.message}",
                             hint=f"keyrings: {', '.join(map(str, keyrings))}") from None
    log.debug("%s: good signature(s) by %s", what, ", ".join(signers))
    return result.stdout
