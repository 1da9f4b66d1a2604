"""HAProxy's per-address limits (docs/operations.md#per-address-limits) on real stacks with real clients, each with
its control: honest clients from one address never meet the shipped defaults, floods from one address do, and
behind a trusted proxy the count follows X-Forwarded-For (from that proxy only). The scenarios are those of
scenarios_limits.py, with which bench/measure_limits.py measured what the defaults were chosen from. Source
addresses are loopback ones (127.0.0.0/8 is all local on Linux); 10.x addresses appear only as header text."""

import json
import re
import socket
import subprocess
import sys

import pytest
from native_stack import ROOT
from ruamel.yaml import YAML
from scenarios_limits import (
    OLD_RULE,
    frontend_stats,
    key,
    node_available,
    raw_get,
    scenario_flood,
    scenario_polling_clients,
    scenario_reconnect_after_kill,
    session_from,
    shipped_default,
    table,
)

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
needs_node = pytest.mark.skipif(not node_available(), reason="needs node and `npm ci` (scripts/test does both)")


# --- honest clients from one address -------------------------------------------------------------------------------
@needs_node
def test_200_node_polling_clients_from_one_address_echo_for_a_minute_without_a_429(own_stack):
    result = scenario_polling_clients(own_stack(replicas=2), clients=200, duration_s=60, echo_every_ms=500)
    print(result)
    node, counted = result["node"], result["haproxy"]
    assert counted["denied_429"] == 0 and node["statuses"] == {}, result
    assert node["connectedOnce"] == node["connects"] == 200, node
    assert node["disconnects"] == 0 and node["echoFailures"] == 0 and node["errors"] == {}, node
    assert node["echoes"] > 200 * 60, node  # about two a second each; half of that is plenty
    # not vacuous: these clients made far more TCP connections than the old rule's 500 per 10 s
    assert counted["per_address"][key("127.0.0.1")]["connects_per_10s"] > 5 * 500, counted


@needs_node
def test_control_the_old_rule_refuses_the_same_clients(own_stack):
    """HAProxy's rule before: 500 TCP connections per 10 s per address, no session limit."""
    result = scenario_polling_clients(own_stack(replicas=2, **OLD_RULE), clients=200, duration_s=15, echo_every_ms=500)
    print(result)
    node = result["node"]
    assert result["haproxy"]["denied_429"] > 0 and node["statuses"].get("429"), result
    assert node["disconnects"] + node["echoFailures"] > 0, node


@needs_node
def test_200_clients_of_a_killed_instance_reconnect_at_once_without_a_429(own_stack):
    result = scenario_reconnect_after_kill(own_stack(replicas=2), clients=200)
    print(result)
    node, counted = result["node"], result["haproxy"]
    assert counted["denied_429"] == 0 and node["statuses"].get("429") is None, result
    assert node["connectedOnce"] == 200 and result["reconnected"] == 200, result
    assert result["reconnect_max_s"] < 20, result  # generous: the shared machine; the figure goes to the docs
    # not vacuous: HAProxy counted the reconnects as new sessions from this address
    assert counted["per_address"][key("127.0.0.1")]["sessions_per_10s"] >= 150, counted


@needs_node
def test_control_a_session_limit_below_the_reconnect_storm_refuses_it(own_stack):
    """The same storm against a limit of 160 new sessions per 10 s (the first connects spread over 20 s stay
    under it): HAProxy refuses part of it."""
    stack = own_stack(replicas=2, HAPROXY_PER_IP_SESSION_RATE=160)
    result = scenario_reconnect_after_kill(stack, clients=200, ramp_s=20, after_s=10)
    print(result)
    assert result["haproxy"]["denied_429"] > 0 and result["node"]["statuses"].get("429"), result


