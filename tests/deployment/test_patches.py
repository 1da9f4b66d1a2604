"""deployment/patches/: every speedup is pinned to the library versions it was verified against, and switchable.

Each test builds the app in a fresh process (the replacements are process-wide) and reads, for every target a
speedup sets (a public door's SETS, a replacement's REPLACES), whether the value there comes from the speedup's
modules or from the library."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployment.operations.speedups import module_of
from deployment.settings import SPEEDUP_NAMES, ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: argv[1] = JSON {"fake_mismatch": name or null}; prints one JSON line.
PROBE = r"""
import importlib, json, logging, sys
options = json.loads(sys.argv[1])
import deployment.patches
from deployment.settings import SPEEDUP_NAMES
from deployment.operations.speedups import MODULES, module_of
modules = {name: module_of(name) for name in SPEEDUP_NAMES}
def patch_part(name):  # deployment/patches/<name>.py, where the speedup replaces a library's internals
    try:
        return importlib.import_module(f"deployment.patches.{name}")
    except ImportError:
        return None
def targets_of(name):  # what the speedup sets: a public door's SETS, and its replacement's REPLACES
    found = list(getattr(modules[name], "SETS", ()))
    part = patch_part(name)
    if part is not None:
        found += [target for target in part.REPLACES if target not in found]
    return found
