"""deploy/kubernetes: every manifest is valid against the Kubernetes API schemas (kubernetes-validate ships
them, so this runs offline), and says what the deployment needs: the app's probes, secrets, graceful stop
and locked-down containers, Redis behind a password, and cookie affinity at the ingress."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deployment.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
# the oldest Kubernetes release still commonly run, and the newest whose schemas the package ships
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Engine.IO's defaults (deployment/settings.py): a proxy must keep an idle request longer than their sum
PING_SUM = Settings.ping_interval + Settings.ping_timeout


def load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources():
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in load(path)}


def seconds(value):
    """'60s', '1h', '60' (ingress-nginx: seconds) -> seconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(value)).groups()
    return int(number) * {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600}[unit]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path, version):
    for doc in load(path):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["spec"].update(replicas="three"),
        lambda d: d["spec"]["template"]["spec"].update(contianers=d["spec"]["template"]["spec"].pop("containers")),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port"),
    ],
    ids=["wrong-type", "misspelt-field", "missing-required"],
)
def test_control_broken_manifest_fails_validation(breakage):
    deployment = copy.deepcopy(resources()[("Deployment", "realtime-app")])
    kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_kustomization_applies_everything_but_the_secret_example_and_the_alternative_ingress():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "realtime"
    applied = set(kustomization["resources"])
    assert applied == {path.name for path in MANIFESTS} - {"secret.example.yaml", "ingress-nginx.yaml"}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed (renders the kustomization)")
