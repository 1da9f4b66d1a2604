"""The code that docs/extending.md walks through, kept runnable: tests/deployment/test_examples_extending.py tests it."""
