"""The two tiers of the suite (markers registered in pyproject.toml):

- `fast`: needs no service, no root and no network (Flask-SocketIO's test client, unit tests, subprocesses of
  this repo's Python): `scripts/test --fast`, well under a minute. Every test that carries none of the marks
  below is fast.
- the full tier, `scripts/test` and `.ci/run`: also the tests marked `stack` (HAProxy, Redis, gunicorn
  processes), `docker` (a Docker engine), `browser` (headless Chromium), `node` (Node's socket.io-client) and
  `root` (network namespaces, dockerd).

A test is marked by the fixtures it uses (SERVICE_FIXTURES) or by its module (`pytestmark`). Where what a mark
needs is missing, the test is skipped with the reason (`-rs` prints them), except in CI (CI=true), where it
fails: a plain `pytest` on a laptop without Docker or root runs what it can and says what it left out.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FULL_TIER = ("stack", "docker", "browser", "node", "root")
SERVICE_FIXTURES = {
    "make_stack": "stack",  # tests/deployment/conftest.py: native stacks (HAProxy, Redis, gunicorn)
    "own_stack": "stack",
    "stack": "stack",
    "docker_engine": "docker",
    "browser": "browser",  # demo/tests/conftest.py: headless Chromium
}
NEEDS = {
    "stack": ["haproxy", "redis-server"],
    "browser": ["chromium", "chromedriver"],
    "node": ["node"],
    "docker": ["docker"],
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for kind in sorted({SERVICE_FIXTURES[f] for f in item.fixturenames if f in SERVICE_FIXTURES}):
            item.add_marker(kind)
        if not any(item.get_closest_marker(kind) for kind in FULL_TIER):
            item.add_marker("fast")


def missing(kind):
    if kind == "root":
        return None if os.geteuid() == 0 else "needs root (network namespaces, dockerd)"
    absent = [tool for tool in NEEDS.get(kind, []) if not shutil.which(tool)]
    if kind == "node" and not (ROOT / "tests" / "deployment" / "node" / "node_modules").is_dir():
        absent.append("tests/deployment/node/node_modules (npm ci)")
    return f"needs {', '.join(absent)}" if absent else None


def pytest_runtest_setup(item):
    for kind in FULL_TIER:
        if item.get_closest_marker(kind) and (why := missing(kind)):
            message = f"{kind} tier: {why}; scripts/test installs it (scripts/test --fast runs the fast tier only)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)


def pytest_xdist_make_scheduler(config, log):
    """scripts/test runs the suite on pytest-xdist workers: a module's tests on one worker (its module and session
    fixtures start once there), and every module with "docker" in its name on one worker together (one engine,
    which a worker starts and stops, one swarm, the images built once). xdist's own `--dist loadgroup` would do
    it with marks, but it renames node ids in a way pytest 9 no longer reads."""
    if config.getoption("markexpr") == "fast":  # no costly fixture in the fast tier: xdist's own, test by test
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndDocker(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return "docker" if "docker" in module.rsplit("/", 1)[-1] else module

    return ModulesAndDocker(config, log)
