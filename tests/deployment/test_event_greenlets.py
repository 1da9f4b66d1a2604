"""The event_greenlets speedup (deployment/patches/event_greenlets.py) against python-socketio's own greenlet per
event: a real python-socketio Server under gevent, fed Engine.IO messages as engineio hands them over, its
packets captured where engineio would send them. Each behaviour runs both ways (`patched` True and False)."""

import contextvars
import json
from types import SimpleNamespace

import gevent
import gevent.event
import gevent.local
import pytest
import socketio

from deployment.patches import event_greenlets

SEEN = contextvars.ContextVar("seen", default="unset")


def make_server(patched, async_handlers=True):
    sio = socketio.Server(async_mode="gevent", async_handlers=async_handlers)
    sent = []
    sio.eio.send = lambda eio_sid, data: sent.append(data)  # where python-socketio hands a packet to engineio
    sio.eio.send_packet = lambda eio_sid, pkt: sent.append(pkt.data)  # emits: one Engine.IO packet each
    on = event_greenlets.install(SimpleNamespace(server=sio), None, None) if patched else False
    assert on is patched
    sio._handle_eio_connect("e1", {"REMOTE_ADDR": "127.0.0.1"})
    sio._handle_eio_message("e1", "0")  # the client's CONNECT to "/"
    sent.clear()
    return sio, sent


def event(sio, name, data, ack_id=None):
    sio._handle_eio_message("e1", "2" + ("" if ack_id is None else str(ack_id)) + json.dumps([name, data]))


def settle():
    gevent.sleep(0.01)


@pytest.mark.parametrize("patched", [True, False])
def test_the_same_packets_go_out(patched):
    sio, sent = make_server(patched)

    @sio.on("echo")
    def echo(sid, data):
        sio.emit("echoed", data, to=sid)
        return {"got": data}

    for n in range(5):
        event(sio, "echo", n, ack_id=n)
        settle()
    assert sent == [part for n in range(5) for part in (f'2["echoed",{n}]', f'3{n}[{{"got":{n}}}]')]


def test_one_runner_serves_events_one_after_another_where_the_library_starts_a_greenlet_each():
    runners = {}
    for patched in (True, False):
        sio, _ = make_server(patched)
        seen = runners[patched] = []
        sio.on("probe", lambda sid, data, seen=seen: seen.append(gevent.getcurrent()))
        for n in range(20):
            event(sio, "probe", n)
            settle()
        assert len(seen) == 20
    assert len(set(runners[True])) == 1 and len(set(map(id, runners[False]))) == 20
    assert isinstance(runners[True][0], event_greenlets.EventRunner)


@pytest.mark.parametrize("patched", [True, False])
def test_events_that_wait_run_side_by_side(patched):
    sio, sent = make_server(patched)
    release, log = gevent.event.Event(), []

    @sio.on("wait")
    def wait(sid, n):
        log.append(("start", n))
        release.wait()
        log.append(("end", n))
        return n

    for n in range(5):
        event(sio, "wait", n, ack_id=n)
    settle()
    assert log == [("start", n) for n in range(5)]
    release.set()
    settle()
    assert sorted(sent) == [f"3{n}[{n}]" for n in range(5)]
    if patched:
        assert sio.event_greenlets.made == 5 and len(sio.event_greenlets.idle) == 5


def what_events_see(sio, count):
    """[(the contextvar, a gevent.local's value)] as each of `count` events finds them; each event sets both."""
    local, seen = gevent.local.local(), []

    @sio.on("probe")
    def probe(sid, n):
        seen.append((SEEN.get(), getattr(local, "value", None)))
        SEEN.set(n)
        local.value = n

    SEEN.set("the caller's")
    for n in range(count):
        event(sio, "probe", n)
        settle()
    return seen


@pytest.mark.parametrize("patched", [True, False])
def test_each_event_starts_with_a_fresh_context_and_fresh_greenlet_locals(patched):
    sio, _ = make_server(patched)
    assert what_events_see(sio, 5) == [("unset", None)] * 5


def test_control_without_the_end_of_event_links_greenlet_locals_leak_to_the_next_event(monkeypatch):
    """The test above can fail: a runner that does not drop gevent.local's storage shows the last event's."""
    monkeypatch.setattr(event_greenlets.EventRunner, "end_event", lambda self: None)
    sio, _ = make_server(True)
    assert [value for _, value in what_events_see(sio, 3)] == [None, 0, 1]


@pytest.mark.parametrize("patched", [True, False])
def test_an_error_fails_its_event_only(patched, monkeypatch):
    reported = []
    monkeypatch.setattr(gevent.get_hub(), "print_exception", lambda context, *exc: reported.append(exc[0]))
    sio, sent = make_server(patched)

    @sio.on("divide")
    def divide(sid, n):
        return 10 // n

    event(sio, "divide", 0, ack_id=1)
    settle()
    event(sio, "divide", 5, ack_id=2)
    settle()
    assert sent == ["32[2]"]
    assert reported == [ZeroDivisionError]  # as gevent reports a failed Greenlet
    if patched:
        assert sio.event_greenlets.made == 1


def test_a_timer_left_behind_ends_its_runner_and_the_next_event_gets_another():
    sio, sent = make_server(True)

    @sio.on("leave_timer")
    def leave_timer(sid, n):
        gevent.Timeout.start_new(0.005)  # never cancelled: it fires into the runner, idle by then
        return n

    event(sio, "leave_timer", 1, ack_id=1)
    gevent.sleep(0.05)
    assert sio.event_greenlets.idle == []
    sio.handlers["/"]["leave_timer"] = lambda sid, n: n
    event(sio, "leave_timer", 2, ack_id=2)
    settle()
    assert sent == ["31[1]", "32[2]"] and sio.event_greenlets.made == 2


def test_idle_runners_are_bounded():
    sio, _ = make_server(True)
    sio.event_greenlets.keep_idle = 2
    release = gevent.event.Event()
    sio.on("wait", lambda sid, n: release.wait())
    for n in range(6):
        event(sio, "wait", n)
    settle()
    release.set()
    settle()
    assert sio.event_greenlets.made == 6 and len(sio.event_greenlets.idle) == 2


def test_other_background_tasks_are_the_librarys():
    sio, _ = make_server(True)
    task = sio.start_background_task(lambda a, b: a + b, 1, 2)
    task.join()
    assert isinstance(task, gevent.Greenlet) and task.value == 3
    assert sio.event_greenlets.made == 0


def test_with_async_handlers_off_it_stays_off_and_says_so(caplog):
    sio = socketio.Server(async_mode="gevent", async_handlers=False)
    library = sio.start_background_task
    assert event_greenlets.install(SimpleNamespace(server=sio), None, None) is False
    assert sio.start_background_task == library
    assert "speedup event_greenlets stays off: ASYNC_HANDLERS=false" in caplog.text
