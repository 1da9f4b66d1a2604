"""deployment/patches/: every speedup is pinned to the library versions it was verified against, and switchable.

Each test builds the app in a fresh process (the replacements are process-wide) and reads, for every target a
speedup names in REPLACES, whether the value there comes from the patches package or from the library."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployment.settings import SPEEDUP_NAMES, ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: argv[1] = JSON {"fake_mismatch": name or null}; prints one JSON line.
PROBE = r"""
import importlib, json, logging, sys, types
options = json.loads(sys.argv[1])
import deployment.patches
from deployment.settings import SPEEDUP_NAMES
from deployment.operations.speedups import module_of
modules = {name: module_of(name) for name in SPEEDUP_NAMES}
faked = options["fake_mismatch"]
if faked:
    module = modules[faked]
    first = next(iter(module.VERIFIED))
    module.VERIFIED = {**module.VERIFIED, first: ("0.0.0.fake",)}
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("patches").addHandler(Keep())
from stack_app import create_app, socketio
app = create_app()
roots = {"app": app, "socketio": socketio, "server": socketio.server, "eio": socketio.server.eio,
         "manager": socketio.server.manager}

def walk(value, parts):
    for part in parts:
        name, _, key = part.partition("[")
        value = getattr(value, name)
        if key:
            value = value[key.rstrip("]")]
    return value

def resolve(target):
    # an importable dotted path first; else a path from one of the app's live objects (roots)
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            return walk(importlib.import_module(".".join(parts[:cut])), parts[cut:])
        except (ImportError, AttributeError):
            continue
    return walk(roots[parts[0]], parts[1:])

def origin(value):
    if isinstance(value, types.ModuleType):
        return value.__name__
    if isinstance(value, (types.FunctionType, types.MethodType, type)):
        return getattr(value, "__func__", value).__module__
    return type(value).__module__

targets = {name: {t: origin(resolve(t)) for t in module.REPLACES} for name, module in modules.items()}
client = socketio.test_client(app)
echo = client.emit("echo", {"n": 1}, callback=True)
client.disconnect()
print(json.dumps({"targets": targets, "log": lines, "echo": echo,
                  "healthz": app.test_client().get("/healthz").status_code}))
"""


def base_env():
    """The caller's environment without the settings a probe sets itself (the suite may run with SPEEDUPS=off)."""
    return {k: v for k, v in os.environ.items() if k not in ("SPEEDUPS", "SPEEDUPS_SKIP", "REDIS_URL")}


def probe(fake_mismatch=None, **env):

    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps({"fake_mismatch": fake_mismatch})],
        cwd=ROOT,
        env={
            **base_env(),
            "APP_ENV": "development",
            "LOG_LEVEL": "info",
            "PYTHONPATH": str(ROOT / "tests" / "deployment"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def all_on():
    return probe()


def test_every_speedup_is_on_by_default_and_the_app_serves(all_on):
    """The control for the tests below: with the pinned versions every target holds the patches' value."""
    for name, targets in all_on["targets"].items():
        for target, module in targets.items():
            assert module.startswith("deployment.patches."), f"{name}: {target} is {module}'s, not the speedup's"
    assert all_on["echo"] == {"n": 1} and all_on["healthz"] == 200
    assert not any("stays off" in line for line in all_on["log"]), all_on["log"]


def test_speedups_off_leaves_every_library_as_it_is():
    off = probe(SPEEDUPS="off")
    for name, targets in off["targets"].items():
        for target, module in targets.items():
            assert not module.startswith("deployment.patches."), f"SPEEDUPS=off, yet {target} is patched ({name})"
    assert off["echo"] == {"n": 1} and off["healthz"] == 200
    assert any("SPEEDUPS=off" in line for line in off["log"])


@pytest.mark.parametrize("name", SPEEDUP_NAMES)
def test_a_version_it_was_not_verified_against_keeps_it_off(name):
    """A faked mismatch: one line names the speedup and the version found, none of its targets holds its
    replacement, the other speedups stay on (but those that need it, REQUIRES, which say so in one line each),
    and the app still answers."""
    result = probe(fake_mismatch=name)
    mine = result["targets"][name]
    for target, module in mine.items():
        # not its own; a target two speedups replace may hold the other's (idle_websockets and connection_memory)
        assert module != f"deployment.patches.{name}", f"{name} is off, yet {target} is {module}'s"
    dependents = [
        n for n in SPEEDUP_NAMES if name in getattr(importlib.import_module(f"deployment.patches.{n}"), "REQUIRES", ())
    ]
    [line] = [line for line in result["log"] if line.startswith(f"patch {name} stays off: ")]
    assert "is not a version it was verified against" in line
    for dependent in dependents:
        assert [line for line in result["log"] if line.startswith(f"speedup {dependent} stays off: it needs ")]
    assert len([line for line in result["log"] if "stays off" in line]) == 1 + len(dependents), result["log"]
    assert result["echo"] == {"n": 1} and result["healthz"] == 200
    others_on = [
        n
        for n, targets in result["targets"].items()
        if n != name
        and all(m.startswith("deployment.patches.") for m in targets.values())
        and any(m == f"deployment.patches.{n}" for m in targets.values())
    ]
    assert sorted(others_on) == sorted(set(SPEEDUP_NAMES) - {name, *dependents}), others_on


def test_speedups_skip_leaves_out_the_named_ones_only():
    result = probe(SPEEDUPS_SKIP="session_cache,pywsgi_speedups")
    for name, targets in result["targets"].items():
        patched = {m.startswith("deployment.patches.") for m in targets.values()}
        assert patched == ({False} if name in ("session_cache", "pywsgi_speedups") else {True}), name


def test_speedups_skip_with_an_unknown_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="SPEEDUPS_SKIP names unknown speedups \\['query_string'\\]"):
        Settings.from_env({"APP_ENV": "development", "SPEEDUPS_SKIP": "query_string"})  # removed: not a speedup


def test_the_patches_readme_lists_every_replacement():
    import importlib

    from deployment.patches import OPERATIONS_PATCHES

    readme = (ROOT / "deployment" / "patches" / "README.md").read_text()
    for name in SPEEDUP_NAMES + OPERATIONS_PATCHES:
        module = importlib.import_module(f"deployment.patches.{name}")
        assert f"`{name}`" in readme, name
        for target in module.REPLACES:
            assert f"`{target}`" in readme, f"{name}: {target} is not in deployment/patches/README.md"
        for dist, versions in module.VERIFIED.items():
            assert f"{dist} {' / '.join(versions)}" in readme, (
                f"{name}: {dist} {versions} is not in deployment/patches/README.md"
            )


def test_every_module_of_the_package_is_a_listed_replacement():
    """A module added to deployment/patches/ must be a speedup or an operations patch, with VERIFIED and REPLACES."""
    import importlib

    from deployment.patches import OPERATIONS_PATCHES

    modules = {path.stem for path in (ROOT / "deployment" / "patches").glob("*.py")} - {"__init__", "pins"}
    assert modules == set(SPEEDUP_NAMES + OPERATIONS_PATCHES)
    for name in modules:
        module = importlib.import_module(f"deployment.patches.{name}")
        assert module.VERIFIED and module.REPLACES and module.PROVEN_BY, name
