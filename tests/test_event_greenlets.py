"""patches/event_greenlets.py: events that get a greenlet of their own (every long-polling event) run in reused
greenlets, as concurrently as in new ones, each in a fresh contextvars context; at most IDLE_EVENT_GREENLETS
wait idle. Then the template's app over long-polling, with IDLE_EVENT_GREENLETS=0 as the control."""

import contextvars
import logging

import flask
import gevent
import gevent.event
import pytest
import socketio
from gevent import getcurrent

from application.config import Settings
from patches import inline_handlers
from patches.event_greenlets import EventGreenlets

DEV = {"APP_ENV": "development"}


def run_all(pool, functions):
    done = gevent.event.Event()
    results = []

    def task(function):
        results.append(function())
        if len(results) == len(functions):
            done.set()

    for function in functions:
        pool.spawn(task, function)
    assert done.wait(timeout=5)
    return results


def test_events_one_after_another_reuse_one_greenlet():
    pool = EventGreenlets(keep_idle=10)
    ran_in = [run_all(pool, [getcurrent])[0] for _ in range(20)]
    assert pool.made == 1 and len(set(ran_in)) == 1 and ran_in[0] is not getcurrent()


def test_control_without_idle_greenlets_every_event_gets_a_new_one():
    pool = EventGreenlets(keep_idle=0)
    ran_in = [run_all(pool, [getcurrent])[0] for _ in range(5)]
    assert pool.made == 5 and pool.idle == []
    assert all(runner.dead for runner in ran_in)


def test_a_waiting_event_holds_up_none_of_the_others_and_idle_ones_are_bounded():
    pool = EventGreenlets(keep_idle=3)
    released = gevent.event.Event()
    order = []

    def waits():
        released.wait()
        order.append("waited")

    def quick():
        order.append("quick")
        if order.count("quick") == 5:
            released.set()

    run_all(pool, [waits] + [quick] * 5)
    assert order == ["quick"] * 5 + ["waited"]
    gevent.sleep(0)
    assert pool.made >= 2 and len(pool.idle) <= 3


def test_each_event_starts_in_a_fresh_context_as_in_a_new_greenlet():
    pool = EventGreenlets(keep_idle=10)
    var = contextvars.ContextVar("var", default="unset")

    def set_it():
        seen = var.get()
        var.set("set by an earlier event")
        return seen

    assert run_all(pool, [set_it]) == ["unset"]
    assert run_all(pool, [set_it]) == ["unset"] and pool.made == 1


def test_an_error_ends_only_its_event_and_the_greenlet_is_reused(caplog):
    pool = EventGreenlets(keep_idle=10)
    caplog.set_level(logging.ERROR, logger="patches.event_greenlets")
    failed = gevent.event.Event()

    def fails():
        failed.set()
        raise RuntimeError("handler bug")

    pool.spawn(fails)
    assert failed.wait(timeout=5)
    gevent.sleep(0)
    assert run_all(pool, [lambda: "next"]) == ["next"] and pool.made == 1
    assert "handler bug" in caplog.text


def test_an_idle_greenlet_woken_by_anything_else_ends_and_leaves_the_idle_list():
    pool = EventGreenlets(keep_idle=10)
    runner = run_all(pool, [getcurrent])[0]
    assert pool.idle == [runner]
    gevent.get_hub().loop.run_callback(runner.throw, gevent.Timeout())  # e.g. a timer the last event left
    gevent.sleep(0)
    assert runner.dead and pool.idle == []


def make_server(**env):
    settings = Settings.from_env({**DEV, **env})
    server = socketio.Server(async_mode="gevent", async_handlers=settings.async_handlers)
    inline_handlers.install_on(server, settings)
    return server


@pytest.mark.parametrize("idle", ["100", "0"])
def test_the_template_app_runs_polling_events_in_reused_greenlets(idle):
    """Long-polling requests through the app's whole WSGI stack (Flask-SocketIO, python-engineio)."""
    from app import create_app

    env = {**DEV, "INSTANCE_NAME": "unit", "IDLE_EVENT_GREENLETS": idle, "EVENT_RATE": "0"}
    app = create_app(Settings.from_env(env))
    server = app.extensions["socketio"].server

    def g_check():  # docs/extending.md: flask.g starts fresh for every event, in a reused greenlet too
        seen = getattr(flask.g, "seen", None)
        flask.g.seen = "an earlier event"
        return seen

    app.extensions["socketio"].on_event("g_check", g_check)
    client = app.test_client()
    sid = client.get("/socket.io/?EIO=4&transport=polling").get_data(as_text=True)
    sid = sid.split('"sid":"')[1].split('"')[0]
    url = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert client.post(url, data="40").get_data() == b"OK"
    assert client.get(url).get_data().startswith(b"40")
    for n in range(30):
        assert client.post(url, data=f'42{n}["echo","hi"]').get_data() == b"OK"
        assert client.get(url).get_data() == f'43{n}["hi"]'.encode()
    for n in range(30, 33):
        assert client.post(url, data=f'42{n}["g_check"]').get_data() == b"OK"
        assert client.get(url).get_data() == f"43{n}[]".encode()  # None: no g.seen
    if idle == "0":  # control: python-socketio's new greenlet per event, same answers
        assert server.event_greenlets is None
    else:
        assert server.event_greenlets.made == 1


def test_the_setting_is_read_and_refuses_bad_values():
    assert make_server().event_greenlets.keep_idle == 100
    assert make_server(IDLE_EVENT_GREENLETS="7").event_greenlets.keep_idle == 7
    assert make_server(IDLE_EVENT_GREENLETS="0").event_greenlets is None
    assert make_server(ASYNC_HANDLERS="false").event_greenlets is None
    with pytest.raises(Exception, match="IDLE_EVENT_GREENLETS"):
        Settings.from_env({**DEV, "IDLE_EVENT_GREENLETS": "-1"})
