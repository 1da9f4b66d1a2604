"""Your application: everything here is yours to edit, replace or delete.

    extensions.py  the SocketIO object (import it from here, never from app.py)
    settings.py    your settings, read from environment variables
    events.py      your Socket.IO events
    routes.py      your Flask routes

app.py's create_app() puts them together with the deployment layer (deployment/).
"""