# --- floods from one address -----------------------------------------------------------------------------------------
def test_handshake_flood_gets_429s_and_a_bystander_on_another_address_keeps_echoing(own_stack):
    stack = own_stack(replicas=1)
    limit = shipped_default("HAPROXY_PER_IP_SESSION_RATE")
    result = scenario_flood(stack, total=20000, max_s=3)
    print(result)
    flood = result["flood"]
    assert flood["first_429_s"] is not None and flood["statuses"].get("429", 0) > flood["requests"] / 2, flood
    # per 10 s window: the limit, plus what HAProxy's sliding estimate lets through as the window moves on
    assert flood["statuses"].get("200", 0) <= 2 * limit, flood
    assert result["bystander_before"]["echoes"] > 10 and result["bystander_during"]["echoes"] > 10, result
    assert result["bystander_before"]["failed"] == result["bystander_during"]["failed"] == 0, result
    assert result["bystander_disconnects"] == 0, result


def test_control_without_the_session_limit_the_flood_is_not_refused(own_stack):
    stack = own_stack(replicas=1, HAPROXY_PER_IP_SESSION_RATE=100000000)
    result = scenario_flood(stack, total=1500, max_s=3)  # bounded: each handshake is a session on the instance
    print(result)
    assert result["flood"]["statuses"] == {"200": result["flood"]["requests"]}, result


def open_connections(url, count, source):
    """`count` keep-alive connections from `source`, opened one after another, each kept open after its request
    is answered; their status codes (HAProxy checks the limits when it reads a request)."""
    host, port = url.removeprefix("http://").split(":")
    sockets, codes = [], []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        codes.append(int(sock.recv(4096).split(b" ", 2)[1]))
        sockets.append(sock)
    return sockets, codes


def test_connection_flood_from_one_address_is_cut_at_the_default_and_others_are_not(own_stack):
    url = own_stack(replicas=1).status()["url"]
    limit = shipped_default("HAPROXY_PER_IP_CONN_CUR")
    sockets, codes = open_connections(url, limit + 30, "127.0.0.2")
    try:
        assert codes == [200] * limit + [429] * 30, [c for c in codes if c != 200][:5]
        assert raw_get(url, "/healthz", "127.0.0.3") == 200  # another address: not counted with them
    finally:
        for sock in sockets:
            sock.close()
    # control: closed, they no longer count
    assert all(code == 200 for code in open_connections(url, 30, "127.0.0.2")[1])


# --- trusted proxies ----------------------------------------------------------------------------------------------
def handshakes(url, source, forwarded_for, count):
    return [raw_get(url, HANDSHAKE, source, [f"X-Forwarded-For: {value}"]) for value in forwarded_for(count)]


def test_trusted_proxy_counts_per_forwarded_address_and_forged_headers_do_not_move_the_count(own_stack):
    stack = own_stack(
        replicas=1, HAPROXY_TRUSTED_PROXIES="127.0.0.4", HAPROXY_PER_IP_SESSION_RATE=20, HAPROXY_PER_IP_CONN_CUR=20
    )
    url = stack.status()["url"]

    def same(value):
        return lambda count: [value] * count

    # through the trusted proxy: one forwarded client floods, another one is not limited
    assert handshakes(url, "127.0.0.4", same("10.9.9.9"), 30) == [200] * 20 + [429] * 10
    assert handshakes(url, "127.0.0.4", same("10.9.9.8"), 10) == [200] * 10
    # the client's own (forged) hops come first, the proxy appends what it saw: the last one counts
    assert handshakes(url, "127.0.0.4", same("10.9.9.9, 10.9.9.7"), 10) == [200] * 10
    # control: the same kind of headers from an address not listed (127.0.0.5), a new value every time, are
    # counted under 127.0.0.5 itself
    forged = handshakes(url, "127.0.0.5", lambda count: [f"10.7.0.{i}" for i in range(count)], 30)
    assert forged == [200] * 20 + [429] * 10
    # one keep-alive connection of the proxy carrying requests of two clients: each counted for its own
    proxy = session_from("127.0.0.4")
    for client in ("10.6.0.1", "10.6.0.2", "10.6.0.1"):
        assert proxy.get(url + HANDSHAKE, headers={"X-Forwarded-For": client}, timeout=5).status_code == 200
    counted = table(stack, "per_address_sessions")
    for address in ("10.9.9.9", "10.9.9.8", "10.9.9.7", "127.0.0.5", "10.6.0.1", "10.6.0.2"):
        assert key(address) in counted, (address, counted)
    assert 20 < counted[key("10.9.9.9")]["http_req_rate"] <= 30, counted  # not the ten with 10.9.9.7 last
    assert key("127.0.0.4") not in counted and not any("10.7.0." in k for k in counted), counted

    # open connections: the proxy's own are not counted (each of its clients' requests is, while in flight)
    sockets, codes = open_connections(url, 30, "127.0.0.4")
    for sock in sockets:
        sock.close()
    assert codes == [200] * 30
    sockets, codes = open_connections(url, 30, "127.0.0.5")  # control: an address not listed
    for sock in sockets:
        sock.close()
    assert codes == [200] * 20 + [429] * 10
    assert frontend_stats(stack)["dreq"] == 10 + 10 + 10  # every 429 above, and no other


