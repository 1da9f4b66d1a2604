"""deployment/patches/pywsgi_speedups.py: pywsgi gets the same header message as from the email package's parser
(gevent's own headers_factory), on the requests real clients send and on random and malformed ones; responses are the
same bytes as gevent's, in fewer send() calls; and the template's app installs both (every test through a real
stack then runs on them)."""

import io
import random
import re

import gevent
import gevent.socket
import pytest
from gevent import pywsgi

from deployment.patches import pywsgi_speedups

CHROMIUM_POLL = (
    b'Host: 127.0.0.1:8080\r\nConnection: keep-alive\r\nsec-ch-ua-platform: "Linux"\r\n'
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0\r\n"
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"\r\nsec-ch-ua-mobile: ?0\r\nAccept: */*\r\n'
    b"Sec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n"
    b"Referer: http://127.0.0.1:8080/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\nCookie: io=app1~Xyz_AAAB; uid=42; randomId=0.123\r\n\r\n"
)
NODE_POST = (
    b"Content-Type: text/plain;charset=UTF-8\r\nAccept: */*\r\nCookie: io=app2~abc\r\n"
    b"Host: localhost:8080\r\nConnection: keep-alive\r\nContent-Length: 24\r\n\r\n"
)
PYTHON_UPGRADE = (
    b"Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nX-Empty:\r\nX-Spaces:  \t padded \t \r\n\r\n"
)
MALFORMED = [
    b"Host: x\r\nX-Folded: first\r\n  continued\r\n\r\n",  # obsolete line folding
    b"Host: x\r\nNo colon here\r\n\r\n",
    b"Host: x\r\nBad Name: 1\r\n\r\n",
    b": no name\r\nHost: x\r\n\r\n",
    b"From nobody\r\nHost: x\r\n\r\n",
    b"Host: x\nX-Bare-LF: 1\n\n",
    b"Host: x\r\nX-Bare-CR: a\rb\r\n\r\n",
    b"Host: x\r\nX-Control: a\x0bb\x1cc\r\n\r\n",
    b"Host: x\r\nX-Nul: a\x00b\r\n\r\n",
    b"Host: x\r\nX-Latin1: caf\xe9\r\n\r\n",
    b"Host: x\r\n",  # the connection ended before the blank line
    b"",
    b"\r\n",
    b"Host: x\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",  # over http.client's line limit
]


def described(message):
    """Everything pywsgi and its callers can see of a message (defects by type: they compare by identity)."""
    state = {k: v for k, v in vars(message).items() if k not in ("defects", "_first")}
    return state, [type(d) for d in message.defects], message.get("host"), list(message.headers)


def random_headers(rng):
    token = "!#$%&'*+-.^_`|~" + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    value = [chr(c) for c in range(0x20, 0x7F)] + ["\t", "é", "ÿ"]
    strange = ["\r", "\n", "\x0b", "\x0c", "\x1c", "\x85", "\x00", "\r\n ", " : "]
    lines = []
    for _ in range(rng.randrange(0, 12)):
        name = "".join(rng.choice(token) for _ in range(rng.randrange(1, 12)))
        text = "".join(rng.choice(value) for _ in range(rng.randrange(0, 30)))
        line = f"{name}:{text}"
        if rng.random() < 0.2:  # now and then something the fast path must leave to the email package
            at = rng.randrange(len(line) + 1)
            line = line[:at] + rng.choice(strange) + line[at:]
        lines.append(line + "\r\n")
    return ("".join(lines) + "\r\n").encode("iso-8859-1")


@pytest.mark.parametrize("raw", [CHROMIUM_POLL, NODE_POST, PYTHON_UPGRADE, *MALFORMED])
def test_same_message_as_the_email_parser(raw):
    fast, email = io.BytesIO(raw + b"body"), io.BytesIO(raw + b"body")
    assert described(pywsgi_speedups.parse(fast)) == described(pywsgi.headers_factory(email))
    assert fast.read() == email.read()  # and the body is left where it was


def test_same_message_on_random_headers():
    rng = random.Random(20261126)
    fast_path = 0
    for _ in range(3000):
        raw = random_headers(rng)
        assert described(pywsgi_speedups.parse(io.BytesIO(raw))) == described(
            pywsgi.headers_factory(io.BytesIO(raw))
        ), raw
        fast_path += bool(pywsgi_speedups.PLAIN_HEADERS.fullmatch(raw.decode("iso-8859-1")))
    assert 300 < fast_path < 3000  # both paths were taken


def lookups(message, name):
    return message.get(name), message.get(name, "-"), message[name], name in message, message.typeheader


def test_lookups_by_name_give_the_email_packages_answers_also_after_changes():
    """PlainMessage looks names up in a dict of first values: the same answers as email's Message.get, also
    after each method that changes the headers (pywsgi deletes Content-Length from chunked requests)."""
    rng = random.Random(11)
    blocks = [CHROMIUM_POLL, NODE_POST, PYTHON_UPGRADE, UNDERSCORES_AND_BODY]
    blocks += [random_headers(rng) for _ in range(500)]
    changes = [
        lambda m: m.__delitem__("content-length"),
        lambda m: m.__setitem__("X-Dup", "3"),
        lambda m: m.set_raw("Host", "other"),
        lambda m: m.replace_header("cookie", "c=3") if "cookie" in m else None,
        lambda m: m.set_boundary("b") if m.get_content_maintype() == "multipart" else m.set_type("text/html"),
    ]
    plain = 0
    for raw in blocks:
        fast, email = pywsgi_speedups.parse(io.BytesIO(raw)), pywsgi.headers_factory(io.BytesIO(raw))
        plain += type(fast) is pywsgi_speedups.PlainMessage
        names = [name for name, _ in email._headers] + ["host", "COOKIE", "content-length", "connection", "absent"]
        for change in [None, *changes]:
            if change is not None:
                change(fast), change(email)
            for name in names + [name.swapcase() for name in names]:
                assert lookups(fast, name) == lookups(email, name), (raw, name)
    assert plain > 200  # the dict was used


