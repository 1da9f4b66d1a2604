"""The layers go one way: app.py, wsgi.py -> your packages -> deployment -> libraries; inside deployment,
extension -> operations -> settings -> patches, and the patches use only the libraries.

The contracts are import-linter's, in pyproject.toml ([tool.importlinter]); `lint-imports` runs them too.
Imports inside functions count like the others, so a cycle cannot hide in one.
Each check runs in its own process (a copy's packages must not resolve to the ones this process imported),
with the cache off: nothing is written into the repository.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
# What the contracts read: the config, the root packages, and the modules that are imported by name only.
CHECKED = ["pyproject.toml", "app.py", "wsgi.py", "application", "examples", "deployment", "demo"]


def lint(directory):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", LINT], cwd=directory, env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def copy(tmp_path, without=()):
    for name in CHECKED:
        source = ROOT / name
        if name in without or not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def test_contracts_are_kept():
    returncode, output = lint(ROOT)
    assert returncode == 0, output


def test_still_kept_without_demo(tmp_path):
    """The "make it yours" steps delete demo/ (and bench/, which is not a package)."""
    returncode, output = lint(copy(tmp_path, without=["demo"]))
    assert returncode == 0, output


# A forbidden import added to a copy, and the broken contract's line that must report it.
VIOLATIONS = {
    "patch imports operations": (
        "deployment/patches/pins.py",
        "import deployment.operations\n",
        "deployment.patches.pins -> deployment.operations",
    ),
    "patch imports settings": (
        "deployment/patches/websocket_writes.py",
        "from deployment.settings import Settings\n",
        "deployment.patches.websocket_writes -> deployment.settings",
    ),
    "operations import the extension": (
        "deployment/operations/health.py",
        "from deployment.extension import Deployment\n",
        "deployment.operations.health -> deployment.extension",
    ),
    "deployment imports app.py inside a function": (
        "deployment/operations/health.py",
        "def hidden():\n    from app import create_app\n\n    return create_app\n",
        "deployment.operations.health -> app",
    ),
    "deployment imports your package": (
        "deployment/extension.py",
        "from application import settings\n",
        "deployment.extension -> application",
    ),
    "your package imports demo": (
        "application/routes.py",
        "import demo\n",
        "application.routes -> demo",
    ),
    "a cycle hidden in a function": (  # deployment.operations.auth imports message_queue at the top
        "deployment/operations/message_queue.py",
        "def hidden():\n    from deployment.operations import auth\n\n    return auth\n",
        "No cycles are allowed in deployment.operations.\nIt could be made acyclic by removing 1 dependency:\n\n"
        "- .message_queue -> .auth",
    ),
}


@pytest.mark.parametrize("case", VIOLATIONS)
def test_forbidden_import_is_reported(tmp_path, case):
    """The control: the same check fails once a copy has one forbidden import."""
    path, code, reported = VIOLATIONS[case]
    directory = copy(tmp_path)
    with open(directory / path, "a") as module:
        module.write("\n\n" + code)
    returncode, output = lint(directory)
    assert returncode == 1, output
    assert reported in output, output
