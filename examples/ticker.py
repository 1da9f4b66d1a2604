# examples/ticker.py: a background task that emits `tick` every `interval` seconds until stopped.

import threading


def start_ticker(socketio, instance, interval=5.0, namespace="/"):
    """Starts the loop as a background task (a greenlet under gevent); returns the Event that stops it."""
    stop = threading.Event()  # gevent-friendly once gunicorn's worker has monkey-patched threading

    def run():
        count = 0
        while not stop.is_set():
            socketio.sleep(interval)  # never time.sleep: socketio.sleep yields to the other clients
            count += 1
            socketio.emit("tick", {"count": count, "instance": instance}, namespace=namespace)

    socketio.start_background_task(run)
    return stop
