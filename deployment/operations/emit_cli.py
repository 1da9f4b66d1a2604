"""`flask --app app emit EVENT DATA [--room R] [--namespace /]`: push an event to the clients from outside the
app (a shell, cron, a deploy hook), through the same Redis message queue the instances use.

    flask --app app emit announcement '{"text": "maintenance at 18:00"}'
    flask --app app emit announcement '"to one room"' --room ops --namespace /chat
    python -m deployment.operations.emit_cli announcement '{"text": "hi"}'     # the same without loading the app

DATA is JSON. The emitter is a write-only python-socketio RedisManager: it publishes and never receives, so
callbacks are impossible. It reads REDIS_URL (with REDIS_PASSWORD / REDIS_PASSWORD_FILE) and SOCKETIO_CHANNEL
like the app. Exit codes: 0 sent, 1 Redis unreachable or no REDIS_URL, 2 bad arguments (e.g. DATA not JSON).
"""

from __future__ import annotations

import json
import os
import sys

import click
import redis

from deployment.operations.message_queue import close_client, queue_manager, redis_client
from deployment.settings import ConfigError, env_bool, env_number, env_secret, with_password


def queue_settings():
    """REDIS_URL, SOCKETIO_CHANNEL and the recovery window (None: CONNECTION_STATE_RECOVERY off): the app's
    settings inside `flask`, else the environment."""
    try:
        from flask import current_app

        settings = current_app.config["SETTINGS"]
        window = settings.recovery_max_disconnection if settings.connection_state_recovery else None
        return settings.redis_url, settings.message_queue_channel, window
    except (RuntimeError, KeyError):  # no app context: `python -m deployment.operations.emit_cli`
        pass
    try:
        password = env_secret(os.environ, "REDIS_PASSWORD")
        recovery = env_bool(os.environ, "CONNECTION_STATE_RECOVERY", False)
        window = env_number(os.environ, "RECOVERY_MAX_DISCONNECTION", 120.0, kind=float, minimum=1)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    url = with_password(os.environ.get("REDIS_URL", "").strip(), password)
    return url, os.environ.get("SOCKETIO_CHANNEL", "").strip() or "flask-socketio", window if recovery else None


def emit_event(url, channel, event, data, room=None, namespace="/", recovery_window=None):
    """Publishes one event; returns how many processes (app instances) were subscribed to receive it."""
    client = redis_client(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()  # python-socketio logs a publish failure and carries on: fail loudly here instead
        subscribers = client.pubsub_numsub(channel)[0][1]
    finally:
        close_client(client)
    # its connection comes from redis_client(), so Sentinel URLs work the same way
    # with recovery_window (CONNECTION_STATE_RECOVERY) through the recovery stream, so a client away gets it too
    manager = queue_manager(url, channel=channel, write_only=True, recovery_window=recovery_window)
    manager.emit(event, data, namespace=namespace, room=room)
    return subscribers


@click.command("emit")
@click.argument("event")
@click.argument("data")
@click.option("--room", default=None, help="Only the clients in this room (default: every client of the namespace).")
@click.option("--namespace", default="/", show_default=True, help="Socket.IO namespace.")
def emit(event, data, room, namespace):
    """Emit EVENT with DATA (JSON) to the clients of every instance, through Redis."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not JSON ({exc}); quote strings twice, e.g. '\"hello\"'", param_hint="DATA"
        ) from None
    if not namespace.startswith("/"):
        raise click.BadParameter("must start with /", param_hint="--namespace")
    url, channel, recovery_window = queue_settings()
    if not url:
        raise click.ClickException("REDIS_URL is not set: without a message queue there is no one to emit to")
    try:
        subscribers = emit_event(
            url, channel, event, payload, room=room, namespace=namespace, recovery_window=recovery_window
        )
    except ConfigError as exc:  # e.g. CONNECTION_STATE_RECOVERY=true on a version recovery was not verified against
        raise click.ClickException(str(exc)) from None
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis: {type(exc).__name__}: {exc}") from None
    target = f"room {room!r}" if room else "every client"
    click.echo(f"emitted {event!r} to {target} of namespace {namespace} ({subscribers} instance(s) subscribed)")


if __name__ == "__main__":
    sys.exit(emit.main(prog_name="python -m deployment.operations.emit_cli"))
