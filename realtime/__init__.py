"""The template's building blocks; app.py wires them together."""
