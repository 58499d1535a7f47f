"""The exception hierarchy shared by the host tools and the agent.

Every error carries a one-line message and an optional hint, and serializes
to a dict so the agent can report it to the monitor as data.
"""

from __future__ import annotations

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SyscloneError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = fields

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            data["hint"] = self.hint
        data.update({k: v for k, v in self.fields.items() if v is not None})
        return data


class ConfigError(SyscloneError):
    """Bad input: a file, a parameter or an option that does not make sense."""


class CommandError(SyscloneError):
    """An external command failed."""

    def __init__(self, argv: list[str], returncode: int, stdout: str = "",
                 stderr: str = "") -> None:
        tail = (stderr or stdout).strip().splitlines()[-5:]
        detail = ("; ".join(tail)) if tail else "no output"
        super().__init__(
            f"command {argv[0]!r} failed with exit code {returncode}: {detail}",
            argv=argv,
            returncode=returncode,
        )
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
