"""Security defaults, checked on real stacks (each with its control) and, for the compose file, statically.
SECRET_KEY refused at process level: tests/deployment/test_gunicorn_conf.py."""

import logging
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websocket
from native_stack import ROOT

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


def ws_handshake(url, origin):
    """True if a WebSocket-only Engine.IO handshake with this Origin is accepted."""
    try:
        ws = websocket.create_connection(
            url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket",
            origin=origin,
            timeout=5,
            sslopt={"cert_reqs": 0},
        )
    except websocket.WebSocketBadStatusException:
        return False
    try:
        return ws.recv().startswith("0{")
    finally:
        ws.close()


# --- CORS -----------------------------------------------------------------------------------------------
def test_default_refuses_foreign_origins_on_polling_and_websocket(stack):
    url = stack.status()["url"]
    refused = requests.get(url + HANDSHAKE, headers={"Origin": "https://evil.example"}, timeout=5)
    assert refused.status_code == 400 and "Not an accepted origin" in refused.text
    assert not ws_handshake(url, "https://evil.example")
    # control: the page's own origin (what a browser sends from the demo page) is accepted
    assert requests.get(url + HANDSHAKE, headers={"Origin": url}, timeout=5).status_code == 200
    assert ws_handshake(url, url)


def test_allowlist_accepts_listed_origins_only(own_stack):
    stack = own_stack(replicas=1, CORS_ALLOWED_ORIGINS="https://app.example,https://admin.example")
    url = stack.status()["url"]
    for origin in ("https://app.example", "https://admin.example", url):
        reply = requests.get(url + HANDSHAKE, headers={"Origin": origin}, timeout=5)
        assert reply.status_code == 200, origin
        assert reply.headers["Access-Control-Allow-Origin"] == origin
        assert ws_handshake(url, origin), origin
    for origin in ("https://evil.example", "https://app.example.evil.example", "http://app.example", "null"):
        assert requests.get(url + HANDSHAKE, headers={"Origin": origin}, timeout=5).status_code == 400, origin
        assert not ws_handshake(url, origin), origin


# --- HAProxy: stats, per-IP limits, banners -------------------------------------------------------------
def test_stats_only_on_the_private_port_and_behind_a_password(stack):
    status = stack.status()
    public = requests.get(status["url"] + "/stats", timeout=5)
    assert "Statistics Report" not in public.text
    stats_url = status["haproxy"]["stats_url"]
    without = re.sub(r"//[^@]+@", "//", stats_url)
    assert requests.get(without, timeout=5).status_code == 401
    wrong = re.sub(r"//([^:]+):[^@]+@", r"//\1:wrong@", stats_url)
    assert requests.get(wrong, timeout=5).status_code == 401
    good = requests.get(stats_url, timeout=5)  # control: the right password opens it
    assert good.status_code == 200 and "Statistics Report" in good.text


def open_connections(url, count):
    """`count` raw keep-alive connections to HAProxy, opened one after another, each kept open after its
    request is answered; their status codes (HAProxy checks the limits when it reads a request)."""
    host, port = url.removeprefix("http://").split(":")
    sockets, codes = [], []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        codes.append(int(sock.recv(4096).split(b" ", 2)[1]))
        sockets.append(sock)
    return sockets, codes


def test_per_ip_limits_answer_429_and_defaults_leave_room(own_stack, stack):
    limited = own_stack(replicas=1, HAPROXY_PER_IP_CONN_CUR=20, HAPROXY_PER_IP_CONN_RATE=60)
    url = limited.status()["url"]
    sockets, codes = open_connections(url, 30)  # 30 open at once, limit 20
    for sock in sockets:
        sock.close()
    assert codes == [200] * 20 + [429] * 10, codes
    time.sleep(0.5)
    with ThreadPoolExecutor(8) as pool:  # new connections: 30 above, then 40 more within 10s, limit 60
        statuses = list(pool.map(lambda _: requests.get(url + "/healthz", timeout=5).status_code, range(40)))
    assert 429 in statuses and 200 in statuses, statuses
    # control: the shipped defaults (1000 open, 100,000 new per 10s) take the same load without a 429
    sockets, codes = open_connections(stack.status()["url"], 30)
    for sock in sockets:
        sock.close()
    with ThreadPoolExecutor(8) as pool:
        more = list(
            pool.map(lambda _: requests.get(stack.status()["url"] + "/healthz", timeout=5).status_code, range(40))
        )
    assert set(codes) == {200} and set(more) == {200}


def test_no_version_banners(stack):
    status = stack.status()
    url, app = status["url"], status["apps"][0]["url"]
    for target in (url, app):
        for path, method in (("/healthz", "get"), ("/nope", "get"), (HANDSHAKE, "get"), ("/socket.io/?EIO=9", "post")):
            reply = requests.request(method, target + path, timeout=5)
            assert "Server" not in reply.headers, (target, path, reply.headers)
            assert not re.search(r"gunicorn|gevent|werkzeug|haproxy", str(reply.headers), re.I), reply.headers
    assert "Server" not in requests.get(url + "/x", data="x" * 2_000_000, timeout=10).headers  # HAProxy's 413


