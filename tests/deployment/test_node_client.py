"""Node's socket.io-client (>= 4.8, `withCredentials: true`) through the template's HAProxy."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "deployment" / "node" / "sio-client.mjs"

# the full tier (tests/conftest.py): this module starts processes of the stack
pytestmark = [
    pytest.mark.stack,
    pytest.mark.node,
    pytest.mark.node,  # node and tests/deployment/node's npm ci (tests/conftest.py skips or fails without)
]


def run_node_clients(count, **options):
    procs = [
        subprocess.Popen(["node", str(SCRIPT), json.dumps(options)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(count)
    ]
    return [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]


def test_socketio_client_version_keeps_cookies_on_upgrade():
    version = json.loads(
        (ROOT / "tests" / "deployment" / "node" / "node_modules" / "socket.io-client" / "package.json").read_text()
    )["version"]
    assert tuple(int(part) for part in version.split(".")[:2]) >= (4, 8)


@pytest.mark.parametrize(
    "transports,expected",
    [(["polling"], "polling"), (["polling", "websocket"], "websocket")],
    ids=["polling-only", "upgrade"],
)
def test_node_clients_with_credentials_stay_on_one_instance(stack, transports, expected):
    results = run_node_clients(
        3,
        url=stack.status()["url"],
        withCredentials=True,
        transports=transports,
        echoes=20,
        waitForUpgrade=expected == "websocket",
    )
    for result in results:
        assert result["errors"] == [] and result["connected"], result
        assert result["echoes"] == 20
        assert len(result["instances"]) == 1  # whoami never changed
        assert result["transport"] == expected


def test_control_node_polling_clients_without_credentials_fail(stack):
    """Without withCredentials the Node client drops the io cookie: HAProxy cannot stick it."""
    results = run_node_clients(3, url=stack.status()["url"], withCredentials=False, transports=["polling"], echoes=20)
    failed = [result for result in results if result["errors"]]
    assert len(failed) >= 2, results
