"""Fixtures of the demo's tests: the stack's own (tests/deployment/conftest.py: native stacks, Docker) and the
demo's (the app with the demo, built assets, headless Chromium).

The stack's conftest is loaded under its own module name (pytest imports every conftest.py as `conftest`), and
its fixtures and its report hook are named here, so they apply to these tests as well; nothing outside demo/
refers to this folder, which goes with the rest of demo/ when you delete it."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,880",
]


def load_stack_conftest(name="stack_conftest"):
    """tests/deployment/conftest.py as the module `name` (once per process). Running it also puts ROOT,
    ROOT/scripts and ROOT/tests/deployment on sys.path (native_stack, docker_stack)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "deployment" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


stack_conftest = load_stack_conftest()
# the stack's fixtures, by name (a failing test's report shows the logs of the stacks they started, as in
# tests/deployment: its hook, registered here for these tests only, reads the same list of running stacks)
make_stack = stack_conftest.make_stack
stack = stack_conftest.stack
own_stack = stack_conftest.own_stack
docker_engine = stack_conftest.docker_engine
docker_images = stack_conftest.docker_images
pytest_runtest_makereport = stack_conftest.pytest_runtest_makereport


@pytest.fixture
def app():
    """app.py's create_app() (so with the demo), in development mode without a message queue."""
    from app import create_app
    from deployment.settings import Settings

    return create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit"}))


@pytest.fixture(scope="session")
def built_assets():
    """demo/static/vendor/socket.io.min.js, built with npm when it is missing (skips without npm)."""
    import demo

    vendor_js = demo.vendor_js_path()
    if not vendor_js.is_file():
        if not shutil.which("npm"):
            pytest.skip("demo/static/vendor/socket.io.min.js missing and no npm: run npm ci && npm run build in demo/")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=DEMO, check=True, capture_output=True)
        subprocess.run(["npm", "run", "build"], cwd=DEMO, check=True, capture_output=True)
    return vendor_js


@pytest.fixture
def browser(tmp_path, built_assets):
    """Factory: a new headless Chromium (its own profile, so its own cookies) per call; all quit afterwards."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = "needs Debian's chromium and chromium-driver (scripts/bootstrap.sh: need_browser)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def make():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / f'profile{len(drivers)}'}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.quit()
