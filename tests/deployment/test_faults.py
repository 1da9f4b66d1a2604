"""Faults against the real stack, measured by the scenarios of scenarios_faults.py (bench/measure_faults.py runs
them at a larger size for the figures of docs/operations.md). Bounds are generous: the machine is shared, so nothing
here asserts on speed, only on what clients see."""

import pytest
from native_stack import ROOT
from scenarios_faults import (
    reload_config_copy,
    scenario_kill9,
    scenario_redis_at_start,
    scenario_redis_hang,
    scenario_redis_outage,
    scenario_reload,
    scenario_rolling_restart,
)

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = pytest.mark.stack


def test_killed_instance_under_load_recovers_and_nobody_else_notices(own_stack):
    result = scenario_kill9(own_stack(), clients=24, interval=0.2)
    print(result)
    assert result["moved_clients"] > 0
    assert result["marked_down_s"] is not None and result["marked_down_s"] < 5
    assert result["recovered_clients"] == result["moved_clients"]
    assert result["recovery_max_s"] < 15
    assert result["others_disconnects"] == 0
    assert result["others_failed_echoes"] == 0


def test_rolling_restart_drops_no_handshake_and_spreads_the_closes(own_stack):
    drain, spread = 2, 3
    stack = own_stack(replicas=2, DRAIN_SECONDS=drain, CLOSE_SPREAD_SECONDS=spread)
    result = scenario_rolling_restart(stack, clients=16, interval=0.2, handshake_rate=5)
    print(result)
    assert result["handshakes"]["ok"] > 20 and result["handshakes"]["failed"] == 0, result["handshakes"]
    assert result["clients_ok_at_end"] == result["clients"]
    assert result["back_max_s"] < 10
    assert result["slowest_exit_s"] < result["graceful_timeout_s"] - 3
    assert result["graceful_timeout_warnings"] == 0
    for instance in result["instances"]:
        # each client of the instance is moved exactly once: none reconnects to the instance going away
        assert instance["closes"] == instance["clients_on_it"] >= 3, instance
        # nothing closed before HAProxy had time to stop sending new clients, then a spread, not a burst
        assert instance["first_close_s"] >= drain - 0.5, instance
        assert instance["last_close_s"] - instance["first_close_s"] >= spread / 2, instance


def test_control_without_drain_an_instance_cuts_all_its_clients_at_once(own_stack):
    """The same restart with DRAIN_SECONDS=0 and CLOSE_SPREAD_SECONDS=0: every socket closes at SIGTERM, before
    HAProxy has seen the instance go, so clients reconnect to it and are cut a second time when it exits."""
    stack = own_stack(replicas=2, DRAIN_SECONDS=0, CLOSE_SPREAD_SECONDS=0)
    result = scenario_rolling_restart(stack, clients=12, interval=0.2, handshake_rate=2)
    print(result)
    first = result["instances"][0]
    assert first["clients_on_it"] >= 3 and first["first_close_s"] < 0.5, first
    assert first["closes"] > first["clients_on_it"], first


def assert_served_through_the_redis_outage(result):
    """scenario_redis_outage's result: echoes and local rooms kept working, delivery came back, nothing crashed."""
    assert result["baseline_cross_instance"] is True
    assert result["echoes_ok_during"] == "9/9"
    local = result["local_room_delivery_during"].split("/")
    assert local[0] == local[1] and int(local[1]) > 0, result
    assert result["cross_instance_delivered_during"].startswith("0/"), result  # control: Redis really was down
    assert result["resumed_after_s"] is not None and result["resumed_after_s"] < 10
    assert result["instances_alive"]
    assert result["tracebacks_logged"] == 0


def test_redis_outage_keeps_instances_serving_and_delivery_resumes(own_stack):
    result = scenario_redis_outage(own_stack(), clients=9, outage_s=4, emits_during=40)
    print(result)
    assert_served_through_the_redis_outage(result)
    # one line when it breaks, one when it is back, a summary per 10s: not one per emit
    assert 1 <= result["queue_warnings_logged"] <= 20, result


