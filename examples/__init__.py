"""The code that docs/extending.md walks through, one module per thing you add: copy a module into application/
and register it in app.py as the guide says. tests/app/test_examples.py has their tests (Flask-SocketIO's test
client), and tests/deployment/test_examples_extending.py does what the guide says in a copy of the repo and runs
it under `python app.py` and under gunicorn."""
