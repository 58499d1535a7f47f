"""agent.main.START_IMPORTS names what `run` imports before the ready
marker: the boot environment build keeps exactly those (and what they
import) in the archive the kernel unpacks (bootenv.freeze.START_SCAN).  An
import added to that path and not to the list would only be slower, never
wrong -- this keeps the list honest anyway."""

from __future__ import annotations

import ast
from pathlib import Path

from agent import main as agent_main

# main()'s imports for the other commands, never on the install's path.
NOT_RUN = {"argparse", "agent.phases"}


def _imports_in(fn: ast.FunctionDef) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_start_imports_are_what_run_imports_before_the_ready_marker() -> None:
    tree = ast.parse(Path(agent_main.__file__).read_text())
    fns = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    run_path = (_imports_in(fns["main"]) | _imports_in(fns["_setup_logging"])) - NOT_RUN
    assert run_path == set(agent_main.START_IMPORTS)
