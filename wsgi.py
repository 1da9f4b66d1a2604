"""gunicorn's entry point: patch the standard library for gevent before anything else imports it."""

from gevent import monkey

monkey.patch_all()

from app import create_app  # noqa: E402

app = create_app()
