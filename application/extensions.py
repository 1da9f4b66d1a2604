"""The app's extension objects, made here unbound and bound in create_app() (the Flask `extensions.py`
convention): any module can `from application.extensions import socketio` without importing app.py."""

from flask_socketio import SocketIO

socketio = SocketIO()  # one per process; deployment.init_app() binds it with the deployment's settings
