"""The code that docs/extending.md walks through, kept runnable: tests/test_examples_extending.py tests it."""