faked = options["fake_mismatch"]
if faked:
    module = patch_part(faked) or modules[faked]  # the replacement's pins where there is one
    first = next(iter(module.VERIFIED))
    module.VERIFIED = {**module.VERIFIED, first: ("0.0.0.fake",)}
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("patches").addHandler(Keep())
from stack_app import create_app, socketio
app = create_app()
from replacements import live_roots, origins
targets = {name: origins(targets_of(name), live_roots(app, socketio)) for name in modules}
owners = {name: sorted({MODULES[name], f"deployment.patches.{name}"}) for name in modules}
on = next((line.split(": ", 1)[1] for line in lines if line.startswith("speedups on: ")), "none")
client = socketio.test_client(app)
echo = client.emit("echo", {"n": 1}, callback=True)
client.disconnect()
print(json.dumps({"targets": targets, "owners": owners, "on": [] if on == "none" else on.split(", "),
                  "faked_main": bool(faked) and patch_part(faked) in (None, modules[faked]),
                  "faked_module": faked and (patch_part(faked) or modules[faked]).__name__, "log": lines, "echo": echo,
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
    """The control for the tests below: with the pinned versions every target holds the speedup's value."""
    for name, targets in all_on["targets"].items():
        assert targets, f"{name} names nothing it sets (SETS or its replacement's REPLACES)"
        for target, module in targets.items():
            # the speedup's, or another's that replaces the same target (idle_websockets over connection_memory)
            assert module.startswith("deployment."), f"{name}: {target} is {module}'s, not a speedup's"
        assert any(module in all_on["owners"][name] for module in targets.values()), (name, targets)
    assert all_on["on"] == list(SPEEDUP_NAMES)
    assert all_on["echo"] == {"n": 1} and all_on["healthz"] == 200
    assert not any("stays off" in line for line in all_on["log"]), all_on["log"]


def test_speedups_off_leaves_every_library_as_it_is():
    off = probe(SPEEDUPS="off")
    for name, targets in off["targets"].items():
        for target, module in targets.items():
            assert not module.startswith("deployment."), f"SPEEDUPS=off, yet {target} is {module}'s ({name})"
    assert off["echo"] == {"n": 1} and off["healthz"] == 200
    assert any("SPEEDUPS=off" in line for line in off["log"])


def requires(name):
    return getattr(module_of(name), "REQUIRES", ())


@pytest.mark.parametrize("name", SPEEDUP_NAMES)
def test_a_version_it_was_not_verified_against_keeps_it_off(name):
    """A faked mismatch (of the replacement's pins, where the speedup has one): one line names it and the
    version found, none of the replaced targets holds the replacement, the speedups that need it (REQUIRES) stay
    off with one line each, the others stay on, the start log names exactly those, and the app still answers."""
    result = probe(fake_mismatch=name)
    for target, module in result["targets"][name].items():
        assert module != result["faked_module"], f"{name} is off, yet {target} is {module}'s"
    dependents = [n for n in SPEEDUP_NAMES if name in requires(n)]
    dependents += [n for n in SPEEDUP_NAMES if any(d in requires(n) for d in dependents) and n not in dependents]
    [line] = [line for line in result["log"] if line.startswith(f"patch {name} stays off: ")]
    assert "is not a version it was verified against" in line
    for dependent in dependents:
        assert [line for line in result["log"] if line.startswith(f"speedup {dependent} stays off: it needs ")]
    assert len([line for line in result["log"] if "stays off" in line]) == 1 + len(dependents), result["log"]
    assert result["echo"] == {"n": 1} and result["healthz"] == 200
    # a speedup whose pinned part is only a part of it (event_context: RealtimeFlask) stays on without it
    off = {name, *dependents} if result["faked_main"] else set(dependents)
    assert result["on"] == [n for n in SPEEDUP_NAMES if n not in off], result["log"]


def test_speedups_skip_leaves_out_the_named_ones_only():
    result = probe(SPEEDUPS_SKIP="session_cache,pywsgi_speedups")
    for name, targets in result["targets"].items():
        if name in ("session_cache", "pywsgi_speedups"):
            assert not any(module in result["owners"][name] for module in targets.values()), (name, targets)
        else:
            assert all(module.startswith("deployment.") for module in targets.values()), (name, targets)
    assert result["on"] == [n for n in SPEEDUP_NAMES if n not in ("session_cache", "pywsgi_speedups")]


def test_speedups_skip_with_an_unknown_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="SPEEDUPS_SKIP names unknown speedups \\['query_string'\\]"):
        Settings.from_env({"APP_ENV": "development", "SPEEDUPS_SKIP": "query_string"})  # removed: not a speedup


def test_the_patches_readme_lists_every_replacement():
    from deployment.patches import OPERATIONS_PATCHES

    readme = (ROOT / "deployment" / "patches" / "README.md").read_text()
    for name in SPEEDUP_NAMES + OPERATIONS_PATCHES:
        assert f"`{name}`" in readme, name
        for module in {module_of(name) if name in SPEEDUP_NAMES else None, patch_part(name)} - {None}:
            for target in getattr(module, "REPLACES", ()) or [getattr(module, "DOOR", "")]:
                assert f"`{target}`" in readme, f"{name}: {target} is not in deployment/patches/README.md"
            for dist, versions in getattr(module, "VERIFIED", {}).items():
                assert f"{dist} {' / '.join(versions)}" in readme, (
                    f"{name}: {dist} {versions} is not in deployment/patches/README.md"
                )


def patch_part(name):
    path = ROOT / "deployment" / "patches" / f"{name}.py"
    return importlib.import_module(f"deployment.patches.{name}") if path.exists() else None


def test_every_module_of_the_package_is_a_listed_replacement():
    """A module added to deployment/patches/ must be a speedup's replacement or an operations patch, with VERIFIED
    and REPLACES; a speedup through a public door lives outside it (deployment/operations/) and names its DOOR."""
    from deployment.patches import OPERATIONS_PATCHES

    modules = {path.stem for path in (ROOT / "deployment" / "patches").glob("*.py")} - {"__init__", "pins"}
    assert modules == {n for n in SPEEDUP_NAMES if patch_part(n)} | set(OPERATIONS_PATCHES)
    for name in modules:
        module = importlib.import_module(f"deployment.patches.{name}")
        assert module.VERIFIED and module.REPLACES and module.PROVEN_BY, name
    for name in SPEEDUP_NAMES:
        module = module_of(name)
        if not module.__name__.startswith("deployment.patches."):
            assert module.DOOR and module.SETS and module.PROVEN_BY, name
