"""Writes the README's measured figures from the scripts' own result files, so no figure is typed by hand:

- the fault table, from docs/faults.json (measured by scripts/measure_faults.py);
- the benchmark tables and the capacity note, from bench/results/latest.json (measured by bench/run).

    .venv/bin/python scripts/readme_figures.py          # rewrite the README's marked sections
    .venv/bin/python scripts/readme_figures.py --check  # exit 1 if the README is out of date (a test runs it)
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "bench")]


def fault_table():
    import measure_faults

    doc = json.loads((ROOT / "docs" / "faults.json").read_text())
    return measure_faults.table(doc["results"], doc["meta"])


def bench_tables():
    import report

    doc = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    return report.markdown(doc).strip()


def capacity_note():
    """Per-instance figures for sizing, derived from the benchmark's template runs."""
    doc = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    med, replicas = doc["medians"], doc["sizes"]["replicas"]
    shipped = next(c for c in doc["capacity"] if c["variant"] == "shipped")
    echo, poll, fan = med["echo_ws"]["template"], med["echo_polling"]["template"], med["broadcast"]["template"]
    per_core = 1_000_000 / echo["app_cpu_ms_per_1000"]  # echoes per second for one fully used core
    per_core_fan = 1_000_000 / fan["app_cpu_ms_per_1000"]
    per_core_poll = 1_000_000 / poll["app_cpu_ms_per_1000"] if poll.get("app_cpu_ms_per_1000") else None
    rss = shipped["app_rss_mb_per_1000_conns"]
    lines = [
        f"From `bench/run` ({doc['machine']['date'][:10]}, {doc['machine']['nproc']} cores, "
        "everything on one machine):",
        "",
        "| per instance (one process, at most one core) | measured |",
        "| --- | --- |",
        f"| WebSocket clients held on {shipped['processes']} instances (as shipped) | "
        f"{shipped['alive_after_hold']:,} of {shipped['clients']:,} asked, {shipped['failures']:,} failures |",
        f"| memory per 1,000 idle WebSocket clients (app process) | {rss:.0f} MB |",
        f"| WebSocket echo round trips per second for one busy core | about {per_core:,.0f} "
        f"({echo['app_cpu_ms_per_1000']:.0f} ms of app CPU per 1,000) |",
    ]
    if per_core_poll:
        lines.append(f"| long-polling echo round trips per second for one busy core | about {per_core_poll:,.0f} |")
    lines += [
        f"| broadcast deliveries per second for one busy core | about {per_core_fan:,.0f} "
        f"({fan['delivered_per_s']:,.0f}/s delivered on {replicas} instances at p99 {fan['latency.p99_ms']:.0f} ms) |",
        f"| Redis CPU while {replicas} instances deliver {fan['delivered_per_s']:,.0f} broadcasts/s | "
        f"{fan['server.redis.cpu_pct_of_core']:.1f}% of one core |",
    ]
    ceiling = med.get("broadcast_ceiling", {}).get("template", {})  # results files before it lack it
    if "ceiling_deliveries_per_s" in ceiling:
        value = ceiling["ceiling_deliveries_per_s"]
        lines.append(
            f"| broadcast ceiling on {replicas} instances: highest deliveries/s with 100% delivered and p99 < "
            f"{doc['sizes'].get('ceiling_p99_ms', 100):g} ms | "
            + (f"{value:,.0f}/s asked" if value else "below the first step asked")
            + " |"
        )
    return "\n".join(lines)


SECTIONS = {"faults": fault_table, "bench": bench_tables, "capacity": capacity_note}


def render(text):
    for name, make in SECTIONS.items():
        begin, end = f"<!-- figures:{name} (scripts/readme_figures.py) -->", f"<!-- /figures:{name} -->"
        if begin not in text or end not in text:
            raise SystemExit(f"README.md lacks the markers {begin} ... {end}")
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = f"{head}{begin}\n{make()}\n{end}{tail}"
    return text


def main(argv):
    current = README.read_text()
    wanted = render(current)
    if "--check" in argv:
        if wanted != current:
            print("README.md figures are out of date: run .venv/bin/python scripts/readme_figures.py")
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