def test_kustomization_renders_valid_resources_in_one_namespace():
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert {doc["kind"] for doc in docs} == {
        "Namespace",
        "ConfigMap",  # settings.env, by the configMapGenerator
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "realtime", doc["metadata"]


def app_container():
    return resources()[("Deployment", "realtime-app")]["spec"]["template"]["spec"]["containers"][0]


def env_of(container):
    return {item["name"]: item for item in container["env"]}


def settings_env():
    """deploy/kubernetes/settings.env, which the kustomization gives the app through envFrom."""
    lines = (K8S / "settings.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_app_deployment_probes_secrets_and_graceful_stop():
    deployment = resources()[("Deployment", "realtime-app")]
    pod = deployment["spec"]["template"]["spec"]
    container = app_container()
    env = env_of(container)
    assert deployment["spec"]["replicas"] == 3
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for name in ("SECRET_KEY", "REDIS_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "realtime-secrets", "key": name}
        assert "value" not in env[name]
    # gunicorn waits GRACEFUL_TIMEOUT for sockets on SIGTERM: Kubernetes must not kill it before
    assert pod["terminationGracePeriodSeconds"] > int(settings_env()["GRACEFUL_TIMEOUT"])
    # one gunicorn worker: no WEB_CONCURRENCY, no -w
    assert not {"WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"} & (set(env) | set(settings_env()))
    assert "command" not in container and "args" not in container, "the image's CMD (gunicorn.conf.py) must run"
    assert container["ports"][0]["containerPort"] == 8000  # gunicorn.conf.py's default PORT
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_app_env_names_are_settings_the_app_reads():
    table = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", table, re.M))
    documented |= set(re.findall(r"^\| `[A-Z0-9_]+` / `([A-Z][A-Z0-9_]+)`", table, re.M))
    assert set(env_of(app_container())) <= documented
    assert set(settings_env()) <= documented


def test_pods_run_locked_down_as_the_image_user():
    uid = int(re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M).group(1))
    for name in ("realtime-app", "realtime-redis"):
        pod = resources()[("Deployment", name)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
    app_pod = resources()[("Deployment", "realtime-app")]["spec"]["template"]["spec"]
    assert app_pod["securityContext"]["runAsUser"] == uid


def test_services_select_their_pods_and_the_app_finds_redis():
    docs = resources()
    for service_name, deployment_name in (("realtime-app", "realtime-app"), ("realtime-redis", "realtime-redis")):
        service = docs[("Service", service_name)]
        template = docs[("Deployment", deployment_name)]["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        port_names = {port["name"] for c in template["spec"]["containers"] for port in c["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    redis_url = env_of(app_container())["REDIS_URL"]["value"]
    redis_port = docs[("Service", "realtime-redis")]["spec"]["ports"][0]["port"]
    assert redis_url == f"redis://realtime-redis:{redis_port}/0"
    assert (
        Settings.from_env({"SECRET_KEY": "k" * 32, "REDIS_URL": redis_url, "REDIS_PASSWORD": "pw"}).redis_url
        == f"redis://:pw@realtime-redis:{redis_port}/0"
    )
    policy = docs[("NetworkPolicy", "realtime-redis")]["spec"]
    assert (
        policy["podSelector"]["matchLabels"].items()
        <= docs[("Deployment", "realtime-redis")]["spec"]["template"]["metadata"]["labels"].items()
    )
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= docs[("Deployment", "realtime-app")]["spec"]["template"]["metadata"]["labels"].items()


def test_secret_example_holds_no_value_and_the_app_refuses_it():
    secret = resources()[("Secret", "realtime-secrets")]
    assert set(secret["stringData"]) == {"SECRET_KEY", "REDIS_PASSWORD"}
    assert all(value == "" for value in secret["stringData"].values())
    assert "kubectl -n realtime create secret generic realtime-secrets" in (K8S / "secret.example.yaml").read_text()
    with pytest.raises(ConfigError, match="SECRET_KEY is missing"):
        Settings.from_env({"SECRET_KEY": secret["stringData"]["SECRET_KEY"]})


def test_redis_starts_only_with_a_password(tmp_path):
    """The Redis container's start command, run with a stand-in redis-server that prints its arguments."""
    container = resources()[("Deployment", "realtime-redis")]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "realtime-secrets"
    fake = tmp_path / "redis-server"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    argv = container["command"] + container["args"]
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    refused = subprocess.run(argv, env=dict(env, REDIS_PASSWORD=""), capture_output=True, text=True, timeout=10)
    assert refused.returncode != 0 and "REDIS_PASSWORD is empty" in refused.stderr
    started = subprocess.run(
        argv, env=dict(env, REDIS_PASSWORD="s3cret pw"), capture_output=True, text=True, timeout=10
    )
    assert started.returncode == 0 and started.stdout.split() == [
        "--requirepass",
        "s3cret",
        "pw",
        "--save",
        "--appendonly",
        "no",
    ]


def ingress(name):
    doc = resources()[("Ingress", name)]
    backend = doc["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "realtime-app", "port": {"name": "http"}}
    assert doc["spec"]["tls"], "the io cookie is marked Secure (IO_COOKIE_SECURE): serve HTTPS"
    return doc["spec"]["ingressClassName"], doc["metadata"]["annotations"]


def test_haproxy_ingress_sticks_with_a_cookie_and_keeps_long_polls_open():
    ingress_class, notes = ingress("realtime-haproxy")
    prefix = "haproxy-ingress.github.io/"
    assert ingress_class == "haproxy"
    assert notes[prefix + "affinity"] == "cookie"
    assert notes[prefix + "session-cookie-name"] and notes[prefix + "session-cookie-strategy"] == "insert"
    assert seconds(notes[prefix + "timeout-server"]) >= 60 > PING_SUM
    assert seconds(notes[prefix + "timeout-tunnel"]) >= 3600


def test_nginx_ingress_sticks_with_a_persistent_cookie_and_keeps_long_polls_open():
    ingress_class, notes = ingress("realtime-nginx")
    prefix = "nginx.ingress.kubernetes.io/"
    assert ingress_class == "nginx"
    assert notes[prefix + "affinity"] == "cookie"
    assert notes[prefix + "affinity-mode"] == "persistent"
    assert notes[prefix + "session-cookie-name"]
    assert notes[prefix + "session-cookie-change-on-failure"] == "true"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert seconds(notes[prefix + timeout]) >= 60 > PING_SUM
