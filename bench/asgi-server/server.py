"""Reference server for bench/run: python-socketio AsyncServer on uvicorn (uvloop, httptools) with
AsyncRedisManager; the same events and `io` cookie as the template, plus /readyz for HAProxy's check.

    PORT=8001 INSTANCE_NAME=asgi1 REDIS_URL=redis://127.0.0.1:6379/0 bench/.venv-asgi/bin/python bench/asgi-server/server.py
"""

import json
import os

import socketio
import uvicorn

INSTANCE = os.environ.get("INSTANCE_NAME", f"asgi-{os.getpid()}")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=socketio.AsyncRedisManager(REDIS_URL),
    # python-engineio writes the keys verbatim
    cookie={"name": "io", "path": "/", "HttpOnly": True, "SameSite": "Lax"},
    cors_allowed_origins=None,
    ping_interval=25,
    ping_timeout=20,
    max_http_buffer_size=1_000_000,
)


@sio.on("echo")
async def echo(sid, data=None):
    return data


@sio.on("whoami")
async def whoami(sid, data=None):
    return INSTANCE


@sio.on("broadcast")
async def broadcast(sid, data=None):
    await sio.emit("broadcast", data)  # every client of every process, through Redis
    return {"ok": True}


async def health(scope, receive, send):
    body = json.dumps({"status": "ok", "instance": INSTANCE}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def not_found(scope, receive, send):
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def other(scope, receive, send):
    if scope["type"] == "http" and scope["path"] in ("/readyz", "/healthz"):
        return await health(scope, receive, send)
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    return await not_found(scope, receive, send)


app = socketio.ASGIApp(sio, other_asgi_app=other)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8001")),
        loop="uvloop",
        http="httptools",
        ws="websockets",
        log_level=os.environ.get("LOG_LEVEL", "warning").lower(),
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=3,
    )
