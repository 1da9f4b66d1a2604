"""Your application: Socket.IO events (events.py), the demo page (demo.py), login (auth.py), the emit CLI
(emit_cli.py) and the settings read from the environment (config.py). Add your own modules here."""
