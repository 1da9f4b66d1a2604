"""The fast tier (`scripts/test --fast`, `pytest -m fast`) needs no service, no root and no network: it is run
here in a network namespace with only loopback, as root without a single capability, with the tools of the
full tier (haproxy, redis, node, docker, chromium, kubectl, ...) taken off the PATH. Control: a test of the
`stack` tier, run the same way, is skipped because haproxy and redis-server are not there.

docs/testing.md gives the time the fast tier takes (the suite's own report; no timed assertion here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = re.compile(
    r"^(haproxy.*|redis-.*|node|nodejs|npm|npx|docker.*|dockerd|containerd.*|runc|ctr|chromium.*|chromedriver"
    r"|kubectl|promtool|prometheus|debootstrap)$"
)

pytestmark = pytest.mark.root  # unshare and setpriv


def restricted_path(folder):
    """A folder of links to every program on this PATH but the full tier's."""
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if not HIDDEN.match(name) and not (folder / name).exists():
                (folder / name).symlink_to(Path(directory) / name)
    return folder


def run_restricted(tmp_path, *pytest_args):
    path = restricted_path(tmp_path / "bin")
    inner = (
        "ip link set lo up && exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs "
        f"env -i PATH={path} HOME={tmp_path} LANG=C.UTF-8 {sys.executable} -m pytest -p no:cacheprovider "
        + " ".join(pytest_args)
    )
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def test_the_fast_tier_passes_without_services_root_or_network(tmp_path):
    result = run_restricted(tmp_path, "-m", "fast", "-q", "--durations=5")
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary, summary
    assert "tier: needs" not in result.stdout, "a fast test was skipped for a tool of the full tier"


def test_control_a_stack_test_run_the_same_way_is_skipped_for_haproxy(tmp_path):
    result = run_restricted(tmp_path, "-q", "-rs", "tests/deployment/test_stack_e2e.py", "-k", "cookie", "-x")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "stack tier: needs haproxy, redis-server" in result.stdout, result.stdout[-3000:]
    assert re.search(r"\d+ skipped", result.stdout) and " passed" not in result.stdout.splitlines()[-1]