# --- HTTP security headers --------------------------------------------------------------------------------
def test_security_headers_on_http_routes(stack):
    url = stack.status()["url"]
    for path in ("/healthz", "/readyz", "/nope", "/"):
        headers = requests.get(url + path, timeout=5).headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin", path
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # a page at / (the demo's, while it is there) loads scripts and styles from this origin only, as the CSP allows
    page = requests.get(url + "/", timeout=5)
    if page.status_code == 200:
        sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page.text)
        own = [s for s in sources if s.startswith("/") and not s.startswith("//")]
        assert sources and all(s in own or s == "data:," for s in sources), sources
        assert "<script>" not in page.text and " style=" not in page.text  # nothing inline to allow


def test_compose_never_publishes_redis_and_protects_it_with_a_password():
    from ruamel.yaml import YAML

    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "ports" not in services["redis"] and "ports" not in services["app"]
    assert "--requirepass" in " ".join(map(str, services["redis"]["command"]))
    assert services["app"]["environment"].get("REDIS_PASSWORD_FILE")
    assert [p.split(":")[-1] for p in services["haproxy"]["ports"]] == ["8080"]  # public port only


# --- TLS ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tls_stack(own_stack, tmp_path):
    cert = subprocess.run(
        [str(ROOT / "scripts" / "dev-cert"), str(tmp_path / "dev.pem")], check=True, capture_output=True, text=True
    ).stdout.strip()
    from native_stack import free_port

    port = free_port()
    stack = own_stack(
        replicas=2,
        HAPROXY_TLS_CERT=cert,
        HAPROXY_TLS_BIND=f"127.0.0.1:{port}",
        HAPROXY_HTTPS_PORT=port,
        IO_COOKIE_SECURE="true",
    )
    return stack, f"https://127.0.0.1:{port}", cert


def test_tls_redirects_sets_hsts_and_secure_cookie_and_clients_work(tls_stack, clients):
    stack, https, cert = tls_stack
    http = stack.status()["url"]
    redirect = requests.get(http + "/healthz?a=1", allow_redirects=False, timeout=5)
    assert redirect.status_code == 308 and redirect.headers["Location"] == f"{https}/healthz?a=1"
    assert "Strict-Transport-Security" not in redirect.headers
    secure = requests.get(https + "/healthz", verify=False, timeout=5)
    assert secure.status_code == 200 and secure.headers["Strict-Transport-Security"].startswith("max-age=")
    handshake = requests.get(https + HANDSHAKE, verify=False, timeout=5)
    cookies = handshake.headers["Set-Cookie"]
    assert re.search(r"(^|, )io=app\d~[\w-]+; Path=/; HttpOnly; SameSite=Lax; Secure(,|$)", cookies), cookies
    # the app sees X-Forwarded-Proto https: the https page's own origin passes the same-origin check
    assert requests.get(https + HANDSHAKE, headers={"Origin": https}, verify=False, timeout=5).status_code == 200
    assert requests.get(https + HANDSHAKE, headers={"Origin": http}, verify=False, timeout=5).status_code == 400
    for transports, verify in ((["polling"], False), (None, False), (None, cert)):
        # ssl_verify=False alone is not enough where REQUESTS_CA_BUNDLE is set (requests lets it win over
        # session.verify): hand the client a session that ignores the environment
        session = requests.Session()
        session.trust_env, session.verify = False, verify
        # the clients' own log (shown if the test fails): which request failed, and how
        client_log = logging.getLogger(f"tls-client.{transports}.{verify is not False}")
        client_log.setLevel(logging.INFO)
        client = clients(
            https,
            transports=transports,
            ssl_verify=verify is not False,
            http_session=session,
            logger=client_log,
            engineio_logger=client_log,
        )
        assert client.call("echo", "over tls") == "over tls"
        assert client.client.transport() == (transports or ["websocket"])[0]
        assert client.call("whoami") == client.call("whoami")  # stays on one instance: the Secure cookie works


def test_dev_cert_makes_a_private_pem_for_localhost(tmp_path):
    out = subprocess.run(
        [str(ROOT / "scripts" / "dev-cert"), str(tmp_path / "x.pem"), "example.test"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert (tmp_path / "x.pem").stat().st_mode & 0o777 == 0o600 and out.endswith("x.pem")
    text = subprocess.run(
        ["openssl", "x509", "-in", out, "-noout", "-ext", "subjectAltName"], check=True, capture_output=True, text=True
    ).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text and "DNS:example.test" in text
    assert "PRIVATE KEY" in (tmp_path / "x.pem").read_text()
