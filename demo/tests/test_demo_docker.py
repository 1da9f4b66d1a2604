"""The demo page from the Docker image: `docker compose up --build` of the repo's docker-compose.yml (its own
compose project, with the local stand-in images of scripts/standin-images), then a headless Chromium through the
port HAProxy publishes. The Dockerfile's assets stage built demo/'s socket.io client into the image; the image
has none of the demo's tests."""

import pytest
from docker_stack import ComposeStack, docker, nofile_limit
from test_demo_page import DemoPage

PROJECT = "rtdemo"
NOFILE_LIMIT = 20000  # as tests/deployment/test_docker_compose.py: dockerd's open-file limit on these machines


@pytest.fixture(scope="module")
def compose(docker_images):
    stack = ComposeStack(
        PROJECT, {**docker_images, "NOFILE_LIMIT": nofile_limit(docker_images, NOFILE_LIMIT), "APP_REPLICAS": "2"}
    )
    stack.down("-v")
    stack.up("--build")
    yield stack
    stack.down("-v")


def test_up_build_serves_the_demo_page_with_its_built_assets(compose, browser):
    status, _, body = compose.get("/")
    assert status == 200 and b"/demo/static/vendor/socket.io.min.js" in body
    status, _, script = compose.get("/demo/static/vendor/socket.io.min.js")
    assert status == 200 and b"Socket.IO" in script, "built by the Dockerfile's assets stage"
    page = DemoPage(browser(), compose.url, "docker-page", "lobby")
    assert page.joined() in set(compose.hostnames().values()), "the page shows the replica that serves it"
    page.wait(lambda: [m["user"] for m in page.presence()] == ["docker-page"], "itself in the room's presence")


def test_the_image_has_the_demo_without_its_tests_or_node_modules(compose):
    app = compose.containers("app")[0]
    listing = docker("exec", app, "find", "/app/demo", "-maxdepth", "2").stdout.split()
    assert "/app/demo/__init__.py" in listing and "/app/demo/static/vendor" in listing
    assert not [path for path in listing if path.endswith(("/tests", "/node_modules"))], listing
