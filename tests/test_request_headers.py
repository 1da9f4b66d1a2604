"""realtime/request_headers.py gives pywsgi the same header message as the email package's parser (gevent's
own headers_factory), on the requests real clients send and on random and malformed ones; and it is the
parser the template's app installs (every test through a real stack then parses with it)."""

import io
import random

import pytest
from gevent import pywsgi

from realtime import request_headers

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
    state = {k: v for k, v in vars(message).items() if k != "defects"}
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
    assert described(request_headers.parse(fast)) == described(pywsgi.headers_factory(email))
    assert fast.read() == email.read()  # and the body is left where it was


def test_same_message_on_random_headers():
    rng = random.Random(20261126)
    fast_path = 0
    for _ in range(3000):
        raw = random_headers(rng)
        assert described(request_headers.parse(io.BytesIO(raw))) == described(
            pywsgi.headers_factory(io.BytesIO(raw))
        ), raw
        fast_path += all(request_headers.PLAIN_HEADER.fullmatch(line) for line in raw.splitlines(True)[:-1])
    assert 300 < fast_path < 3000  # both paths were taken


def test_too_many_headers_is_refused_as_before():
    raw = b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(Exception) as fast:
        request_headers.parse(io.BytesIO(raw))
    with pytest.raises(Exception) as email:
        pywsgi.headers_factory(io.BytesIO(raw))
    assert type(fast.value) is type(email.value) and str(fast.value) == str(email.value)


def test_the_template_app_installs_it(app):
    assert pywsgi.WSGIHandler.MessageClass is request_headers.message_class
