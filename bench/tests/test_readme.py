"""README.md, the project's front page: what it promises is checked here (a user who replaces the README deletes
bench/ too, and these checks with it)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_first_lines_give_the_two_commands():
    start, tests = [line for line in README.splitlines()[1:6] if line.strip()][:2]
    assert start.startswith("Start the stack: `docker compose up --build`") and "`scripts/stack up`" in start
    assert tests.startswith("Run the tests: `scripts/test`")
    for script in ("scripts/stack", "scripts/test", "docker-compose.yml"):
        assert (ROOT / script).is_file(), script


def test_it_is_a_front_page():
    assert len(README.encode()) <= 8192, f"README.md is {len(README.encode())} bytes: details go to docs/"
    assert not re.search(r"\b[0-9a-f]{7,40}\b", README), "no commit hashes on the front page"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "no dated runs on the front page: docs/performance.md"
    for heading in ("## What is where", "## How the `io` cookie keeps a client on one process", "## Make it yours"):
        assert heading in README


def test_its_code_is_the_code_of_the_repo():
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        sources = [path.read_text() for path in (ROOT / "application").glob("*.py")]
        assert any(block in source for source in sources), f"README shows code that is not in application/:\n{block}"


def test_what_it_names_exists():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).exists(), target
    for path in re.findall(r"`((?:[\w.-]+/)+[\w.-]*)`", README):
        assert (ROOT / path).exists(), path
    for folder in ("application/", "tests/app/", "demo/", "deployment/", "tests/deployment/", "bench/", "haproxy/"):
        assert (ROOT / folder).is_dir() and folder in README
