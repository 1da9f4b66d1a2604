"""The demo page at `/`: the page itself, its /demo namespace and presence (in process), then real headless
Chromium pages through HAProxy of a native stack (Selenium with Debian's chromium + chromium-driver).

UPDATE_DEMO_SCREENSHOT=1 makes the two-page test write docs/demo.png (the README's picture)."""

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import socketio

import demo
from demo import presence
from deployment.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VENDOR_JS = demo.vendor_js_path()  # demo/static/vendor/socket.io.min.js, built by `npm run build` in demo/


def received(client, name, namespace="/demo"):
    events = [e for e in client.get_received(namespace) if e["name"] == name]
    return [e["args"][0] if isinstance(e["args"], list) else e["args"] for e in events]


# --- the page, in process --------------------------------------------------------------------------------


def make_app(**env):
    from app import create_app

    return create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit", **env}))


NOT_BUILT = "demo/static/vendor not built (npm ci && npm run build in demo/)"


@pytest.mark.skipif(not VENDOR_JS.is_file(), reason=NOT_BUILT)
def test_page_loads_the_vendored_socketio_client_and_no_cdn(app):
    page = app.test_client().get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'src="/demo/static/vendor/socket.io.min.js"' in html and 'src="/demo/static/app.js"' in html
    assert 'href="/demo/static/style.css"' in html
    assert "//cdn" not in html and "https://" not in html
    assert 'id="signin"' not in html  # REQUIRE_LOGIN is off
    script = app.test_client().get("/demo/static/vendor/socket.io.min.js")
    assert script.status_code == 200 and b"Socket.IO" in script.data
    assert (VENDOR_JS.parent / "VERSION").read_text().startswith("socket.io-client 4.8.")


def test_missing_vendor_file_gives_clear_error_page_and_log_line(app, monkeypatch, caplog):
    monkeypatch.setattr(demo, "VENDOR_JS", Path("vendor") / "not-built.js")
    with caplog.at_level("ERROR", logger="demo"):
        page = app.test_client().get("/")
    assert page.status_code == 503
    assert "npm ci" in page.get_data(as_text=True) and "npm run build" in page.get_data(as_text=True)
    assert any("not-built.js is missing" in r.getMessage() and "npm ci" in r.getMessage() for r in caplog.records)


