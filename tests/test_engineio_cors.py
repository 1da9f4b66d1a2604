"""patches/engineio_cors.py: python-engineio's CORS answers (headers, and the refusal of a foreign origin) are
the same with the allowed-origins list skipped for requests without an Origin header, for every kind of
cors_allowed_origins setting; and the template's app installs it."""

import engineio
import pytest

from patches import engineio_cors

ENVIRONS = [
    {"REQUEST_METHOD": method, "wsgi.url_scheme": "http", "HTTP_HOST": "app.example", **extra}
    for method in ("GET", "POST", "OPTIONS")
    for extra in (
        {},
        {"HTTP_ORIGIN": "http://app.example"},
        {"HTTP_ORIGIN": "https://app.example", "HTTP_X_FORWARDED_PROTO": "https"},
        {"HTTP_ORIGIN": "https://other.example", "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "x-a"},
        {"HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "x-a", "HTTP_X_FORWARDED_HOST": "proxy.example"},
    )
]
SETTINGS = [None, "*", "https://other.example", ["https://other.example", "http://app.example"], [], "null"]


def handshake_status(server, environ):
    statuses = []
    environ = dict(environ, REQUEST_METHOD="GET", QUERY_STRING="EIO=4&transport=polling", PATH_INFO="/")
    server.handle_request(environ, lambda status, headers: statuses.append(status))
    return statuses[0]


@pytest.mark.parametrize("allowed", SETTINGS + [lambda origin: origin == "https://other.example"])
@pytest.mark.parametrize("credentials", [True, False])
def test_same_cors_answers_as_python_engineio(allowed, credentials):
    engineios = engineio.Server(cors_allowed_origins=allowed, cors_credentials=credentials)
    ours = engineio.Server(cors_allowed_origins=allowed, cors_credentials=credentials)
    engineio_cors.install_on(ours)
    statuses = set()
    for environ in ENVIRONS:
        assert ours._cors_headers(dict(environ)) == engineios._cors_headers(dict(environ)), environ
        status = handshake_status(ours, environ)
        assert status == handshake_status(engineios, environ), environ
        statuses.add(status)
    if allowed not in ("*", []):  # both answers were compared: accepted and refused origins
        assert {status[:3] for status in statuses} == {"200", "400"}


def test_the_list_is_not_made_without_an_origin_header(monkeypatch):
    made = []
    monkeypatch.setattr(
        engineio_cors, "ENGINEIO_CORS_ALLOWED_ORIGINS", lambda server, environ: made.append(environ) or []
    )
    server = engineio.Server(cors_allowed_origins=None)
    engineio_cors.install_on(server)
    server._cors_headers(dict(ENVIRONS[0]))
    assert made == []
    server._cors_headers(dict(ENVIRONS[1]))
    assert made == [ENVIRONS[1]]


def test_the_template_app_installs_it(app):
    from app import socketio

    eio = socketio.server.eio
    assert eio._cors_allowed_origins.__func__ is engineio_cors.cors_allowed_origins
    assert type(eio)._cors_allowed_origins is engineio_cors.ENGINEIO_CORS_ALLOWED_ORIGINS  # the class keeps its own
