"""Where a capture reads from: `--from SOURCE`, checked where it enters.

    [ssh://][user@]host[:port]          agentless: sshd and rsync on the client
    rsync://[user@]host[:port]/module   a `sysclone client prepare` export
    /path/to/tree (anything with a /)   a local directory: a mounted disk, an
                                        old /var/lib/systemimager/images/X

Host names, users, ports, modules and SSH options end up on command lines
(ssh's and rsync's -e), so each is held to a strict pattern: nothing can
start with '-', carry a quote, a space or a line break.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from imageserver.prepare.golden import DEFAULT_MODULE, DEFAULT_PORT, USER
from sysclone.errors import ConfigError

_HOSTNAME = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_MODULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
_SSH_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*=[^\s'\"\\]+\Z")
_SAFE_ARG = re.compile(r"^[^\s'\"\\]+\Z")
# rsync's and scp's [user@]host:path, which sysclone does not take: a ':'
# before any '/' (a local path with a ':' in its first part reads the same
# way to rsync, so it is taken as such only when it is no directory here).
_HOST_PATH = re.compile(r"^(?:[^/@:]+@)?(?:\[[^/\]]+\]|[^/:\[\]]+):")

# Ours come after the user's --ssh-option: ssh keeps the first value it is
# given for an option, so the user's win.
SSH_DEFAULTS = (
    "BatchMode=yes",  # never wait at a password prompt nobody sees
    "ConnectTimeout=20",
    "ServerAliveInterval=15", "ServerAliveCountMax=4",  # a lost network ends the capture
    "StrictHostKeyChecking=accept-new",
    "Compression=no",
    "LogLevel=ERROR",
)


def check_host(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ConfigError(f"host {host!r} is not a host name or an IP address")
    return host


def check_port(text: str | int) -> int:
    s = str(text)
    if not s.isascii() or not s.isdigit() or not 0 < int(s) < 65536:
        raise ConfigError(f"port {s!r} is not a TCP port (1-65535)")
    return int(s)


def check_user(user: str) -> str:
    if not _USER.match(user):
        raise ConfigError(f"user name {user!r} is not valid")
    return user


def check_ssh_option(opt: str) -> str:
    if not _SSH_OPTION.match(opt):
        raise ConfigError(f"SSH option {opt!r} is not Key=Value",
                          hint="as ssh -o takes it, e.g. Port=2222 or "
                               "StrictHostKeyChecking=no; no quotes")
    return opt


def _arg(text: str, what: str) -> str:
    if not _SAFE_ARG.match(text):
        raise ConfigError(f"{what} {text!r} has spaces, quotes or backslashes",
                          hint="rename it or use a symlink without them")
    return text


def _split_host_port(text: str) -> tuple[str, int | None]:
    """host, host:port, [v6], [v6]:port or a bare IPv6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{text!r}: expected [address]:port")
        return check_host(host), check_port(rest[1:]) if rest else None
    if text.count(":") > 1:
        return check_host(text), None
    host, colon, port = text.partition(":")
    return check_host(host), check_port(port) if colon else None