def test_static_vendor_is_git_ignored_and_client_pinned_to_exact_48x():
    import json

    def git_ignored(path):
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True)
        if result.returncode not in (0, 1):
            pytest.skip(f"git check-ignore cannot tell here: {result.stderr.decode().strip()}")
        return result.returncode == 0

    assert git_ignored("demo/static/vendor/socket.io.min.js") and git_ignored("demo/node_modules/x/package.json")
    assert not git_ignored("demo/static/app.js")  # control
    wanted = json.loads((ROOT / "demo" / "package.json").read_text())["dependencies"]["socket.io-client"]
    assert wanted.startswith("4.8.") and wanted.replace(".", "").isdigit()  # exact pin, no range
    lock = json.loads((ROOT / "demo" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/socket.io-client"]["version"] == wanted


@pytest.mark.skipif(not VENDOR_JS.is_file(), reason=NOT_BUILT)
def test_sign_in_form_only_when_required_and_signed_out():
    app = make_app(REQUIRE_LOGIN="true")
    http = app.test_client()
    assert 'id="signin-form"' in http.get("/").get_data(as_text=True)
    with http.session_transaction() as session:
        session["user"] = "ada"
    html = http.get("/").get_data(as_text=True)
    assert 'id="signin-form"' not in html and "Signed in as <strong>ada</strong>" in html


def test_demo_namespace_presence_join_leave_disconnect(app):
    from application.extensions import socketio as server

    alice = server.test_client(app, namespace="/demo", auth={"user": "alice"})
    bob = server.test_client(app, namespace="/demo", auth={"user": "bob"})
    assert received(alice, "welcome")[0]["instance"] == "unit"
    first = alice.emit("join", {"room": "r1"}, namespace="/demo", callback=True)
    assert [m["user"] for m in first["presence"]["members"]] == ["alice"]
    second = bob.emit("join", {"room": "r1"}, namespace="/demo", callback=True)
    assert [(m["user"], m["instance"]) for m in second["presence"]["members"]] == [("alice", "unit"), ("bob", "unit")]
    assert second["presence"]["version"] > first["presence"]["version"]
    assert [p["members"][-1]["user"] for p in received(alice, "presence")] == ["alice", "bob"]

    assert bob.emit("say", {"message": "hi"}, namespace="/demo", callback=True) == {"ok": True}
    assert [(m["user"], m["message"]) for m in received(alice, "message")] == [("bob", "hi")]

    bob.emit("join", {"room": "r2"}, namespace="/demo", callback=True)  # moving leaves r1
    assert [m["user"] for m in received(alice, "presence")[-1]["members"]] == ["alice"]
    bob.emit("join", {"room": "r1"}, namespace="/demo", callback=True)
    received(alice, "presence")
    bob.disconnect(namespace="/demo")
    assert [m["user"] for m in received(alice, "presence")[-1]["members"]] == ["alice"]


def test_demo_namespace_refuses_bad_names_and_bad_input(app):
    from application.extensions import socketio as server

    refused = server.test_client(app, namespace="/demo", auth={"user": "<script>"})
    assert not refused.is_connected("/demo")
    guest = server.test_client(app, namespace="/demo")
    assert received(guest, "welcome")[0]["user"].startswith("guest-")
    assert "error" in guest.emit("say", {"message": "before joining"}, namespace="/demo", callback=True)
    assert "error" in guest.emit("join", {"room": ""}, namespace="/demo", callback=True)
    guest.emit("join", {"room": "r"}, namespace="/demo", callback=True)
    assert "error" in guest.emit("say", {"message": 5}, namespace="/demo", callback=True)
    assert "error" in guest.emit("say", {"message": "x" * 2001}, namespace="/demo", callback=True)


def test_demo_namespace_requires_sign_in_when_configured():
    from application.extensions import socketio as server

    app = make_app(REQUIRE_LOGIN="true")
    client = server.test_client(app, namespace="/demo", auth={"user": "mallory"})
    assert not client.is_connected("/demo")  # a name in `auth` is no sign-in


# --- presence in Redis: two instances, one dies ----------------------------------------------------------


def test_redis_presence_drops_entries_of_a_dead_instance(stack):
    url = stack.status()["redis"]["url"]
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    one = presence.RedisPresence(url, "one", prefix=prefix)
    two = presence.RedisPresence(url, "two", prefix=prefix)
    one.heartbeat()
    two.heartbeat()
    one.add("room", "sid-a", "alice", "websocket")
    snapshot = two.add("room", "sid-b", "bob", "polling")
    assert [(m["user"], m["instance"], m["transport"]) for m in snapshot["members"]] == [
        ("alice", "one", "websocket"),
        ("bob", "two", "polling"),
    ]
    assert one.snapshot("room")["version"] > snapshot["version"]

    two.redis.delete(two.alive_key("two"))  # instance two is SIGKILLed: its heartbeat lapses
    assert [m["user"] for m in one.snapshot("room")["members"]] == ["alice"]  # left out at once
    corrected = one.heartbeat()  # and swept by a live instance, which emits the corrected list
    assert [(c["room"], [m["user"] for m in c["members"]]) for c in corrected] == [("room", ["alice"])]
    assert one.redis.hkeys(one.room_key("room")) == ["sid-a"]

    restarted = presence.RedisPresence(url, "one", prefix=prefix)  # same name, new boot id
    restarted.heartbeat()
    assert restarted.snapshot("room")["members"] == []  # the old process's clients are gone with it
    one.redis.delete(*one.redis.keys(f"{prefix}:*"))


# --- real browsers through HAProxy -----------------------------------------------------------------------


class DemoPage:
    """One browser showing the demo page; reads what a person sees (ids of demo/templates/demo/index.html)."""

    def __init__(self, driver, url, name, room):
        self.driver, self.url, self.name, self.room = driver, url, name, room
        self.open()

    def open(self):
        self.driver.get(f"{self.url}/?name={self.name}&room={self.room}")

    def text(self, element_id):
        return self.driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)

    def wait(self, predicate, what, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception:  # the page is reloading
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {what}; log: {self.text('log')!r}")

    def joined(self, status="connected"):
        """Connected, joined to its room and able to send: returns the instance the page shows."""
        self.wait(
            lambda: (
                self.text("status") == status
                and self.text("instance") not in ("-", "")
                and self.text("room-name") == self.room
                and self.driver.execute_script("return !document.getElementById('send').disabled")
            ),
            "connected and joined",
        )
        return self.text("instance")

    def presence(self):
        return self.driver.execute_script(
            "return [...document.querySelectorAll('#presence li')].map(li => ({user: li.querySelector('.user')"
            ".textContent, instance: li.dataset.instance, transport: li.dataset.transport}))"
        )

    def messages(self, replayed=False):
        """The messages shown (with `replayed`: also whether the page marked each as replayed)."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll('#messages li.message')].map(li => ({user: li.querySelector("
            "'.user').textContent, instance: li.querySelector('.instance').textContent, text: li.querySelector("
            "'.text').textContent, ...(arguments[0] ? {replayed: li.classList.contains('replayed')} : {})}))",
            replayed,
        )

    def say(self, text):
        from selenium.webdriver.common.by import By

        box = self.driver.find_element(By.ID, "message")
        box.send_keys(text)
        self.driver.find_element(By.ID, "send").click()
        self.wait(lambda: any(m["text"] == text for m in self.messages()), f"own message {text!r} back")


class DemoClient:
    """A python-socketio client on /demo, e.g. a participant that stays on long-polling."""

    def __init__(self, url, user, room, transports=None):
        self.client = socketio.Client(reconnection_delay=0.5, reconnection_delay_max=1)
        self.events = []
        # *offset: with CONNECTION_STATE_RECOVERY the server appends an offset to each event (docs/operations.md)
        self.client.on("*", lambda event, data=None, *offset: self.events.append((event, data)), namespace="/demo")
        self.client.connect(url, namespaces=["/demo"], transports=transports, auth={"user": user}, wait_timeout=10)
        self.user, self.room = user, room
        assert self.client.call("join", {"room": room}, namespace="/demo", timeout=10)["ok"]

    @property
    def instance(self):
        return next(data["instance"] for event, data in reversed(self.events) if event == "welcome")

    def say(self, text):
        return self.client.call("say", {"message": text}, namespace="/demo", timeout=10)

    def got(self, text, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event, data in list(self.events):
                if event == "message" and data["message"] == text:
                    return data
            time.sleep(0.05)
        raise AssertionError(f"python client never got {text!r}")

    def close(self):
        self.client.disconnect()


def pinned_pages(browser, url, room, names, tries=8):
    """Pages in separate browsers (separate io cookies) until each is on a different instance."""
    pages, seen = [], set()
    for name in names:
        page = DemoPage(browser(), url, name, room)
        for _ in range(tries):
            if page.joined() not in seen:
                break
            page.driver.delete_all_cookies()  # no io cookie: HAProxy balances the next handshake afresh
            page.open()
        else:
            raise AssertionError(f"{name} kept landing on {sorted(seen)}")
        seen.add(page.text("instance"))
        pages.append(page)
    return pages


def test_two_browsers_on_different_instances_chat_and_see_each_other(stack, browser):
    url = stack.status()["url"]
    room = f"demo-{uuid.uuid4().hex[:6]}"
    alice, bob = pinned_pages(browser, url, room, ["alice", "bob"])
    instances = {alice.text("instance"), bob.text("instance")}
    assert len(instances) == 2 and instances <= {"app1", "app2", "app3"}

    carol = DemoClient(url, "carol", room, transports=["polling"])  # a long-polling participant
    try:
        expected = sorted(
            [("alice", alice.text("instance"), "websocket"), ("bob", bob.text("instance"), "websocket")]
            + [("carol", carol.instance, "polling")]
        )
        for page in (alice, bob):  # presence is right on both pages, whatever instance serves them
            page.wait(
                lambda p=page: sorted((m["user"], m["instance"], m["transport"]) for m in p.presence()) == expected,
                f"presence {expected}",
            )
            assert page.text("transport") == "websocket"

        alice.say("hello from alice")
        bob.wait(
            lambda: {"user": "alice", "instance": alice.text("instance"), "text": "hello from alice"} in bob.messages(),
            "alice's message on bob's page",
        )
        bob.say("hi alice, bob here")
        alice.wait(
            lambda: any(
                m["text"] == "hi alice, bob here" and m["instance"] == bob.text("instance") for m in alice.messages()
            ),
            "bob's message on alice's page",
        )
        assert carol.got("hello from alice")["instance"] == alice.text("instance")
        carol.say("carol on long-polling")
        for page in (alice, bob):
            page.wait(lambda p=page: any(m["text"] == "carol on long-polling" for m in p.messages()), "carol's")

        shot = alice.driver.get_screenshot_as_png()
        assert shot.startswith(b"\x89PNG")
        if os.environ.get("UPDATE_DEMO_SCREENSHOT"):
            (ROOT / "docs" / "demo.png").write_bytes(shot)
    finally:
        carol.close()


def participant_elsewhere(url, name, room, instance, tries=8):
    """A python DemoClient in `room` on another instance than `instance` (HAProxy picks; a few tries)."""
    for attempt in range(tries):
        candidate = DemoClient(url, f"{name}{attempt}", room)
        if candidate.instance != instance:
            return candidate
        candidate.close()
    raise AssertionError(f"no python client landed on another instance than {instance} in {tries} tries")


def kill_instance(status, name):
    """kill -9 of one native stack instance (its process group: gunicorn's master and worker)."""
    victim = next(app for app in status["apps"] if app["name"] == name)
    os.killpg(victim["pid"], signal.SIGKILL)


def test_page_survives_the_kill_of_its_instance(own_stack, browser):
    stack = own_stack()
    status = stack.status()
    url = status["url"]
    room = f"failover-{uuid.uuid4().hex[:6]}"
    page = DemoPage(browser(), url, "dora", room)
    victim_name = page.joined()
    page.wait(lambda: page.text("transport") == "websocket", "the upgrade to websocket")
    witness = participant_elsewhere(url, "eve", room, victim_name)  # proves cross-instance delivery
    try:
        kill_instance(status, victim_name)

        page.wait(lambda: page.text("reconnects") != "0", "a reconnect", timeout=30)
        new_instance = page.joined()
        assert new_instance != victim_name
        assert "disconnected" in page.text("log")

        page.say("back after failover")
        assert witness.got("back after failover")["instance"] == new_instance
        witness.say("welcome back")
        page.wait(lambda: any(m["text"] == "welcome back" for m in page.messages()), "the witness's message")

        # the killed instance's entry is swept: presence settles on the two live participants
        expected = sorted([("dora", new_instance), (witness.user, witness.instance)])
        page.wait(
            lambda: sorted((m["user"], m["instance"]) for m in page.presence()) == expected,
            f"presence {expected}, without the killed instance's entry",
            timeout=30,
        )
    finally:
        witness.close()


def test_sign_in_form_then_connected_as_that_user(own_stack, browser):
    from selenium.webdriver.common.by import By

    stack = own_stack(replicas=1, REQUIRE_LOGIN="true")
    driver = browser()
    driver.get(stack.status()["url"] + "/")
    assert driver.find_element(By.ID, "status").text == "sign in to connect"
    name = f"ada-{uuid.uuid4().hex[:4]}"
    driver.find_element(By.ID, "signin-name").send_keys(name)
    driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    page = DemoPage.__new__(DemoPage)
    page.driver, page.name, page.room = driver, name, "lobby"
    page.joined()
    assert page.text("user") == name
    assert [m["user"] for m in page.presence()] == [name]


@pytest.mark.parametrize("recovery", ["true", "false"], ids=["recovery", "control-no-recovery"])
def test_page_recovers_after_the_kill_of_its_instance_and_marks_replayed_messages(own_stack, browser, recovery):
    stack = own_stack(CONNECTION_STATE_RECOVERY=recovery)
    status = stack.status()
    url = status["url"]
    room = f"recovery-{uuid.uuid4().hex[:6]}"
    page = DemoPage(browser(), url, "fay", room)
    victim_name = page.joined()
    page.wait(lambda: page.text("transport") == "websocket", "the upgrade to websocket")
    sid = page.driver.execute_script("return document.body.dataset.sid")
    witness = participant_elsewhere(url, "gus", room, victim_name)  # speaks while the page is away
    try:
        witness.say("before the kill")
        page.wait(lambda: any(m["text"] == "before the kill" for m in page.messages()), "the first message")
        kill_instance(status, victim_name)
        page.wait(lambda: page.text("status") != "connected", "the cut")
        for number in range(3):
            assert witness.say(f"while away {number}")["ok"]
        page.wait(lambda: page.text("reconnects") != "0", "a reconnect", timeout=30)
        if recovery == "true":
            page.joined(status="recovered")
            assert page.driver.execute_script("return document.body.dataset.sid") == sid  # the same socket id
            page.wait(lambda: all(f"while away {n}" in page.text("messages") for n in range(3)), "the replay")
            shown = {m["text"]: m["replayed"] for m in page.messages(replayed=True)}
            assert [shown.get(f"while away {n}") for n in range(3)] == [True, True, True], shown
            assert shown["before the kill"] is False
            assert "(session recovered)" in page.text("log")  # the server's connect handler knew it too
        else:  # control: a new session, the messages of the gap are gone
            page.joined()
            assert page.driver.execute_script("return document.body.dataset.sid") != sid
            time.sleep(1)
            shown = [m["text"] for m in page.messages()]
            assert not any(text.startswith("while away") for text in shown), shown
            assert "(session recovered)" not in page.text("log")
        witness.say("after the recovery")
        page.wait(lambda: any(m["text"] == "after the recovery" for m in page.messages()), "a message after it")
    finally:
        witness.close()
