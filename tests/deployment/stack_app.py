"""The app the stack's in-process tests run: the deployment layer on a bare Flask app, with none of application/
or demo/ (the stack's tests never depend on the user's code; the native and Docker stacks run app.py as shipped).
"""

from flask_socketio import SocketIO

from deployment.extension import Deployment, RealtimeFlask

socketio = SocketIO()  # one per process, like application/extensions.py's


def create_app(settings=None):
    """settings: a deployment.settings.Settings; default: read from the environment."""
    app = RealtimeFlask("stack_app")
    Deployment().init_app(app, socketio, settings)
    return app