def assert_served_through_the_redis_hang(result):
    """scenario_redis_hang's result: each broadcast's ack (its publish) came within about SOCKET_TIMEOUT, echoes
    and local delivery kept working, nothing crossed instances while Redis hung, delivery came back."""
    from deployment.operations.queue_manager import SOCKET_TIMEOUT

    assert result["baseline_cross_instance"] is True
    assert None not in result["broadcast_acks_s"], result  # every broadcast answered during the hang
    assert result["broadcast_ack_max_s"] < SOCKET_TIMEOUT * 2, result
    assert result["broadcast_acks_s"][0] >= SOCKET_TIMEOUT * 0.9, result  # control: the first one did wait on Redis
    ok, total = result["echoes_ok_during"].split("/")
    assert ok == total, result
    local, expected = result["local_delivery_during"].split("/")
    assert local == expected and int(expected) > 0, result
    assert result["cross_instance_delivered_during"].startswith("0/"), result  # control: Redis really hung
    assert result["resumed_after_s"] is not None and result["resumed_after_s"] < 10, result
    assert result["instances_alive"] and result["tracebacks_logged"] == 0, result
    assert 1 <= result["queue_warnings_logged"] <= 20, result


def test_hung_redis_bounds_each_publish_and_instances_keep_serving(own_stack):
    """Redis hung (SIGSTOP), not gone: every publish returns within about SOCKET_TIMEOUT (its emit's ack with it),
    so instances keep answering their clients and deliver locally; cross-instance delivery resumes after SIGCONT.
    The control, python-socketio's RedisManager still waiting after twice SOCKET_TIMEOUT on the same hang, is
    tests/deployment/test_queue_manager.py's (the stack always runs the template's manager)."""
    result = scenario_redis_hang(own_stack(replicas=2), clients=6, hang_s=6, rounds=6)
    print(result)
    assert_served_through_the_redis_hang(result)
    assert result["duplicate_deliveries"] == 0, result  # a late publish is ignored by its own instance


@pytest.mark.parametrize("wait", [20, 0], ids=["waits", "control-no-wait"])
def test_instance_started_without_redis_waits_instead_of_crash_looping(tmp_path, wait):
    import sys

    result = scenario_redis_at_start(sys.executable, wait_s=wait, start_redis_after=3, tmp=tmp_path)
    print(result)
    assert result["alive_while_waiting"] and result["worker_boots"] == 1 and result["tracebacks_logged"] == 0
    if wait:
        assert result["waiting_logged"] and not result["ready_before_redis"]
        assert result["ready_after_redis_s"] is not None and result["ready_after_redis_s"] < 10
    else:  # REDIS_WAIT_SECONDS=0: it starts at once, without the queue (what the wait is for)
        assert result["ready_before_redis"]


@pytest.mark.parametrize("hard_stop", ["10m", "3s"], ids=["default", "control-short-hard-stop"])
def test_haproxy_reload_with_changed_config_keeps_connections(own_stack, hard_stop):
    stack, change, restore = reload_config_copy(lambda: own_stack(replicas=2, HAPROXY_HARD_STOP_AFTER=hard_stop))
    try:
        result = scenario_reload(stack, change, clients=9, observe_s=6, rate=5)
    finally:
        restore()
    print(result)
    assert result["new_config_active"]
    assert result["handshakes"]["ok"] > 10 and result["handshakes"]["failed"] == 0, result["handshakes"]
    if hard_stop == "10m":
        assert result["established_disconnects"] == 0 and result["failed_echoes"] == 0
    else:  # the old process cuts its WebSockets at hard-stop-after: the check above would catch it
        assert result["established_disconnects"] >= result["websocket_clients"] > 0


def test_haproxy_config_keeps_the_settings_these_tests_rely_on():
    cfg = (ROOT / "haproxy" / "haproxy.cfg").read_text()
    assert "on-marked-down shutdown-sessions" in cfg and "inter 1s fall 2" in cfg
    assert "http-check disable-on-404" in cfg and "/readyz?draining=404" in cfg
    assert 'hard-stop-after "${HAPROXY_HARD_STOP_AFTER-10m}"' in cfg


def test_drain_and_spread_are_cut_to_fit_graceful_timeout():
    from deployment.operations.lifecycle import fit

    assert fit(3, 10, 20) == (3, 10)  # the defaults fit GRACEFUL_TIMEOUT=20 with 3s to spare
    assert fit(10, 10, 20) == (8.5, 8.5)
    assert fit(3, 30, 20) == (3, 14)
    assert fit(3, 10, 2) == (0, 0)