def test_too_many_headers_is_refused_as_before():
    raw = b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(Exception) as fast:
        pywsgi_speedups.parse(io.BytesIO(raw))
    with pytest.raises(Exception) as email:
        pywsgi.headers_factory(io.BytesIO(raw))
    assert type(fast.value) is type(email.value) and str(fast.value) == str(email.value)


def test_the_template_app_installs_it(app):
    assert pywsgi.WSGIHandler.MessageClass is pywsgi_speedups.message_class
    assert pywsgi.WSGIHandler._headers is pywsgi_speedups.environ_headers
    assert pywsgi.WSGIHandler._write_with_headers is pywsgi_speedups.write_with_headers
    assert pywsgi.format_date_time is pywsgi_speedups.date_header_value


def app_answering(environ, start_response):
    size = int(environ["PATH_INFO"].strip("/") or 0)
    body = b"x" * size
    if environ.get("QUERY_STRING") == "chunked":  # no length known (a generator): pywsgi sends HTTP/1.1 chunks
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (chunk for chunk in [body])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
    return [body]


def exchange(paths):
    """The raw bytes a real pywsgi server answers to one keep-alive connection (Date headers blanked), and the
    send() and sendall() calls its socket got."""
    calls = {"send": 0, "sendall": 0}
    send, send_all = gevent.socket.socket.send, gevent.socket.socket.sendall
    in_sendall = []

    def counting_send(sock, *args):
        if sock is not client and not in_sendall:  # the server's, not the sends that sendall() makes
            calls["send"] += 1
        return send(sock, *args)

    def counting_sendall(sock, *args):
        if sock is not client:
            calls["sendall"] += 1
        in_sendall.append(True)
        try:
            return send_all(sock, *args)
        finally:
            in_sendall.pop()

    server = pywsgi.WSGIServer(("127.0.0.1", 0), app_answering, log=None)
    server.start()
    client = gevent.socket.create_connection(server.address)
    try:
        gevent.socket.socket.send, gevent.socket.socket.sendall = counting_send, counting_sendall
        reader = client.makefile("rb")
        answers = b""
        for path in paths:
            client.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            with gevent.Timeout(5):
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += reader.readline()
                length = re.search(rb"Content-Length: (\d+)", head)
                if length:
                    body = reader.read(int(length.group(1)))
                else:  # chunked: one chunk, then the last
                    body = b""
                    while not body.endswith(b"0\r\n\r\n"):
                        body += reader.readline()
            answers += head + body
    finally:
        gevent.socket.socket.send, gevent.socket.socket.sendall = send, send_all
        client.close()
        server.stop()
    return re.sub(rb"Date: [^\r]*", b"Date: -", answers), calls


PATHS = ["/13", "/0", "/70000", "/13?chunked", "/5000"]


def test_responses_are_the_same_bytes_with_a_small_body_in_the_headers_write(monkeypatch):
    pywsgi_speedups.install()
    fast, fast_calls = exchange(PATHS)
    monkeypatch.setattr(pywsgi.WSGIHandler, "_write_with_headers", pywsgi_speedups.GEVENT_WRITE_WITH_HEADERS)
    monkeypatch.setattr(pywsgi.WSGIHandler, "_sendall", pywsgi_speedups.GEVENT_SENDALL)
    gevent_own, gevent_calls = exchange(PATHS)
    assert fast == gevent_own and fast.count(b"HTTP/1.1 200 OK") == len(PATHS)
    assert b"Transfer-Encoding: chunked" in fast
    # gevent: a sendall() for the headers, then one per body or chunk (/13, /0, /70000, chunked, /5000)
    assert gevent_calls == {"send": 0, "sendall": 2 + 1 + 2 + 3 + 2}
    # now one send() per write, and a body up to 64 KB in the headers' write (chunks still on their own)
    assert fast_calls == {"send": 1 + 1 + 2 + 3 + 1, "sendall": 0}


class HandlerWith:
    def __init__(self, headers):
        self.headers = headers


UNDERSCORES_AND_BODY = (
    b"Host: x\r\nX_Under: dropped\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nCookie: a=1\r\n"
    b"Cookie: b=2\r\nX-Dup: 1\r\nX-Dup: 2\r\nX-Pad: \t padded \xa0\t\r\n\r\n"
)


def test_the_environ_gets_the_same_headers():
    rng = random.Random(7)
    blocks = [CHROMIUM_POLL, NODE_POST, PYTHON_UPGRADE, UNDERSCORES_AND_BODY, *MALFORMED[:-1]]
    blocks += [random_headers(rng) for _ in range(2000)]
    for raw in blocks:
        fast = list(pywsgi_speedups.environ_headers(HandlerWith(pywsgi_speedups.parse(io.BytesIO(raw)))))
        gevent_own = list(pywsgi_speedups.GEVENT_ENVIRON_HEADERS(HandlerWith(pywsgi.headers_factory(io.BytesIO(raw)))))
        assert fast == gevent_own, raw


def test_the_date_header_is_the_same():
    for timestamp in (0, 1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.0, 1_800_000_000.5, 1_700_000_000.0):
        assert pywsgi_speedups.date_header_value(timestamp) == pywsgi_speedups.GEVENT_FORMAT_DATE_TIME(timestamp)
