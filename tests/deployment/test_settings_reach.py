"""Every setting reaches every deployment: the settings the app, gunicorn and HAProxy read (found in their
code), each listed in docs/configuration.md, each in the generated .env.example, and each set in .env arrives
in the right container of docker-compose.yml and deploy/swarm/docker-stack.yml (as compose resolves them:
`docker-compose config`) and of deploy/kubernetes (settings.env through the kustomization's ConfigMap).

The stack's wiring (where Redis is, where the secrets are mounted, what HAProxy binds inside its container) is
set by each file and wins over .env on purpose: WIRING lists it, and a file that fixes anything else fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_configuration_table import documented, read_by  # what counts as reading a variable

ROOT = Path(__file__).resolve().parents[2]
# what each file sets itself, for its own containers: the stack's wiring, not a user's setting
WIRING = {
    "compose": {
        "app": {"REDIS_URL", "REDIS_PASSWORD_FILE", "SECRET_KEY_FILE"},
        "haproxy": {"APP_DNS_NAME", "APP_PORT", "HAPROXY_BIND", "HAPROXY_STATS_BIND", "HAPROXY_RUNTIME_SOCKET"},
    },
    "kubernetes": {"app": {"SECRET_KEY", "REDIS_PASSWORD", "REDIS_URL", "INSTANCE_NAME"}},
}
WIRING["swarm"] = WIRING["compose"]


def app_settings():
    """What the app and gunicorn read: the deployment layer, gunicorn.conf.py, wsgi.py."""
    return read_by(ROOT / "gunicorn.conf.py", ROOT / "wsgi.py", *sorted((ROOT / "deployment").rglob("*.py")))


def haproxy_settings():
    return read_by(ROOT / "haproxy" / "haproxy.cfg")


def interpolation_names(compose_file):
    """${NAME} of the compose file itself: numbers and images there, so their test value must be one."""
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", compose_file.read_text()))


def test_app_and_haproxy_settings_are_found():
    app, haproxy = app_settings(), haproxy_settings()
    assert {"REQUIRE_LOGIN", "PING_INTERVAL", "LOG_LEVEL", "EVENT_RATE", "WORKER_CONNECTIONS"} <= app, app
    assert {"HAPROXY_TLS_CERT", "HAPROXY_BALANCE", "IO_COOKIE_NAME"} <= haproxy, haproxy


def test_every_setting_is_in_the_table_and_in_env_example():
    names = app_settings() | haproxy_settings()
    table = documented((ROOT / "docs" / "configuration.md").read_text())
    assert not names - table, f"add to docs/configuration.md: {sorted(names - table)}"
    example = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert not names - example, f"run scripts/settings: .env.example misses {sorted(names - example)}"
    check = subprocess.run([str(ROOT / "scripts" / "settings"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_env_example_check_fails_when_the_table_changes(tmp_path):
    """Control: a row added to the table and not generated makes --check fail."""
    copy = tmp_path / "repo"
    (copy / "docs").mkdir(parents=True)
    (copy / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "settings", copy / "scripts" / "settings")
    shutil.copy(ROOT / ".env.example", copy / ".env.example")
    table = (ROOT / "docs" / "configuration.md").read_text()
    row = "| `APP_ENV` |"
    assert row in table
    table = table.replace(row, "| `A_NEW_SETTING` | `1` | a new one |\n" + row, 1)
    (copy / "docs" / "configuration.md").write_text(table)
    check = subprocess.run([str(copy / "scripts" / "settings"), "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "run scripts/settings" in check.stdout


# --- compose and Swarm: as compose itself resolves the files ------------------------------------------------
def compose_binary():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    message = "neither docker-compose nor the docker compose plugin is installed (scripts/test installs one)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def sentinel_env(names, numeric):
    return {name: ("12345" if name in numeric else f"set-in-dotenv-{name.lower()}") for name in sorted(names)}


def resolved(tree, compose_file, dotenv, extra_env=None):
    """`config` of `compose_file` in a copy of the repo's files at `tree`, with `.env` at its root."""
    (tree / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **(extra_env or {})}
    out = subprocess.run(
        [*compose_binary(), "-f", str(tree / compose_file), "config"],
        capture_output=True,
        text=True,
        cwd=tree,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def unreached(config, wiring, dotenv):
    """{service: [settings of .env that do not arrive with their .env value]}."""
    wanted = {"app": app_settings(), "haproxy": haproxy_settings()}
    missing = {}
    for service, names in wanted.items():
        env = environment(config["services"][service])
        lost = [n for n in sorted(names - wiring[service]) if env.get(n) != dotenv[n]]
        if lost:
            missing[service] = lost
    return missing


def copy_compose_tree(tmp_path, *files):
    tree = tmp_path / "repo"
    for relative in files:
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tree / relative)
    return tree