@dataclass(frozen=True)
class SshSource:
    host: str
    user: str = "root"
    port: int | None = None
    key: Path | None = None
    options: tuple[str, ...] = ()
    rsync_path: str | None = None  # the client's rsync ("sudo rsync")
    # One SSH connection for the fact probe and rsync (ssh's multiplexing):
    # the socket of the master connection, when a capture has one.
    control_path: str | None = None

    @property
    def kind(self) -> str:
        return "ssh"

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + (f":{self.port}" if self.port else "")

    def ssh_argv(self, *, master: bool = False) -> list[str]:
        """ssh's command line; `master`: this connection stays up (two minutes
        idle at most) for the next ones to reuse."""
        argv = ["ssh", "-x", "-T"]
        shared: tuple[str, ...] = ()
        if self.control_path:
            shared = (f"ControlPath={self.control_path}",
                      *(("ControlMaster=yes", "ControlPersist=120") if master
                        else ("ControlMaster=no",)))
        for o in (*self.options, *SSH_DEFAULTS, *shared):
            argv += ["-o", o]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.key:
            argv += ["-i", str(self.key)]
        return [*argv, "-l", self.user]

    def rsync_shell(self) -> str:
        """ssh_argv() as rsync -e takes it (every part checked: no quoting needed)."""
        return " ".join(self.ssh_argv())

    def rsync_root(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:/"


@dataclass(frozen=True)
class DaemonSource:
    host: str
    module: str
    port: int = DEFAULT_PORT
    user: str = USER
    secret_file: Path | None = None

    @property
    def kind(self) -> str:
        return "rsync"

    def describe(self) -> str:
        return self.url(self.module)

    def url(self, module: str, path: str = "") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rsync://{self.user}@{host}:{self.port}/{module}/{path}"

    @property
    def facts_module(self) -> str:
        return f"{self.module}-facts"


@dataclass(frozen=True)
class LocalSource:
    path: Path

    @property
    def kind(self) -> str:
        return "local"

    def describe(self) -> str:
        return str(self.path)


Source = SshSource | DaemonSource | LocalSource


def parse_source(text: str, *, ssh_key: str | None = None, ssh_options: tuple[str, ...] = (),
                 secret_file: str | None = None, rsync_path: str | None = None) -> Source:
    if not text or any(c in text for c in "\n\r\0") or text.startswith("-"):
        raise ConfigError(f"--from {text!r} is not a source",
                          hint="[ssh://][user@]host[:port], rsync://host[:port]/module or "
                               "a directory")
    if rsync_path and (text.startswith("rsync://")
                       or ("/" in text and not text.startswith("ssh://"))):
        # It names the client's rsync as ssh starts it: nothing else runs one.
        raise ConfigError("--rsync-path is for SSH sources, not rsync:// or a directory")
    if text.startswith("rsync://"):
        if ssh_key or ssh_options:
            raise ConfigError("--ssh-key and --ssh-option are for SSH sources, not rsync://")
        rest = text[len("rsync://"):]
        hostpart, _, module = rest.partition("/")
        module = module.rstrip("/") or DEFAULT_MODULE
        if not _MODULE.match(module):
            raise ConfigError(f"rsync module {module!r} is not valid",
                              hint="letters, digits, '.', '_', '+', '-'; no '/'")
        user, at, hostport = hostpart.rpartition("@")
        host, port = _split_host_port(hostport)
        if not secret_file:
            raise ConfigError("an rsync:// source needs --secret-file",
                              hint="the secret `sysclone client prepare` printed on the "
                                   "golden client")
        return DaemonSource(host, module, port or DEFAULT_PORT,
                            check_user(user) if at else USER, Path(secret_file))
    if _HOST_PATH.match(text) and "/" in text and not text.startswith("ssh://") \
            and not Path(text).is_dir():
        raise ConfigError(f"--from {text!r}: sysclone does not take host:path",
                          hint="an SSH source is [ssh://][user@]host[:port] (the whole / is "
                               "captured; --exclude leaves parts out)")
    if "/" in text and not text.startswith("ssh://"):
        if ssh_key or ssh_options or secret_file:
            raise ConfigError("--ssh-key, --ssh-option and --secret-file are not for a "
                              "local directory")
        p = Path(text).absolute()
        if not p.is_dir():
            raise ConfigError(f"{p} is not a directory")
        return LocalSource(p)
    rest = text[len("ssh://"):] if text.startswith("ssh://") else text
    rest = rest.rstrip("/")
    if "/" in rest:
        raise ConfigError(f"--from {text!r}: an SSH source is a host, not a path",
                          hint="the whole of / is captured; use --exclude for parts of it")
    if secret_file:
        raise ConfigError("--secret-file is for rsync:// sources")
    user, at, hostport = rest.rpartition("@")
    host, port = _split_host_port(hostport)
    key = None
    if ssh_key:
        key = Path(_arg(ssh_key, "SSH key path")).absolute()
        if not key.is_file():
            raise ConfigError(f"SSH key {key} not found")
    return SshSource(host, check_user(user) if at else "root", port, key,
                     tuple(check_ssh_option(o) for o in ssh_options),
                     " ".join(_arg(w, "--rsync-path word") for w in rsync_path.split())
                     if rsync_path else None)


def read_secret(path: Path) -> str:
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the secret file {path}: {e}") from None
    if not secret or any(c.isspace() for c in secret):
        raise ConfigError(f"{path} does not hold one secret",
                          hint="the one word `sysclone client prepare` printed")
    return secret
