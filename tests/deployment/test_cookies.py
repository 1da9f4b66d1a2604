"""Cookies, end to end: every io cookie attribute, application cookies on Engine.IO responses, and
sign-in checked before a connection is accepted."""

import re
import time
import uuid
from email.utils import parsedate_to_datetime

import pytest
import requests
import socketio
import websocket
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from deployment.operations.engineio_headers import HookRequest
from deployment.settings import ConfigError, Settings

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


@pytest.mark.parametrize(
    "env,message",
    [
        ({"IO_COOKIE_SAMESITE": "None"}, "requires IO_COOKIE_SECURE"),
        ({"IO_COOKIE_SAMESITE": "sometimes"}, "must be one of"),
        ({"IO_COOKIE_MAX_AGE": "-5"}, "IO_COOKIE_MAX_AGE"),
        ({"IO_COOKIE_NAME": "io cookie"}, "not a valid cookie name"),
        ({"IO_COOKIE_PATH": "socket.io"}, "must start with /"),
    ],
)
def test_invalid_cookie_settings_are_refused_at_start(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"APP_ENV": "development", **env})


def test_cookie_option_values_are_strings_or_flags():
    """python-engineio writes values verbatim and fails on int/False: the builder never makes those."""
    option = Settings.from_env(
        {"APP_ENV": "development", "IO_COOKIE_MAX_AGE": "60", "IO_COOKIE_HTTPONLY": "false", "IO_COOKIE_SECURE": "true"}
    ).cookie.engineio_option()
    assert option == {"name": "io", "Path": "/", "SameSite": "Lax", "Secure": True, "Max-Age": "60"}


@pytest.fixture(scope="module")
def custom_cookie_stack(make_stack):
    return make_stack(
        replicas=2,
        IO_COOKIE_NAME="rt",
        IO_COOKIE_PATH="/",
        IO_COOKIE_DOMAIN="127.0.0.1",
        IO_COOKIE_SAMESITE="Strict",
        IO_COOKIE_MAX_AGE="3600",
        IO_COOKIE_EXPIRES="7200",
    )


def check_custom_cookie(header, prefix):
    match = re.match(
        rf"^rt={prefix}(?P<sid>[\w-]+); Path=/; Domain=127\.0\.0\.1; HttpOnly; SameSite=Strict; Max-Age=3600; "
        r"Expires=(?P<expires>[^;]+)$",
        header,
    )
    assert match, header
    remaining = parsedate_to_datetime(match["expires"]).timestamp() - time.time()
    assert 7100 < remaining <= 7201
    return match["sid"]


def test_every_io_cookie_attribute_directly_from_an_instance(custom_cookie_stack):
    response = requests.get(custom_cookie_stack.status()["apps"][0]["url"] + HANDSHAKE, timeout=5)
    sid = check_custom_cookie(response.headers["Set-Cookie"].split(", uid=")[0], prefix="")
    assert f'"sid":"{sid}"' in response.text


def test_every_io_cookie_attribute_through_haproxy_with_server_prefix(custom_cookie_stack):
    url = custom_cookie_stack.status()["url"]
    prefixes = set()
    for _ in range(4):
        response = requests.get(url + HANDSHAKE, timeout=5)
        io_cookie = next(c for c in response.raw.headers.getlist("Set-Cookie") if c.startswith("rt="))
        server = re.match(r"^rt=(app\d)~", io_cookie).group(1)
        check_custom_cookie(io_cookie, prefix=f"{server}~")
        prefixes.add(server)
    assert prefixes == {"app1", "app2"}


def test_renamed_cookie_still_sticks_because_haproxy_follows_the_variable(custom_cookie_stack, clients):
    url = custom_cookie_stack.status()["url"]
    for _ in range(3):
        client = clients(url, transports=["polling"])
        instance = client.call("whoami")
        for i in range(15):
            assert client.call("echo", i) == i
        assert client.call("whoami") == instance
        assert "rt" in client.client.eio.http.cookies


def set_cookies(response):
    return {c.split("=", 1)[0]: c for c in response.raw.headers.getlist("Set-Cookie")}


def test_application_cookies_on_handshake_and_polls(stack):
    """uid: polling handshake only (SameSite=Strict). randomId: any Engine.IO response to a client
    that lacks it (Max-Age=86400). The io cookie: handshake only."""
    url = stack.status()["url"]
    http = requests.Session()
    handshake = http.get(url + HANDSHAKE, timeout=5)
    cookies = set_cookies(handshake)
    assert set(cookies) == {"io", "uid", "randomId"}
    assert re.match(r"^uid=[0-9a-f]{16}; Path=/; SameSite=Strict$", cookies["uid"])
    assert re.match(r"^randomId=[0-9a-f]{16}; Expires=[^;]+; Max-Age=86400; Path=/$", cookies["randomId"])

    sid = re.search(r'"sid":"([^"]+)"', handshake.text).group(1)
    endpoint = f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert set_cookies(http.post(endpoint, data="40", timeout=5)) == {}  # randomId kept: nothing new
    assert set_cookies(http.get(endpoint, timeout=5)) == {}
    del http.cookies["randomId"]  # a client without it gets one on its next poll, uid does not return
    later = http.post(endpoint, data='42["echo",1]', timeout=5)
    assert set(set_cookies(later)) == {"randomId"}
    http.post(endpoint, data="1", timeout=5)


