"""bench.golden's client behind a shaped link: a network namespace,
a veth pair, tc's token bucket on both ends, and a capture across it; and
nothing of it left behind.  (Its choice of addresses: tests/unit/
test_bench_golden.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench import capture as bc
from bench import golden
from imageserver.store import ImageStore


def small_tree(dest: Path, cache: Path) -> str:
    (dest / "etc").mkdir(parents=True, exist_ok=True)
    (dest / "etc/hostname").write_text("golden\n")
    (dest / "blob").write_bytes(os.urandom(1 << 20))
    return "a small tree"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def bench_links() -> tuple[list[str], list[str]]:
    """The benchmark's network namespaces and veth ends on this machine."""
    spaces = [n for n in sh("ip", "netns", "list").split() if n.startswith("sysclone-bench-")]
    ends = [link["ifname"] for link in json.loads(sh("ip", "-j", "link"))
            if link["ifname"].startswith("scb")]
    return spaces, ends


def test_a_capture_across_a_shaped_link(tmp_path: Path, root_only: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(golden, "realistic_tree", small_tree)
    before = bench_links()
    with golden.golden_over_ssh(tmp_path / "work", tmp_path / "cache") as g, \
            golden.over_link(g, "100mbit") as lan:
        assert lan.link == "100mbit" and lan.source.host != g.source.host
        spaces, ends = bench_links()
        (ns,) = set(spaces) - set(before[0])
        (here,) = set(ends) - set(before[1])
        # Shaped both ways: the server's end here, the client's in its namespace.
        assert "tbf" in sh("tc", "qdisc", "show", "dev", here)
        assert "rate 100Mbit" in sh("tc", "qdisc", "show", "dev", here)
        there = json.loads(sh("ip", "-n", ns, "-j", "link"))
        (peer,) = [link["ifname"] for link in there if link["ifname"].startswith("scb")]
        assert "rate 100Mbit" in sh("tc", "-n", ns, "qdisc", "show", "dev", peer)
        # The client answers only there, and a capture across it is whole.
        assert lan.source.host in sh("ip", "-n", ns, "-4", "addr", "show", "dev", peer)
        bc._capture(lan, "linked", g.state)
        tree = ImageStore(g.state).path("linked")
        assert (tree / "data/blob").read_bytes() == (g.data / "blob").read_bytes()
        facts = json.loads((ImageStore(g.state).versions.version_dir("linked", 1)
                            / "facts.json").read_text())
        assert facts["hostname"]["rc"] == 0  # read beside the pull, over the link
        bc._plain_rsync(lan, tmp_path / "plain")
        assert (tmp_path / "plain/blob").read_bytes() == (g.data / "blob").read_bytes()
    assert bench_links() == before
