"""Every install parameter `sysclone params` documents is acted on by the
agent, or refused when set: never parsed and then silently ignored.

CONSUMERS says where the agent reads each parameter it acts on; the test
walks the whole table, so a new parameter must be added here (and be read
there) or carry `refused=` in agent/params/table.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.params import (
    PARAMS,
    Kind,
    Source,
    dhcp_layer,
    param,
    parse_cmdline,
    parse_local_cfg,
    render_docs,
    resolve,
    server_layer,
)
from sysclone.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

CONSUMERS: dict[str, str] = {
    "si.image-server": "agent/flow.py",  # find_server
    "si.image-name": "agent/flow.py",  # fetch_instructions
    "si.disks-layout": "agent/flow.py",
    "si.script-name": "agent/flow.py",  # fetch_instructions -> imageserver.clientfiles
    "si.network-config": "agent/flow.py",  # fetch_instructions -> the configure phase
    "si.dl-protocol": "agent/params/resolve.py",  # require_supported_protocol: rsync only
    "si.rsync-port": "agent/flow.py",
    "si.server-port": "agent/params/resolve.py",  # InstallParams.api_port
    "si.disk": "agent/flow.py",
    "si.dry-run": "agent/flow.py",
    "si.luks-key": "agent/flow.py",  # validate_plan -> _luks_keys
    "si.luks-unlock": "agent/flow.py",  # configure_system -> agent.configure.crypttab
    "si.hostname": "agent/flow.py",
    "si.domainname": "agent/flow.py",
    "si.install-iface": "agent/flow.py",
    "si.ip-address": "agent/params/static.py",
    "si.netmask": "agent/params/static.py",
    "si.network-address": "agent/params/static.py",
    "si.broadcast": "agent/params/static.py",
    "si.gateway": "agent/params/static.py",
    "si.gateway-iface": "agent/params/static.py",
    "si.dns-servers": "agent/flow.py",
    "si.ether-sleep": "agent/flow.py",
    "si.monitor-server": "agent/flow.py",
    "si.monitor-port": "agent/flow.py",
    "si.log-server": "agent/session.py",  # -> agent.logsetup
    "si.log-server-port": "agent/session.py",
    "si.skip-local-cfg": "agent/params/resolve.py",  # local_cfg_skipped
    "si.post-action": "agent/flow.py",
    "si.initrd": "agent/flow.py",  # the initrd phase -> agent.configure.initrdpolicy
    "si.term": "agent/session.py",  # -> agent.logsetup
    "si.selinux-relabel": "agent/flow.py",  # configure_system -> agent.configure.selinux
    "si.debug": "agent/session.py",  # and agent/main.py for the kernel command line
    "si.break": "agent/session.py",
}

PENDING: dict[str, str] = {}


def test_every_parameter_is_acted_on_or_refused() -> None:
    for p in PARAMS:
        consumed = p.name in CONSUMERS
        refused = p.refused is not None
        assert consumed != refused, (
            f"{p.name} must be read by the agent (list it in CONSUMERS) or carry "
            "refused= in the table" if not consumed else f"{p.name} is both read and refused")
    assert set(CONSUMERS) <= {p.name for p in PARAMS}


def _reads(source: str, name: str) -> bool:
    """Whether source code reads the parameter: its InstallParams field as
    an attribute, or its name in quotes (layer.value("si.skip-local-cfg"))."""
    field = param(name).field
    return bool(re.search(rf"\.{field}\b", source)) or f'"{name}"' in source


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=PENDING[n], strict=True)) if n in PENDING
    else n for n in CONSUMERS])
def test_the_consumer_reads_the_parameter(name: str) -> None:
    source = (REPO / CONSUMERS[name]).read_text()
    assert _reads(source, name), f"{CONSUMERS[name]} does not read {name}"


def test_the_selinux_helper_is_ready() -> None:
    """What configure_system will call for si.selinux-relabel."""
    from agent.configure.selinux import relabel_on_first_boot

    assert callable(relabel_on_first_boot)


# -- refused parameters ----------------------------------------------------------------------

REFUSED = [p for p in PARAMS if p.refused is not None]
SAMPLES = {Kind.BOOL: "yes", Kind.NAME: "web", Kind.TEXT: "x", Kind.URL: "http://h/keys",
           Kind.PORT: "9000"}


def test_the_refused_ones() -> None:
    assert sorted(p.name for p in REFUSED) == [
        "si.config", "si.flamethrower-directory-portbase", "si.monitor-console",
        "si.ssh-client", "si.ssh-download-url", "si.ssh-server", "si.ssh-user",
        "si.tmpfs-staging"]


@pytest.mark.parametrize("p", REFUSED, ids=lambda p: p.name)
def test_refused_when_set_on_the_command_line(p) -> None:
    resolved = resolve([parse_cmdline(f"{p.name}={SAMPLES[p.kind]}")])
    with pytest.raises(ConfigError) as e:
        resolved.require_supported()
    assert e.value.message.startswith(f"{p.name}: ")
    assert "is not supported by sysclone yet: " + p.refused in e.value.message
    assert e.value.message.endswith("(kernel command line)")
    assert e.value.fields["parameter"] == p.name
    assert "sysclone params" in (e.value.hint or "")


@pytest.mark.parametrize("p", [p for p in REFUSED if p.kind is Kind.BOOL], ids=lambda p: p.name)
def test_a_refused_switch_turned_off_asks_for_nothing(p) -> None:
    resolve([parse_cmdline(f"{p.name}=no")]).require_supported()


def test_refused_under_a_legacy_name_from_local_cfg() -> None:
    resolved = resolve([parse_local_cfg("SSH_USER=root\nMONITOR_CONSOLE=yes\n",
                                        name="local.cfg at /local.cfg")])
    with pytest.raises(ConfigError) as e:
        resolved.require_supported()
    # The table's order: si.monitor-console comes first.
    assert e.value.message == (
        "MONITOR_CONSOLE (si.monitor-console): 'yes' is not supported by sysclone yet: the "
        "monitor receives the agent's phases, progress and errors, not its console "
        "(local.cfg at /local.cfg, line 2 (as MONITOR_CONSOLE))")


def test_refused_from_dhcp_and_from_the_server() -> None:
    with pytest.raises(ConfigError) as e:
        resolve([dhcp_layer({144: "y"})]).require_supported()
    assert re.match(r"si\.tmpfs-staging: 'yes' .*\(DHCP, option 144\)$", e.value.message)
    with pytest.raises(ConfigError) as e:
        resolve([server_layer({"si.config": "site.conf"})]).require_supported()
    assert re.match(r"si\.config: 'site\.conf' .*\(server config\)$", e.value.message)


def test_an_ssh_url_is_refused_by_its_own_name_even_with_rsync() -> None:
    """Before, si.dl-protocol=rsync made the URL silently pointless."""
    resolved = resolve([parse_cmdline("si.dl-protocol=rsync SSH_DOWNLOAD_URL=http://h/k")])
    with pytest.raises(ConfigError, match=r"^SSH_DOWNLOAD_URL \(si\.ssh-download-url\): "):
        resolved.require_supported()


def test_a_protocol_sysclone_lacks_is_still_refused() -> None:
    with pytest.raises(ConfigError, match=r"si\.dl-protocol: 'nfs' is not implemented"):
        resolve([parse_cmdline("si.dl-protocol=nfs")]).require_supported()


def test_defaults_ask_for_nothing() -> None:
    resolved = resolve([])
    resolved.require_supported()
    assert all(s.source is Source.DEFAULT for found in resolved.effective.values()
               for s in found)


# -- documentation ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_the_docs_say_what_happens_to_each(fmt: str) -> None:
    text = " ".join(render_docs(fmt).split())  # unwrapped
    for p in REFUSED:
        assert f"{' '.join(p.help.split())} Not supported by sysclone yet: the install stops " \
               "with an error when it is set" in text, p.name
    assert text.count("Not supported by sysclone yet") == len(REFUSED)
    assert "si.dns-servers" in text