def test_websocket_upgrade_101_carries_no_application_cookies(stack):
    """gevent-websocket sends the 101 before the app runs: documented limitation (cookies come from the
    polling handshake that precedes the upgrade)."""
    url = stack.status()["url"]
    http = requests.Session()
    handshake = http.get(url + HANDSHAKE, timeout=5)
    sid = re.search(r'"sid":"([^"]+)"', handshake.text).group(1)
    cookie_header = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    ws = websocket.create_connection(
        url.replace("http", "ws") + f"/socket.io/?EIO=4&transport=websocket&sid={sid}",
        header=[f"Cookie: {cookie_header}"],
        origin=url,
        timeout=5,
    )
    try:
        assert ws.getstatus() == 101
        assert "set-cookie" not in {k.lower() for k in ws.getheaders()}
        ws.send("2probe")
        assert ws.recv() == "3probe"  # the upgrade reached the instance that owns the session
    finally:
        ws.close()


@pytest.fixture(scope="module")
def login_stack(make_stack):
    return make_stack(REQUIRE_LOGIN="true")


def connection_counts(stack):
    return [requests.get(app["url"] + "/readyz", timeout=5).json() for app in stack.status()["apps"]]


def test_connection_without_sign_in_is_refused_with_clear_message(login_stack):
    url = login_stack.status()["url"]
    client = socketio.Client(reconnection=False)
    refusals = []
    client.on("connect_error", lambda data: refusals.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, transports=["polling"], wait_timeout=5)
    assert refusals and "sign in first" in str(refusals[0])
    time.sleep(0.5)
    assert all(count["clients"] == 0 for count in connection_counts(login_stack))  # nothing left behind


def test_signed_in_user_connects_and_is_known_to_event_handlers(login_stack, clients):
    url = login_stack.status()["url"]
    name = f"ada-{uuid.uuid4().hex[:6]}"
    http = requests.Session()
    assert http.post(url + "/login", json={"name": name}, timeout=5).json() == {"user": name}
    client = clients(url, transports=["polling", "websocket"], http_session=http)
    room = uuid.uuid4().hex
    client.call("join", {"room": room}, timeout=5)
    client.call("say", {"room": room, "message": "hello"}, timeout=5)
    assert client.wait_for("message", timeout=5)
    assert client.events("message")[0]["user"] == name


def test_login_rejects_bad_names(login_stack):
    response = requests.post(login_stack.status()["url"] + "/login", json={"name": "<script>"}, timeout=5)
    assert response.status_code == 400 and "name must be" in response.json()["error"]


@pytest.mark.parametrize(
    "cookie",
    [None, "", "randomId=abc", "io=x; randomId=abc; uid=1", 'a="quoted; value"; b=2', "a=1; a=2", "bad;;=; c=3"],
)
def test_hook_requests_read_the_same_cookies_as_werkzeug(cookie):
    environ = EnvironBuilder(path="/socket.io/", query_string="EIO=4&transport=polling").get_environ()
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    assert HookRequest(environ).cookies.to_dict(flat=False) == Request(environ).cookies.to_dict(flat=False)


def test_hook_requests_are_werkzeug_requests_made_on_first_use():
    environ = EnvironBuilder(
        path="/socket.io/", query_string="EIO=4&transport=polling&sid=abc", headers={"Cookie": "randomId=1"}
    ).get_environ()
    request = HookRequest(environ)
    assert request.cookies["randomId"] == "1" and "headers" not in vars(request)  # a cookie needs no more
    plain = Request(environ)
    for name in ("method", "path", "url", "host", "remote_addr"):
        assert getattr(request, name) == getattr(plain, name)
    assert request.args.to_dict() == plain.args.to_dict() and dict(request.headers) == dict(plain.headers)
    assert isinstance(request, Request) and not hasattr(request, "no_such_attribute")


@pytest.mark.parametrize(
    "method, query, handshake",
    [
        ("GET", "EIO=4&transport=polling", True),
        ("GET", "EIO=4&transport=polling&t=Px1", True),
        ("GET", "EIO=4&transport=polling&sid=abc", False),
        ("GET", "EIO=4&transport=polling&sid=", True),  # python-engineio reads an empty sid as none
        ("POST", "EIO=4&transport=polling&sid=abc", False),
        ("POST", "EIO=4&transport=polling", False),
    ],
)
def test_handshakes_are_what_python_engineio_takes_for_one(method, query, handshake):
    from deployment.operations.engineio_headers import is_handshake

    assert is_handshake({"REQUEST_METHOD": method, "QUERY_STRING": query}) is handshake


def test_handshakes_on_random_query_strings_are_what_parse_qs_gives():
    """is_handshake reads query strings as python-engineio does (urllib's parse_qs), on any mix of fields."""
    import random
    from urllib.parse import parse_qs

    from deployment.operations.engineio_headers import is_handshake

    rng = random.Random(5)
    parts = ["sid", "sid=", "sid=a", "sid=a=b", "xsid=1", "sidx=2", "s%69d=3", "si+d=4", "sid=%20", "=", "", "&", "t=P"]
    for _ in range(3000):
        query = "&".join(rng.choice(parts) for _ in range(rng.randint(0, 5)))
        expected = "sid" not in parse_qs(query)
        assert is_handshake({"REQUEST_METHOD": "GET", "QUERY_STRING": query}) is expected, query


def test_hook_requests_share_one_parse_per_cookie_header_and_keep_it_bounded():
    from deployment.operations import engineio_headers

    def cookies(header):
        return HookRequest({"HTTP_COOKIE": header}).cookies

    first = cookies("io=x; randomId=abc")
    assert cookies("io=x; randomId=abc") is first  # a polling client's next request: no new parse
    with pytest.raises(TypeError):
        first["randomId"] = "changed"  # shared, so immutable (werkzeug's ImmutableMultiDict)
    for n in range(engineio_headers.PARSED_COOKIES_KEPT + 10):
        cookies(f"randomId={n}")
    assert len(engineio_headers.PARSED_COOKIES) <= engineio_headers.PARSED_COOKIES_KEPT
