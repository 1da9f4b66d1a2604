"""The deployment layer: everything that makes a Flask-SocketIO app run as several processes behind HAProxy.

You do not edit this package: you take the next version of the template's `deployment/` as a whole
(deployment/CHANGELOG.md). Your app uses it as a Flask extension, in app.py:

    socketio = SocketIO()                        # application/extensions.py
    from deployment.extension import Deployment

    deployment = Deployment()
    deployment.init_app(app, socketio)           # settings from the environment (deployment/settings.py)

`init_app` binds the SocketIO object to the app with the settings' options (Redis message queue, the `io`
cookie HAProxy sticks on, CORS, ping interval and timeout), then adds what every instance needs: health
routes, /metrics, sign-in (REQUIRE_LOGIN), per-connection limits, connection logs, security headers,
connection state recovery, the stack's probe events (PROBES) and the speedups
(deployment/operations/speedups.py).

Layers (checked by tests/deployment/test_architecture.py): your code -> deployment -> libraries; inside
it, deployment.operations may use deployment.patches, and deployment.patches uses only the libraries.
"""

# Importing the package imports nothing else: gunicorn.conf.py reads deployment.settings in gunicorn's master,
# which must not load Flask, redis or gevent before the worker patches them.
__version__ = "2.3.0"