def test_trusted_proxies_setting_is_off_by_default(own_stack):
    """Without HAPROXY_TRUSTED_PROXIES, X-Forwarded-For is never used: everything counts under the peer."""
    stack = own_stack(replicas=1, HAPROXY_PER_IP_SESSION_RATE=20)
    url = stack.status()["url"]
    codes = handshakes(url, "127.0.0.4", lambda count: [f"10.9.8.{i}" for i in range(count)], 30)
    assert codes == [200] * 20 + [429] * 10
    assert set(table(stack, "per_address_sessions")) == {key("127.0.0.4")}


# --- what passes the settings, and what says which limit was met --------------------------------------------------
def test_compose_and_swarm_pass_every_per_address_setting_from_dotenv():
    settings = set(re.findall(r"HAPROXY_(?:PER_IP_\w+|TRUSTED_PROXIES)", (ROOT / "haproxy/haproxy.cfg").read_text()))
    assert settings == {
        "HAPROXY_PER_IP_SESSION_RATE",
        "HAPROXY_PER_IP_CONN_CUR",
        "HAPROXY_PER_IP_CONN_RATE",
        "HAPROXY_TRUSTED_PROXIES",
    }
    for path in ("docker-compose.yml", "deploy/swarm/docker-stack.yml"):
        haproxy = YAML(typ="safe").load((ROOT / path).read_text())["services"]["haproxy"]
        # every line of .env reaches HAProxy (test_settings_reach.py resolves it with compose itself), and the
        # file fixes none of them: unset, each falls back to haproxy.cfg's default
        assert haproxy["env_file"] in (".env", "../../.env"), path
        assert not settings & set(haproxy["environment"]), path


def run_loadtest(url, clients):
    argv = [sys.executable, "scripts/loadtest.py", "--url", url, "--clients", str(clients), "--duration", "3"]
    proc = subprocess.run([*argv, "--timeout", "5", "--quiet"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return json.loads(proc.stdout)


def test_loadtest_names_the_limit_it_met_and_why(own_stack, stack):
    limited = own_stack(replicas=1, HAPROXY_PER_IP_SESSION_RATE=5)
    summary = run_loadtest(limited.status()["url"], clients=12)
    print(summary)
    assert summary["failed"] > 0 and len(summary["notes"]) == 1, summary
    assert "HAPROXY_PER_IP_SESSION_RATE" in summary["notes"][0] and "one address" in summary["notes"][0]
    # control: the same run against the shipped defaults meets no limit and says nothing
    summary = run_loadtest(stack.status()["url"], clients=12)
    assert summary["failed"] == 0 and "notes" not in summary, summary
