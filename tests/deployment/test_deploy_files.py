"""Static checks of the container deployment: Dockerfile, .dockerignore and docker-compose.yml.

No Docker engine is needed. What the containers would run is exercised natively where that is possible:
the compose file against the Compose spec schema, haproxy.cfg with the environment compose gives HAProxy,
the secrets-init script, Redis's command and healthcheck (through a stand-in for the image's entrypoint),
the healthcheck commands, and gunicorn loading the app from the build context left by .dockerignore.
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import os
import re
import runpy
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from native_stack import free_port
from ruamel.yaml import YAML
from test_configuration_table import documented

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HAPROXY_CFG = ROOT / "haproxy" / "haproxy.cfg"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
NATIVE_COMMAND = ["gunicorn", "--config", "gunicorn.conf.py"]


# --- helpers ------------------------------------------------------------------------------------------
def load_compose(path=COMPOSE_FILE):
    return YAML(typ="safe").load(path.read_text())


class InterpolationError(ValueError):
    pass


VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text, env):
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-def}, ${VAR-def}, ${VAR:?err}, ${VAR?err}.
    Anything else after a `$` is an error, as in Compose ("invalid interpolation format")."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = text.find("}", i)
            if end < 0:
                raise InterpolationError(f"unterminated ${{ in {text!r}")
            body = text[i + 2 : end]
            match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?", body, re.DOTALL)
            if not match:
                raise InterpolationError(f"invalid interpolation ${{{body}}} in {text!r}")
            name, op, arg = match.groups()
            value = env.get(name)
            if op in (":-", ":?"):
                missing = not value
            else:
                missing = value is None
            if op and op.endswith("-") and missing:
                value = arg
            elif op and op.endswith("?") and missing:
                raise InterpolationError(f"required variable {name}: {arg}")
            out.append(value or "")
            i = end + 1
        else:
            match = VAR_RE.match(text, i + 1)
            if not match:
                raise InterpolationError(f"invalid interpolation format after $ in {text!r}")
            out.append(env.get(match.group(0), ""))
            i = match.end()
    return "".join(out)


def interpolated(node, env):
    """The whole compose document as Compose sees it with this host environment."""
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def container_env(service, host_env):
    """The environment a service's container gets: `KEY:` with no value passes the host's KEY through only
    when it is set; everything else is interpolated."""
    env = {}
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    for key, value in raw.items():
        if value is None:
            if key in host_env:
                env[key] = host_env[key]
        else:
            env[key] = interpolate(str(value), host_env)
    return env


def risky_interpolations(document):
    """`${VAR}` without a non-empty default: with VAR unset on the host Compose substitutes an empty
    string, which HAProxy's "${VAR-default}" (and most programs) do not treat as unset."""
    problems = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")
        elif isinstance(node, str):
            for match in re.finditer(r"(?<!\$)\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", node.replace("$$", "")):
                token = match.group(1)
                inner = token[1:-1] if token.startswith("{") else token
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(:-.+|:\?.*)", inner):
                    problems.append(f"{where}: ${token}")

    walk(document, "$")
    return problems


def duration_seconds(text):
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def parse_dockerfile(text):
    """[(stage dict)]: each with 'image', 'name' and 'instructions' [(KEYWORD, arguments)]."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue  # comments, also inside continued lines
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    stages, global_args = [], {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:  # ARGs before the first FROM: usable in FROM lines
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            stages.append(
                {
                    "image": re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0]),
                    "image_argument": (re.fullmatch(r"\$\{(\w+)\}", words[0]) or [None, None])[1],
                    "name": words[2] if len(words) > 2 and words[1].upper() == "AS" else None,
                    "instructions": [],
                }
            )
        elif stages:
            stages[-1]["instructions"].append((keyword, args))
    return stages


def image_tag_is_pinned(image):
    tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
    return bool(tag) and tag != "latest" and any(c.isdigit() for c in tag)


def unpinned_requirements(text):
    bad = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(("-r ", "-c ")):
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+", line):
            bad.append(line)
    return bad


def dockerignore_patterns(text):
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negate, re.compile(glob_to_regex(pattern))))
    return patterns


def glob_to_regex(pattern):
    """Docker's .dockerignore syntax (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end + 1
            continue
        else:
            out += re.escape(char)
        i += 1
    return out + r"\Z"


