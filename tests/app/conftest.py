"""Fixtures for your tests, in the style of Flask's tutorial: `app` is app.py's create_app() in development mode
(no Redis, no HAProxy), `client` Flask's test client, `socketio_client` a Flask-SocketIO test client of the
default namespace and `new_socketio_client` makes more (other namespaces, auth). No server, no network: fast.

    .venv/bin/pytest tests/app
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo's root: app.py, application/

from app import create_app  # noqa: E402
from application.extensions import socketio  # noqa: E402
from deployment.settings import Settings  # noqa: E402


@pytest.fixture
def app():
    """Your app as create_app() makes it; the deployment's settings fixed here, yours from the environment."""
    return create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit"}))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def new_socketio_client(app):
    """new_socketio_client(namespace=None, auth=None, flask_test_client=None): a connected Socket.IO test client
    (flask_test_client: a `client` whose cookies, e.g. a sign-in, go with the handshake)."""
    made = []

    def connect(**kwargs):
        made.append(socketio.test_client(app, **kwargs))
        return made[-1]

    yield connect
    for test_client in made:
        for namespace in [ns for ns in list(test_client.connected) if test_client.is_connected(ns)]:
            test_client.disconnect(namespace)


@pytest.fixture
def socketio_client(new_socketio_client):
    return new_socketio_client()
