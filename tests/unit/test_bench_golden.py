"""bench.golden's link to the golden client: the addresses it takes."""

from __future__ import annotations

import json

import pytest

from bench import golden


def test_the_link_takes_a_network_no_route_covers(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's own network was TEST-NET-1: the link takes the first
    candidate that no route (of any table) overlaps."""
    routes = [{"dst": "default"}, {"dst": "10.254.0.0/16"}, {"dst": "172.31.254.2"},
              {"dst": "127.0.0.0/8"}]
    monkeypatch.setattr(golden, "output", lambda argv: json.dumps(routes))
    assert golden._free_link_net() == ("192.168.254.1", "192.168.254.2", 30)
    routes.append({"dst": "192.168.0.0/16"})
    routes.append({"dst": "100.64.0.0/10"})
    with pytest.raises(RuntimeError, match="is routed on this machine"):
        golden._free_link_net()
