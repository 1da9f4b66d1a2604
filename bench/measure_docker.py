"""The figures of docs/docker.md#measured: how long `up --build` takes from cold, each image's size, how long
the clients of a killed replica are away, and what compose prints when the engine is missing or the port is
taken. Writes bench/results/docker/latest.json; bench/figures.py puts it into the docs.

    .venv/bin/python bench/measure_docker.py [--rebuild-standins]

Cold means: no image of the project and no build cache, the base images present (stand-ins here, built by
scripts/standin-images; --rebuild-standins also times building those from a new debootstrap). Uses a compose
project of its own (rtmeasure) on a free port, and takes it down (`down -v`) at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from docker_stack import ROOT, ComposeStack, DockerEngine, Fleet, docker, run, standin_env  # noqa: E402

OUT = ROOT / "bench" / "results" / "docker" / "latest.json"
PROJECT = "rtmeasure"


VERSION_COMMANDS = {  # what each stand-in runs, as its official image would: the version it prints
    "PYTHON_IMAGE": ["python", "--version"],
    "NODE_IMAGE": ["node", "--version"],
    "REDIS_IMAGE": ["redis-server", "--version"],
    "HAPROXY_IMAGE": ["haproxy", "-v"],
    "PROMETHEUS_IMAGE": ["/usr/bin/prometheus", "--version"],
}


def image_version(variable, image):
    result = docker(
        "run", "--rm", "--entrypoint", VERSION_COMMANDS[variable][0], image, *VERSION_COMMANDS[variable][1:]
    )
    return (result.stdout + result.stderr).strip().splitlines()[0]


def image_size_mb(image):
    return round(int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6, 1)


def kill_gap(stack, clients=30, duration=20):
    """Seconds from a `docker kill` of one replica to each of its clients' next connect (Node clients)."""
    fleet = Fleet(stack.url, clients, duration)
    assert fleet.ready == clients
    victim = stack.containers("app")[0]
    name = stack.hostnames()[victim]
    killed = time.time() * 1000
    docker("kill", victim)
    result = fleet.result()
    gaps = [
        (min(t for t in c["connects"] if t > killed) - killed) / 1000
        for c in result
        if c["runs"] and c["runs"][0]["instance"] == name and any(t > killed for t in c["connects"])
    ]
    others_disturbed = sum(1 for c in result if c["runs"] and c["runs"][0]["instance"] != name and c["disconnects"])
    on_victim = sum(1 for c in result if c["runs"] and c["runs"][0]["instance"] == name)
    return {
        "clients": clients,
        "on_killed_replica": on_victim,
        "back": len(gaps),
        "median_s": round(statistics.median(gaps), 2) if gaps else None,
        "max_s": round(max(gaps), 2) if gaps else None,
        "others_disconnected": others_disturbed,
    }


def first_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def messages(stack):
    no_engine = {**stack.env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    wrapper = subprocess.run(["scripts/compose", "ps"], cwd=ROOT, env=no_engine, capture_output=True, text=True)
    raw = stack.compose("ps", check=False, env={"DOCKER_HOST": no_engine["DOCKER_HOST"]})
    busy = stack.up_on_a_taken_port("rtmeasureport")
    port_lines = [line.strip() for line in (busy.stdout + busy.stderr).splitlines() if "address already in use" in line]
    return {
        "no_engine_scripts_compose": wrapper.stderr.strip(),
        "no_engine_compose": first_line(raw.stderr),
        "no_engine_compose_traceback": "Traceback" in raw.stderr,
        "port_taken": port_lines[0] if port_lines else first_line(busy.stderr),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild-standins", action="store_true", help="also time the stand-ins from debootstrap")
    args = parser.parse_args(argv)
    engine = DockerEngine.ensure()
    try:
        doc = {"machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "python": platform.python_version()}}
        doc["docker"] = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        standin_seconds = None
        if args.rebuild_standins:
            started = time.monotonic()
            run([str(ROOT / "scripts" / "standin-images"), "--rebuild"], timeout=1800)
            standin_seconds = round(time.monotonic() - started, 1)
        images = standin_env()
        stack = ComposeStack(PROJECT, {**images, "NOFILE_LIMIT": "20000"})
        doc["compose"] = " ".join(stack.command) + " " + stack.compose("version", "--short").stdout.strip()
        stack.down("-v")
        docker("image", "rm", "-f", f"{PROJECT}_app", f"{PROJECT}-app", check=False)
        docker("image", "prune", "-f")
        docker("builder", "prune", "-af", check=False)
        started = time.monotonic()
        stack.up("--build")
        cold = round(time.monotonic() - started, 1)
        stack.down()
        started = time.monotonic()
        stack.up("--build")
        warm = round(time.monotonic() - started, 1)
        app_image = stack.inspect(stack.containers("app")[0])[0]["Config"]["Image"]
        doc["up"] = {"cold_build_s": cold, "warm_build_s": warm, "standins_from_debootstrap_s": standin_seconds}
        doc["images"] = {"app (built from the Dockerfile)": image_size_mb(app_image)}
        doc["standins"] = {
            variable: {"image": tag, "size_mb": image_size_mb(tag), "version": image_version(variable, tag)}
            for variable, tag in images.items()
        }
        doc["kill"] = kill_gap(stack)
        doc["messages"] = messages(stack)
        stack.down("-v")
    finally:
        engine.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
