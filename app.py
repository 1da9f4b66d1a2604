"""Your app: create_app() puts together your code (application/) and the deployment layer (deployment/).

python app.py            one development process on http://127.0.0.1:5000, no Redis, no HAProxy
gunicorn (wsgi.py)       one instance of the stack; HAProxy and Redis join the instances (README.md)
"""

import os

import demo  # the demo chat (delete demo/ and the two lines naming it: README.md, Make it yours)
from application import events, routes, settings  # noqa: F401  (events registers its handlers on import)
from application.extensions import deployment, socketio
from deployment.extension import RealtimeFlask  # Flask, faster on Socket.IO events (same answers)


def create_app(deployment_settings=None):
    """deployment_settings: a deployment.settings.Settings (tests); default: read from the environment."""
    app = RealtimeFlask(__name__)
    app.config.update(settings.from_env())
    app.register_blueprint(routes.bp)
    demo.init_app(app, socketio)
    deployment.init_app(app, socketio, deployment_settings)  # binds socketio; last, so it sees every handler
    return app


if __name__ == "__main__":
    # Local development: one process, no queue, no HAProxy.
    os.environ.setdefault("APP_ENV", "development")
    dev_app = create_app()
    socketio.run(dev_app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
