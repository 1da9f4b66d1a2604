"""The app's extension objects, made here unbound and bound in create_app() (the Flask `extensions.py`
convention): any module can `from application.extensions import socketio` (or `deployment`) without importing
app.py, so `python app.py` and gunicorn see the same objects."""

from flask_socketio import SocketIO

from deployment.extension import Deployment

socketio = SocketIO()  # one per process; deployment.init_app() binds it with the deployment's settings
deployment = Deployment()  # the deployment layer: Redis queue, io cookie, limits, metrics, health, sign-in
