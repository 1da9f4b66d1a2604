"""Liveness and readiness routes for HAProxy and orchestrators (never /socket.io/: that makes sessions)."""

import threading

import redis
from flask import Blueprint, current_app, jsonify, request

from deployment.operations.message_queue import redis_client

bp = Blueprint("health", __name__)

# Set when the instance starts draining for shutdown: /readyz turns 503 so HAProxy sends new clients elsewhere.
draining = threading.Event()


def message_queue_state():
    url = current_app.config["SETTINGS"].redis_url
    if not url:
        return "none"
    client = current_app.extensions.get("redis_probe")
    if client is None:
        client = redis_client(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        current_app.extensions["redis_probe"] = client
    try:
        client.ping()
        return "ok"
    except redis.RedisError as exc:
        return f"down: {type(exc).__name__}"


def connection_counts():
    """Socket.IO clients connected to this instance, and Engine.IO sessions (connected or not)."""
    server = current_app.extensions["socketio"].server
    clients = server.manager.rooms.get("/", {}).get(None, {})
    return {"clients": len(clients), "engineio_sessions": len(server.eio.sockets)}


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok", instance=current_app.config["SETTINGS"].instance_name)


@bp.get("/readyz")
def readyz():
    # The queue's state is reported, never fatal: a Redis outage must not take every instance out at once.
    ready = not draining.is_set()
    body = dict(
        ready=ready,
        instance=current_app.config["SETTINGS"].instance_name,
        message_queue=message_queue_state(),
        **connection_counts(),
    )
    # HAProxy's check asks for ?draining=404: `http-check disable-on-404` turns a 404 into a soft stop (no new
    # clients, open sockets kept), while a 503 would mark it DOWN and cut every socket at once (shutdown-sessions)
    status = 200 if ready else (404 if request.args.get("draining") == "404" else 503)
    return jsonify(body), status
