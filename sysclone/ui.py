"""Console output of the host commands: named steps, progress, one-line errors.

On a terminal, long steps show a rich progress bar or a spinner with the
latest line of the tool underneath; in a log (CI, a pipe) the same steps
are plain lines, so the output stays readable either way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Ui:
    out: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def tty(self) -> bool:
        return self.out.isatty()

    def info(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        """A named step; yields a function that shows the tool's latest line."""
        t0 = time.monotonic()
        self.info(f"==> {title}")
        if self.tty and not self.quiet:
            from rich.console import Console

            console = Console(file=self.out)
            with console.status(title) as status:
                def update(line: str) -> None:
                    status.update(f"{title}: [dim]{line.strip()[:100]}[/dim]")
                yield update
        else:
            yield lambda line: None
        dt = time.monotonic() - t0
        self.timings.append((title, dt))
        self.info(f"    done in {dt:.1f}s")

    @contextmanager
    def progress(self, title: str, total: int | None) -> Iterator[Callable[[int, int], None]]:
        """A byte-count progress bar; yields update(done, total)."""
        if self.tty and not self.quiet:
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            with Progress("{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), console=None, transient=True) as p:
                task = p.add_task(title, total=total)

                def update(done: int, tot: int) -> None:
                    p.update(task, completed=done, total=tot or None)
                yield update
        else:
            last = [0.0]

            def update(done: int, tot: int) -> None:
                now = time.monotonic()
                if now - last[0] >= 5 or (tot and done >= tot):
                    last[0] = now
                    pct = f" ({100 * done // tot}%)" if tot else ""
                    self.info(f"    {title}: {done / 2**20:,.1f} MiB{pct}")
            yield update


def print_table(rows: list[dict[str, Any]], columns: list[str], out: TextIO | None = None
                ) -> None:
    out = out or sys.stdout  # at call time, so redirections (and tests) see the table
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns), file=out)
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns), file=out)