def ignored(path, patterns):
    """True when `path` (relative, with /) is left out of the build context: the last pattern matching the
    path or one of its parent directories decides."""
    parts = path.split("/")
    result = False
    for negate, regex in patterns:
        if any(regex.match("/".join(parts[: n + 1])) for n in range(len(parts))):
            result = not negate
    return result


def build_context(dest):
    """Copy what `docker build .` would send, per .dockerignore, into dest."""
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    prune = not any(negate for negate, _ in patterns)
    for folder, dirs, files in os.walk(ROOT):
        prefix = Path(folder).relative_to(ROOT).as_posix() + "/"
        prefix = "" if prefix == "./" else prefix

        def rel(name, prefix=prefix):
            return prefix + name

        if prune:
            dirs[:] = [d for d in dirs if not ignored(rel(d), patterns)]
        for name in files:
            if not ignored(rel(name), patterns):
                target = dest / rel(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, target)
    return dest


def secrets_init_script(compose):
    command = compose["services"]["secrets-init"]["command"]
    assert command[:2] == ["python", "-c"], command
    return interpolate(command[2], {})


def run_secrets_init(compose, folder, extra_env=None):
    service = compose["services"]["secrets-init"]
    env = container_env(service, extra_env or {})
    env["SECRETS_DIR"] = str(folder)  # the volume's mount point, here a temporary folder
    env["PATH"] = os.environ["PATH"]
    return subprocess.run(
        [sys.executable, "-c", secrets_init_script(compose)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def compose():
    return load_compose()


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(DOCKERFILE.read_text())


def schema_check(path):
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- 1, 2: the Compose spec schema --------------------------------------------------------------------
def test_compose_file_matches_the_compose_spec():
    result = schema_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version" not in load_compose(), "the Compose spec has no `version:` key any more"


def _ports_as_int(doc):
    doc["services"]["haproxy"]["ports"] = 8080


def _unknown_top_level_key(doc):
    doc["service"] = doc["services"]


def _bad_depends_on_condition(doc):
    doc["services"]["haproxy"]["depends_on"]["app"]["condition"] = "service_ready"


@pytest.mark.parametrize("breakage", [_ports_as_int, _unknown_top_level_key, _bad_depends_on_condition])
def test_compose_schema_check_rejects_a_broken_copy(compose, tmp_path, breakage):
    """Control: the same validation fails once the real file is broken in one place."""
    broken = copy.deepcopy(compose)
    breakage(broken)
    path = tmp_path / "docker-compose.yml"
    path.write_text(json.dumps(broken))  # JSON is YAML
    result = schema_check(path)
    assert result.returncode != 0, f"{breakage.__name__} passed validation:\n{result.stdout}"
    assert "Schema validation errors" in result.stdout


# --- 3: the same command and files as the native stack ------------------------------------------------
def native_stack_module():
    spec = importlib.util.spec_from_file_location("native_stack_under_test", ROOT / "scripts" / "native_stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_runs_the_native_stack_command(dockerfile, compose, tmp_path):
    final = dockerfile[-1]["instructions"]
    cmds = [args for keyword, args in final if keyword == "CMD"]
    assert cmds and json.loads(cmds[-1]) == NATIVE_COMMAND
    assert not any(keyword == "ENTRYPOINT" for keyword, _ in final), "an ENTRYPOINT would wrap the command"
    app = compose["services"]["app"]
    assert "command" not in app and "entrypoint" not in app, "compose must run the image's CMD unchanged"

    native = native_stack_module()
    captured = {}

    def spawn(name, argv, env):
        captured["argv"] = argv
        return 1

    stack = native.Stack(state_dir=tmp_path, env={}, python=str(ROOT / ".venv" / "bin" / "python"))
    stack.spawn = spawn
    stack.start_app({"redis": {"url": "redis://127.0.0.1:1/0"}, "secret_key": "x" * 32}, {"name": "app1", "port": 1})
    argv = captured["argv"]
    assert [Path(argv[0]).name, argv[1], Path(argv[2]).name] == NATIVE_COMMAND
    assert Path(argv[2]) == GUNICORN_CONF
    assert native.HAPROXY_CFG == HAPROXY_CFG


def test_gunicorn_config_serves_wsgi_app(monkeypatch):
    for name in ("BIND", "HOST", "PORT", "GRACEFUL_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["wsgi_app"] == "wsgi:app"
    assert conf["bind"] == ["0.0.0.0:8000"], "the image EXPOSEs and compose checks port 8000"
    assert re.search(r"^app = create_app\(\)$", (ROOT / "wsgi.py").read_text(), re.MULTILINE)


def test_haproxy_uses_the_repo_config(compose):
    volumes = compose["services"]["haproxy"]["volumes"]
    assert "./haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in volumes


# --- 4: topology ---------------------------------------------------------------------------------------
def test_only_haproxy_publishes_a_port(compose):
    services = compose["services"]
    assert set(services) >= {"secrets-init", "redis", "app", "haproxy"}
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: container_name prevents scaling and clashes"
        if name == "haproxy":
            continue
        if service.get("profiles"):  # opt-in extras (e.g. a metrics profile) may publish on loopback only
            for port in interpolated(service.get("ports", []), {}):
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        else:
            assert "ports" not in service, f"{name} publishes a port; only HAProxy may"
    ports = interpolated(services["haproxy"]["ports"], {})
    assert ports == ["8080:8080"]
    bind = container_env(services["haproxy"], {})["HAPROXY_BIND"]
    assert re.fullmatch(r"[^:]*:(\d+)", bind), f"HAPROXY_BIND={bind!r}"
    assert bind.rsplit(":", 1)[1] == ports[0].rsplit(":", 1)[1], "published port must be the one HAProxy binds"
    assert interpolated(services["haproxy"]["ports"], {"STACK_PORT": "9000"}) == ["9000:8080"]


def test_app_is_scalable_and_hardened(compose, monkeypatch):
    app = compose["services"]["app"]
    assert interpolate(str(app["deploy"]["replicas"]), {}) == "3"
    assert interpolate(str(app["deploy"]["replicas"]), {"APP_REPLICAS": "5"}) == "5"
    assert "healthcheck" in app
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert app["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"
    env = container_env(app, {})
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert "INSTANCE_NAME" not in env, "every replica would report the same name"
    assert "INSTANCE_NAME" not in container_env(app, {"INSTANCE_NAME": "leaked"})
    assert app["read_only"] is True and app["init"] is True
    assert "/tmp" in app["tmpfs"]
    assert int(interpolate(str(app["ulimits"]["nofile"]["soft"]), {})) >= 65536
    for name in ("GRACEFUL_TIMEOUT", "INSTANCE_NAME"):
        monkeypatch.delenv(name, raising=False)
    graceful = runpy.run_path(str(GUNICORN_CONF))["graceful_timeout"]
    assert duration_seconds(app["stop_grace_period"]) > graceful, "docker would SIGKILL during gunicorn's drain"
    assert "GRACEFUL_TIMEOUT" not in env, "stop_grace_period is fixed; do not let the drain outgrow it"


def test_redis_is_private_and_health_checked(compose):
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    assert redis["healthcheck"]["test"][0] == "CMD-SHELL"
    assert redis["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"
    assert re.fullmatch(r"redis:7(\.\d+)*-alpine", interpolate(redis["image"], {}))


def test_haproxy_waits_for_healthy_app(compose):
    haproxy = compose["services"]["haproxy"]
    assert haproxy["depends_on"]["app"]["condition"] == "service_healthy"
    assert re.fullmatch(r"haproxy:2\.6(\.\d+)?(-alpine)?", interpolate(haproxy["image"], {}))


def test_every_image_is_pinned(compose, dockerfile):
    images = [interpolate(s["image"], {}) for s in compose["services"].values() if "image" in s]
    images += [stage["image"] for stage in dockerfile]
    assert len(images) >= 5
    for image in images:
        assert image_tag_is_pinned(image), f"{image}: pin a version tag"
    assert not image_tag_is_pinned("redis") and not image_tag_is_pinned("redis:latest")  # control


# --- 5: HAProxy with the environment compose gives it ----------------------------------------------------
def test_compose_interpolations_all_have_defaults(compose):
    assert risky_interpolations(compose) == []
    interpolated(compose, {})  # no invalid `$` (shell `$` must be written `$$`)
    # controls: the checks catch the pitfalls
    assert risky_interpolations({"environment": {"FOO": "${FOO}", "BAR": "${BAR:-}", "OK": "$${X}"}}) == [
        "$.environment.FOO: ${FOO}",
        "$.environment.BAR: ${BAR:-}",
    ]
    with pytest.raises(InterpolationError):
        interpolate('redis-server --requirepass "$(cat file)"', {})


def haproxy_env(compose, host_env=None):
    env = container_env(compose["services"]["haproxy"], host_env or {})
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    return env


def haproxy_check(env):
    return subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CFG)], check=False, env=env, capture_output=True, text=True, timeout=30
    )


needs_haproxy = pytest.mark.stack  # runs HAProxy's binary (tests/conftest.py: skipped, or failed in CI, without)


@needs_haproxy
def test_haproxy_config_is_valid_with_the_compose_environment(compose):
    env = haproxy_env(compose)
    assert env["APP_DNS_NAME"] == "app", "selects the server-template + Docker DNS branch of haproxy.cfg"
    assert env["APP_PORT"] == "8000"
    assert not any(re.fullmatch(r"APP\d+_ADDR", key) for key in env)
    assert "" not in env.values(), f"empty variables defeat HAProxy's defaults: {env}"
    result = haproxy_check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    # and with the optional settings a user might pass through
    result = haproxy_check(
        haproxy_env(
            compose,
            {
                "HAPROXY_STATS_PASSWORD": "s3cret-pw",
                "APP_REPLICAS": "5",
                "APP_MAX_REPLICAS": "20",
                "HAPROXY_BALANCE": "roundrobin",
            },
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_haproxy
def test_haproxy_check_fails_on_an_empty_variable(compose):
    """Control: what `HAPROXY_MAXCONN: ${HAPROXY_MAXCONN}` would export with the variable unset."""
    env = haproxy_env(compose)
    env["HAPROXY_MAXCONN"] = ""
    result = haproxy_check(env)
    assert result.returncode != 0 and "maxconn" in result.stderr


def haproxy_threads(tmp_path, **env):
    """Nbthread of an HAProxy started from the repo's haproxy.cfg with env (no app servers), from `show info`."""
    from native_stack import haproxy_command, wait_for

    sock = tmp_path / f"haproxy-{len(list(tmp_path.iterdir()))}.sock"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HAPROXY_BIND": f"127.0.0.1:{free_port()}",
        "HAPROXY_STATS_BIND": f"127.0.0.1:{free_port()}",
        "HAPROXY_RUNTIME_SOCKET": str(sock),
        **env,
    }
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, 10, "HAProxy's runtime socket", interval=0.05)
        info = haproxy_command(sock, "show info")
        return int(re.search(r"^Nbthread: (\d+)$", info, re.M).group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_haproxy
def test_haproxy_runs_one_thread_unless_told(compose, tmp_path):
    """HAPROXY_NBTHREAD (default 1: HAProxy shares the cores with the app processes); docker compose passes it
    through. Control: the variable, not HAProxy's own default (a thread per CPU), gives the count."""
    assert haproxy_threads(tmp_path) == 1
    assert haproxy_threads(tmp_path, HAPROXY_NBTHREAD="2") == 2
    assert compose["services"]["haproxy"]["env_file"] == ".env"  # .env reaches it (test_settings_reach.py)


def test_haproxy_limits_and_stop_timeout(compose):
    haproxy = compose["services"]["haproxy"]
    for service in ("app", "haproxy"):  # one variable, both limits (the daemon's may be lower: .env)
        nofile = compose["services"][service]["ulimits"]["nofile"]
        assert nofile == {"soft": "${NOFILE_LIMIT:-65536}", "hard": "${NOFILE_LIMIT:-65536}"}
    assert "HAPROXY_MAXCONN" not in container_env(haproxy, {}), "unset: HAProxy derives it from NOFILE_LIMIT"
    assert haproxy["env_file"] == ".env", "HAPROXY_MAXCONN in .env reaches HAProxy (test_settings_reach.py)"
    # hard-stop-after (10m) is for reloads, where old processes keep WebSockets; a container stop may
    # cut them sooner, but not before the close spread of a soft stop has had time (30s)
    assert duration_seconds(haproxy["stop_grace_period"]) >= 30
    assert "ports" not in haproxy or all("8404" not in str(p) for p in haproxy["ports"]), "stats stay private"


# --- secrets -------------------------------------------------------------------------------------------
@pytest.mark.root  # chown of the secret files, as compose's secrets-init does
def test_secrets_init_generates_keeps_and_overrides(compose, tmp_path, dockerfile):
    app_env = container_env(compose["services"]["app"], {})
    mount = "/run/stack-secrets"
    assert app_env["SECRET_KEY_FILE"] == f"{mount}/secret_key"
    assert app_env["REDIS_PASSWORD_FILE"] == f"{mount}/redis_password"
    assert container_env(compose["services"]["redis"], {})["REDIS_PASSWORD_FILE"] == f"{mount}/redis_password"
    assert f"app-secrets:{mount}:ro" in compose["services"]["app"]["volumes"]
    assert f"app-secrets:{mount}:ro" in compose["services"]["redis"]["volumes"]
    assert f"app-secrets:{mount}" in compose["services"]["secrets-init"]["volumes"]
    assert container_env(compose["services"]["secrets-init"], {})["SECRETS_DIR"] == mount
    # the group that may read the secrets is the app user's group in the image
    gid = container_env(compose["services"]["secrets-init"], {})["SECRETS_GID"]
    runs = " ".join(args for keyword, args in dockerfile[-1]["instructions"] if keyword == "RUN")
    assert f"--gid {gid} app" in runs

    first = run_secrets_init(compose, tmp_path)
    assert first.returncode == 0, first.stderr
    values = {name: (tmp_path / name).read_text().strip() for name in ("secret_key", "redis_password")}
    for name, value in values.items():
        assert re.fullmatch(r"[0-9a-f]{64}", value), name
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o440
        if os.getuid() == 0:
            assert (tmp_path / name).stat().st_gid == int(gid)
    assert values["secret_key"] != values["redis_password"]

    again = run_secrets_init(compose, tmp_path)
    assert again.returncode == 0 and "kept" in again.stdout
    assert (tmp_path / "secret_key").read_text().strip() == values["secret_key"]

    given = run_secrets_init(compose, tmp_path, {"SECRET_KEY": "k" * 40})
    assert given.returncode == 0, given.stderr
    assert (tmp_path / "secret_key").read_text().strip() == "k" * 40
    assert (tmp_path / "redis_password").read_text().strip() == values["redis_password"]
    assert not list(tmp_path.glob(".*.tmp"))

    # the app reads both files (deployment/settings.py) and puts the password into the Redis URL
    sys.path.insert(0, str(ROOT))
    try:
        from deployment.settings import Settings
    finally:
        sys.path.remove(str(ROOT))
    env = dict(
        app_env, SECRET_KEY_FILE=str(tmp_path / "secret_key"), REDIS_PASSWORD_FILE=str(tmp_path / "redis_password")
    )
    settings = Settings.from_env(env)
    assert settings.secret_key == "k" * 40
    assert settings.redis_url == f"redis://:{values['redis_password']}@redis:6379/0"


def write_executable(path, text):
    path.write_text(text)
    path.chmod(0o755)


@pytest.mark.stack  # runs redis-server
def test_redis_command_and_healthcheck_use_the_password_file(compose, tmp_path):
    """Runs the compose `sh -c` command and healthcheck with the real redis-server. A stand-in for the
    image's docker-entrypoint.sh (which would drop to the redis user) adds a free port and a temp dir."""
    (tmp_path / "secrets").mkdir()
    assert run_secrets_init(compose, tmp_path / "secrets").returncode == 0
    password_file = tmp_path / "secrets" / "redis_password"
    port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(
        bin_dir / "docker-entrypoint.sh", f'#!/bin/sh\nexec "$@" --port {port} --bind 127.0.0.1 --dir "{tmp_path}"\n'
    )
    write_executable(bin_dir / "redis-cli", f'#!/bin/sh\nexec {shutil.which("redis-cli")} -p {port} "$@"\n')
    redis = compose["services"]["redis"]
    env = container_env(redis, {})
    env["REDIS_PASSWORD_FILE"] = str(password_file)
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    argv = [interpolate(part, {}) for part in redis["command"]]
    assert argv[:2] == ["sh", "-c"] and argv[2].startswith("exec docker-entrypoint.sh redis-server ")
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        test = [interpolate(part, {}) for part in redis["healthcheck"]["test"]]
        assert test[0] == "CMD-SHELL"

        def healthcheck(check_env):
            return subprocess.run(
                ["sh", "-c", test[1]], check=False, env=check_env, capture_output=True, timeout=10
            ).returncode

        deadline = time.monotonic() + 10
        while healthcheck(env) != 0:
            assert time.monotonic() < deadline, "redis never became healthy with its own healthcheck"
            assert server.poll() is None, "redis-server exited"
            time.sleep(0.1)
        wrong = tmp_path / "wrong_password"
        wrong.write_text("not-the-password\n")
        assert healthcheck(dict(env, REDIS_PASSWORD_FILE=str(wrong))) != 0, "control: a wrong password fails"

        import redis as redis_py

        unauthenticated = redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        with pytest.raises(redis_py.AuthenticationError):
            unauthenticated.ping()
        password = password_file.read_text().strip()
        client = redis_py.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
        assert client.ping()
        assert client.config_get("save") == {"save": ""} and client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- healthchecks --------------------------------------------------------------------------------------
class StubHandler(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list] = []

    def do_GET(self):
        StubHandler.paths.append(self.path)
        self.send_response(StubHandler.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StubHandler.paths = []
    yield server
    server.shutdown()
    server.server_close()


def run_exec_healthcheck(argv, port):
    assert argv[0] == "python"
    env = {"PATH": os.environ["PATH"], "PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], check=False, env=env, capture_output=True, timeout=15).returncode


def dockerfile_healthcheck(dockerfile):
    lines = [args for keyword, args in dockerfile[-1]["instructions"] if keyword == "HEALTHCHECK"]
    assert len(lines) == 1
    options, _, command = lines[0].partition("CMD ")
    assert re.search(r"--timeout=\d+s", options)
    return json.loads(command)


@pytest.mark.parametrize("which", ["dockerfile", "compose-app"])
def test_healthchecks_ask_the_app_and_fail_on_errors(which, dockerfile, compose, stub_server):
    if which == "dockerfile":
        argv, path = dockerfile_healthcheck(dockerfile), "/healthz"
    else:
        test = compose["services"]["app"]["healthcheck"]["test"]
        assert test[0] == "CMD"
        argv, path = [interpolate(part, {}) for part in test[1:]], "/readyz"
    port = stub_server.server_address[1]
    StubHandler.status = 200
    assert run_exec_healthcheck(argv, port) == 0
    assert StubHandler.paths == [path]
    StubHandler.status = 503
    assert run_exec_healthcheck(argv, port) != 0, "control: a 503 must make the container unhealthy"
    assert run_exec_healthcheck(argv, free_port()) != 0, "control: nothing listening"


# --- 6: Dockerfile and requirements ------------------------------------------------------------------------
def test_dockerfile_final_stage(dockerfile):
    final = dockerfile[-1]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", final["image"])
    keywords = [keyword for keyword, _ in final["instructions"]]
    users = [args for keyword, args in final["instructions"] if keyword == "USER"]
    assert users, "the final stage needs a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "runs as root"
    assert keywords.index("USER") < keywords.index("CMD")
    assert ("EXPOSE", "8000") in final["instructions"]
    copies = [args for keyword, args in final["instructions"] if keyword == "COPY"]
    # the app: the whole context filtered by .dockerignore, with the assets the Node stage built in it
    assert "--from=assets /src/ ./" in copies
    assets = next(stage for stage in dockerfile if stage["name"] == "assets")
    assert ("COPY", ". .") in assets["instructions"]


def test_dockerfile_installs_pinned_requirements(dockerfile):
    runs = [args for stage in dockerfile for keyword, args in stage["instructions"] if keyword == "RUN"]
    assert any(re.search(r"pip install --no-cache-dir -r \S*requirements\.txt", run) for run in runs)
    assert unpinned_requirements((ROOT / "requirements.txt").read_text()) == []
    assert unpinned_requirements("Flask>=3.0\ngevent\nredis==8.1.0\n") == ["Flask>=3.0", "gevent"]  # control


def test_dockerfile_node_stage_builds_assets(dockerfile):
    """Every folder whose package.json has a build script (none at all is fine): `npm ci` from the package*.json
    files alone (a layer cached until they change), then `npm run build` with the whole context."""
    node = [stage for stage in dockerfile if stage["name"] == "assets"]
    assert node and node[0]["image"] == "node:20-bookworm-slim"
    instructions = node[0]["instructions"]
    runs = [n for n, (keyword, _) in enumerate(instructions) if keyword == "RUN"]
    copies = [n for n, (keyword, _) in enumerate(instructions) if keyword == "COPY"]
    npm_ci = next(n for n in runs if "npm ci" in instructions[n][1])
    build = next(n for n in runs if "npm run build" in instructions[n][1])
    assert instructions[copies[0]][1] == "--from=manifests /manifests/ ./" and copies[0] < npm_ci
    assert instructions[copies[1]][1] == ". ." and npm_ci < copies[1] < build
    assert "rm -rf node_modules" in instructions[build][1], "the image gets the built files, not node_modules"
    manifests = [stage for stage in dockerfile if stage["name"] == "manifests"]
    assert manifests and manifests[0]["image"] == "node:20-bookworm-slim"
    assert "package*.json" in " ".join(args for _, args in manifests[0]["instructions"])


SECRET_WORDS = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|API_?KEY|PRIVATE", re.IGNORECASE)


def secrets_in_dockerfile(stages):
    found = []
    for stage in stages:
        for keyword, args in stage["instructions"]:
            if keyword in ("ENV", "ARG", "LABEL") and SECRET_WORDS.search(args):
                found.append(f"{keyword} {args}")
            if keyword in ("COPY", "ADD") and re.search(r"(^|\s)\S*(\.env|\.pem|\.key|id_rsa)\b", args):
                found.append(f"{keyword} {args}")
    return found


def test_dockerfile_has_no_secrets(dockerfile):
    assert secrets_in_dockerfile(dockerfile) == []
    control = parse_dockerfile("FROM python:3.11-slim-bookworm\nENV SECRET_KEY=abc\nCOPY .env /app/\n")
    assert len(secrets_in_dockerfile(control)) == 2


# --- .dockerignore and the build context ---------------------------------------------------------------
def test_dockerignore_keeps_the_app_and_drops_secrets_and_clutter():
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    for path in (
        "app.py",
        "wsgi.py",
        "gunicorn.conf.py",
        "requirements.txt",
        "deployment/settings.py",
        "application/templates/index.html",
        "application/static/app.js",
        "application/package.json",
        "application/package-lock.json",
    ):
        assert not ignored(path, patterns), f"{path} would be missing from the image"
    for path in (
        ".env",
        ".env.production",
        ".git/config",
        ".venv/bin/python",
        ".stack/state.json",
        "node_modules/socket.io-client/package.json",
        "application/node_modules/socket.io-client/package.json",
        "application/static/vendor/socket.io.min.js",
        "application/tests/test_page.py",
        "application/__pycache__/config.cpython-311.pyc",
        "tests/deployment/test_app.py",
        "certs/server.key",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the build and copied into the image"


def test_dockerignore_matcher_follows_docker_rules():
    patterns = dockerignore_patterns("*.md\n!README.md\n**/*.pyc\nbuild\n")
    assert ignored("NOTES.md", patterns) and not ignored("README.md", patterns)
    assert not ignored("docs/NOTES.md", patterns)  # `*` does not cross directories
    assert ignored("a/b/c.pyc", patterns) and ignored("build/x/y", patterns) and not ignored("builder", patterns)


@pytest.mark.root  # chown of the secret files, as compose's secrets-init does
def test_build_context_loads_the_app_with_the_compose_environment(compose, tmp_path):
    """gunicorn --check-config imports wsgi:app from only the files the image gets, with the environment the
    compose app service gets (its secret files generated by secrets-init)."""
    context = build_context(tmp_path / "context")
    assert (context / "wsgi.py").is_file() and not (context / ".venv").exists()
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    assert run_secrets_init(compose, secrets_dir).returncode == 0
    env = container_env(compose["services"]["app"], {})
    env.update(
        SECRET_KEY_FILE=str(secrets_dir / "secret_key"),
        REDIS_PASSWORD_FILE=str(secrets_dir / "redis_password"),
        PATH=os.environ["PATH"],
        PYTHONDONTWRITEBYTECODE="1",
        REDIS_WAIT_SECONDS="0",  # the host `redis` does not exist here: do not wait for it at start
    )
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        pytest.skip(f"no gunicorn next to {sys.executable}")

    def check_config(check_env):
        return subprocess.run(
            [str(gunicorn), *NATIVE_COMMAND[1:], "--check-config"],
            check=False,
            cwd=context,
            env=check_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = check_config(env)
    assert result.returncode == 0, result.stdout + result.stderr
    # control: without the secret the same check fails (the app refuses to start)
    env.pop("SECRET_KEY_FILE")
    result = check_config(env)
    assert result.returncode != 0 and "SECRET_KEY" in result.stdout + result.stderr


# --- docs ------------------------------------------------------------------------------------------------
def test_docs_only_mention_variables_the_stack_reads(compose):
    docs = (ROOT / "docs" / "docker.md").read_text()
    text = COMPOSE_FILE.read_text()
    mentioned = set(re.findall(r"\b([A-Z][A-Z0-9_]{3,})=", docs))
    assert mentioned, "docs/docker.md shows no variables"
    settings = documented((ROOT / "docs" / "configuration.md").read_text()) | {"COMPOSE_FILE"}  # compose's own
    unknown = {name for name in mentioned if name not in text and name not in settings}
    assert unknown == set(), (
        f"docs/docker.md mentions variables neither docker-compose.yml nor the app reads: {unknown}"
    )
    for service in re.findall(r"docker compose (?:exec|kill -s \w+|logs|restart) (?:-\w+ )*([a-z][\w-]*)", docs):
        assert service in compose["services"], service


IMAGE_VARIABLES = ("PYTHON_IMAGE", "NODE_IMAGE", "REDIS_IMAGE", "HAPROXY_IMAGE", "PROMETHEUS_IMAGE")


def test_every_base_image_comes_from_one_variable(compose, dockerfile):
    """A mirror or scripts/standin-images changes one line of .env per image (docs/docker.md#base-images)."""
    used = {}
    for name, service in compose["services"].items():
        if "image" in service:
            match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", service["image"])
            assert match, f"{name}: image {service['image']!r} is not ${{VARIABLE:-official image}}"
            used.setdefault(match.group(1), set()).add(match.group(2))
    for stage in dockerfile:
        if stage["image_argument"]:
            used.setdefault(stage["image_argument"], set()).add(stage["image"])
        else:
            assert stage["name"] is None or stage["image"] in {s["name"] for s in dockerfile}, stage
    args = compose["services"]["app"]["build"]["args"]
    for variable in ("PYTHON_IMAGE", "NODE_IMAGE"):
        default = re.fullmatch(r"\$\{" + variable + r":-([^}]+)\}", args[variable]).group(1)
        assert used[variable] == {default}, "compose and the Dockerfile default to the same image"
    assert set(used) == set(IMAGE_VARIABLES)
    assert all(len(defaults) == 1 for defaults in used.values())
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert all(f"`{variable}`" in configuration for variable in IMAGE_VARIABLES)
    stack = load_compose(ROOT / "deploy" / "swarm" / "docker-stack.yml")
    assert stack["services"]["redis"]["image"] == compose["services"]["redis"]["image"]
    assert stack["services"]["haproxy"]["image"] == compose["services"]["haproxy"]["image"]


def test_swarm_haproxy_starts_and_is_checked_as_in_compose(compose):
    """The start check (HAPROXY_MAXCONN against NOFILE_LIMIT) and the healthcheck are written twice: same text."""
    stack = load_compose(ROOT / "deploy" / "swarm" / "docker-stack.yml")
    for key in ("command", "healthcheck", "ulimits"):
        assert stack["services"]["haproxy"][key] == compose["services"]["haproxy"][key], key


@pytest.mark.parametrize(
    ("maxconn", "says"),
    [
        ("abc", "HAPROXY_MAXCONN=abc is not a whole number of connections"),
        ("-5", "HAPROXY_MAXCONN=-5 is not a whole number"),
        ("20000", "HAPROXY_MAXCONN=20000 needs 40100 open files but NOFILE_LIMIT is 20000"),
        ("9900", None),  # control: fits, so the check hands over to the image's entrypoint (absent here)
        (None, None),  # control: unset, HAProxy derives maxconn itself
    ],
)
def test_haproxy_start_check_names_what_to_change(compose, maxconn, says):
    """HAProxy itself takes `maxconn abc` as valid (`haproxy -c` passes): the compose start check refuses it."""
    script = interpolate(compose["services"]["haproxy"]["command"][2], {})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **({"HAPROXY_MAXCONN": maxconn} if maxconn else {})}
    result = subprocess.run(
        ["sh", "-c", f"ulimit -n 20000 && {script}"], env=env, capture_output=True, text=True, timeout=10
    )
    if says:
        assert result.returncode == 78 and result.stderr.startswith(f"haproxy: {says}"), result
    else:
        assert result.returncode == 127 and "docker-entrypoint.sh" in result.stderr, result
