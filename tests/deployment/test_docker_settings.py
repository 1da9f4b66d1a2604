"""Settings in .env reach the compose stack for real, and HTTPS through docker-compose.tls.yml.

A copy of the repo whose `.env` says `REQUIRE_LOGIN=true` and `PING_INTERVAL=7`, with a self-signed
certificate from scripts/dev-cert in haproxy/certs/, started with `-f docker-compose.yml -f
docker-compose.tls.yml` on a real engine and reached only through HAProxy's published ports. The controls
are the repo's own compose project (test_docker_compose.py: the default ping interval, anonymous clients
connected) and, here, a signed-in client that connects where the anonymous one is refused."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests
import socketio
from docker_stack import ComposeStack, copy_of_the_repo, nofile_limit
from native_stack import free_port

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "rtsettings"
DOTENV = "REQUIRE_LOGIN=true\nPING_INTERVAL=7\n"


@pytest.fixture(scope="module")
def configured(docker_images, tmp_path_factory):
    tree = tmp_path_factory.mktemp("settings") / "repo"
    copy_of_the_repo(tree)
    (tree / ".env").write_text((tree / ".env").read_text() + DOTENV)
    cert = tree / "haproxy" / "certs" / "site.pem"
    subprocess.run([str(tree / "scripts" / "dev-cert"), str(cert)], check=True, capture_output=True)
    cert.chmod(0o644)  # the HAProxy image's user reads it (docs/docker.md#https)
    env = {**docker_images, "NOFILE_LIMIT": nofile_limit(docker_images), "APP_REPLICAS": "2"}
    stack = ComposeStack(
        PROJECT, env, files=["docker-compose.tls.yml"], directory=tree, tls_port=free_port(), cafile=str(cert)
    )
    stack.down("-v")
    stack.up("--build")
    yield stack
    stack.down("-v")


def handshake(stack):
    status, headers, body = stack.get("/socket.io/?EIO=4&transport=polling")
    assert status == 200
    return headers, json.loads(body.decode()[1:])


def test_ping_interval_from_dotenv_is_in_the_handshake(configured):
    _, opened = handshake(configured)
    assert opened["pingInterval"] == 7000  # the default, 25000, is what the repo's own stack sends


def test_https_serves_the_stack_and_marks_the_io_cookie_secure(configured):
    headers, opened = handshake(configured)
    cookies = headers.get_all("Set-Cookie")
    io_cookie = next(c for c in cookies if c.startswith("io="))
    assert "; Secure" in io_cookie, io_cookie
    assert "max-age=" in headers["Strict-Transport-Security"]
    assert opened["upgrades"] == ["websocket"]


def test_plain_http_is_redirected_to_https(configured):
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(f"http://127.0.0.1:{configured.port}/socket.io/?EIO=4&transport=polling", timeout=5)
    assert answer.value.code == 308
    assert answer.value.headers["Location"].startswith(f"https://127.0.0.1:{configured.tls_port}/socket.io/")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def client_session(stack):
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, where set, replaces `verify`
    session.verify = stack.cafile  # the self-signed certificate, for polling and for the WebSocket
    return session


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]], ids=["polling", "websocket"])
def test_require_login_from_dotenv_refuses_an_anonymous_client(configured, transports):
    anonymous = socketio.Client(http_session=client_session(configured), reconnection=False)
    refusals = []
    anonymous.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        anonymous.connect(configured.url, transports=transports, wait_timeout=10)
    assert refusals and "sign in first" in str(refusals[0]), refusals  # the login gate's refusal (auth.py)
    # control: the same client, signed in, connects and is answered by an instance
    session = client_session(configured)
    assert session.post(configured.url + "/login", json={"name": "ann"}, timeout=10).status_code == 200
    signed_in = socketio.Client(http_session=session, reconnection=False)
    signed_in.connect(configured.url, transports=transports, wait_timeout=10)
    try:
        assert signed_in.call("whoami", timeout=10)  # an instance name
        assert signed_in.transport() == transports[-1]
    finally:
        signed_in.disconnect()
