# examples/ticker.py: a background task that emits `tick` to the clients of /ticker every TICK_SECONDS,
# started by the first client that connects (so `flask` commands and tests that never connect start none).

from flask import current_app

from application.extensions import socketio

NAMESPACE = "/ticker"
TICK_SECONDS = 1.0
state = {"started": False}  # one task per process


def tick_forever(instance):
    count = 0
    while True:
        socketio.sleep(TICK_SECONDS)  # never time.sleep: socketio.sleep lets the other clients run meanwhile
        count += 1
        socketio.emit("tick", {"count": count, "instance": instance}, namespace=NAMESPACE)


@socketio.on("connect", namespace=NAMESPACE)
def start_ticking(auth=None):
    if not state["started"]:  # nothing yields between this check and the next line: one task, even under gevent
        state["started"] = True
        socketio.start_background_task(tick_forever, current_app.config["SETTINGS"].instance_name)