@pytest.mark.parametrize(
    "name, compose_file, extra_env",
    [
        ("compose", "docker-compose.yml", {}),
        ("swarm", "deploy/swarm/docker-stack.yml", {"APP_IMAGE": "example/app:1"}),
    ],
)
def test_every_setting_in_dotenv_reaches_its_container(tmp_path, name, compose_file, extra_env):
    tree = copy_compose_tree(tmp_path, compose_file, "haproxy/haproxy.cfg")
    names = app_settings() | haproxy_settings()
    dotenv = sentinel_env(names | interpolation_names(ROOT / compose_file), interpolation_names(ROOT / compose_file))
    config = resolved(tree, compose_file, dotenv, extra_env)
    assert unreached(config, WIRING[name], dotenv) == {}
    for service in ("app", "haproxy"):  # the wiring is the file's own value, whatever .env says
        env = environment(config["services"][service])
        overridden = {n for n in WIRING[name][service] if n in dotenv and env.get(n) == dotenv[n]}
        assert not overridden, f"{service}: .env replaced the stack's wiring {sorted(overridden)}"


def test_without_env_file_the_settings_do_not_arrive(tmp_path):
    """Control: the same check on docker-compose.yml without its `env_file:` lines reports REQUIRE_LOGIN and the
    others as lost (how the settings went missing before)."""
    tree = copy_compose_tree(tmp_path, "docker-compose.yml", "haproxy/haproxy.cfg")
    path = tree / "docker-compose.yml"
    path.write_text(re.sub(r"^\s+env_file: .*\n", "", path.read_text(), flags=re.M))
    names = app_settings() | haproxy_settings()
    dotenv = sentinel_env(names | interpolation_names(path), interpolation_names(path))
    missing = unreached(resolved(tree, "docker-compose.yml", dotenv), WIRING["compose"], dotenv)
    assert {"REQUIRE_LOGIN", "PING_INTERVAL", "LOG_LEVEL"} <= set(missing["app"])
    assert "HAPROXY_BALANCE" in missing["haproxy"]


# --- Kubernetes: settings.env -> configMapGenerator -> envFrom -------------------------------------------------
K8S = ROOT / "deploy" / "kubernetes"


def kubernetes_env(folder):
    """{name: value} the app container gets: the generated ConfigMap's data through envFrom, then `env:` (which
    wins), as kustomize and the kubelet apply them; only literal values (a valueFrom reads '<valueFrom>')."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    generated = {}
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for env_file in generator.get("envs", []):
            for line in (folder / env_file).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = value
        generated[generator["name"]] = data
    docs = [d for path in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "realtime-app"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for source in container.get("envFrom", []):
        env.update(generated.get(source.get("configMapRef", {}).get("name"), {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<valueFrom>")
    return env


def kubernetes_unreached(tmp_path, edit=None):
    folder = tmp_path / "kubernetes"
    shutil.copytree(K8S, folder)
    if edit:
        edit(folder)
    names = app_settings()
    dotenv = sentinel_env(names, set())
    (folder / "settings.env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    env = kubernetes_env(folder)
    return sorted(n for n in names - WIRING["kubernetes"]["app"] if env.get(n) != dotenv[n]), folder


def test_every_setting_in_settings_env_reaches_the_kubernetes_app(tmp_path):
    lost, folder = kubernetes_unreached(tmp_path)
    assert lost == []
    if shutil.which("kubectl"):  # kustomize itself, where installed: the ConfigMap it generates and its reference
        out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and "realtime-settings" in d["metadata"]["name"]]
        [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "realtime-app"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in container["envFrom"]
        assert set(app_settings()) <= set(config_map["data"])


def test_without_env_from_kubernetes_settings_do_not_arrive(tmp_path):
    """Control: app.yaml without its envFrom loses them."""

    def drop_env_from(folder):
        path = folder / "app.yaml"
        path.write_text(re.sub(r"\n\s+envFrom:\n\s+- configMapRef:\n\s+name: realtime-settings", "", path.read_text()))

    lost, _ = kubernetes_unreached(tmp_path, drop_env_from)
    assert {"REQUIRE_LOGIN", "PING_INTERVAL", "LOG_LEVEL"} <= set(lost)
