"""A/B of template variants against the template, from one bench/run results file.

    bench/run --systems template,template+SPEEDUPS=on,template+SPEEDUPS_SKIP=session_cache,... \
        --scenarios echo_ws,echo_polling,broadcast --out bench/results/speedups-ab
    bench/.venv-asgi/bin/python bench/ab_report.py bench/results/speedups-ab/latest.json

For every variant (`template+NAME=VALUE`) and scenario (memory_curve: at each size): the variant's app CPU per 1,000 messages, throughput and
memory per connection divided by the template's in the same run, for each run, and their median. A variant
that sets what the template already has (`template+SPEEDUPS=on`) is an A/A: its ratios show the run-to-run
spread. A ratio above 1 for CPU means the variant (the speedup left off) costs more: the speedup's gain.
In one run all systems rotate, so a variant may run minutes away from the template; `bench/run --paired`
(bench/paired_ab.py, tables by bench/paired_report.py) runs each variant next to the template instead.
"""

import json
import statistics
import sys

METRICS = {  # scenario: (metric, label)
    "echo_ws": [("app_cpu_ms_per_1000", "app CPU/1k"), ("echo_per_s", "echoes/s")],
    "echo_polling": [("app_cpu_ms_per_1000", "app CPU/1k"), ("echo_per_s", "echoes/s")],
    "broadcast": [("app_cpu_ms_per_1000", "app CPU/1k"), ("app_rss_kb_per_conn", "app KB/conn")],
}


def ratios(doc, variant, scenario, metric):
    out = []
    for run in doc["runs"]:
        base = run.get(scenario, {}).get("template", {}).get(metric)
        value = run.get(scenario, {}).get(variant, {}).get(metric)
        if isinstance(base, (int, float)) and isinstance(value, (int, float)) and base:
            out.append(value / base)
    return out


def curve_ratios(doc, variant, clients):
    """memory_curve: the variant's app KB per connection at `clients` over the template's, run by run."""
    out = []
    for run in sorted({row.get("run") for row in doc.get("memory_curve", [])}):
        rows = {row["system"]: row for row in doc["memory_curve"] if row.get("run") == run}
        base, value = (
            next((p["app_kb_per_conn"] for p in rows.get(s, {}).get("points", []) if p["clients"] == clients), None)
            for s in ("template", variant)
        )
        if isinstance(base, (int, float)) and isinstance(value, (int, float)) and base > 0:
            out.append(value / base)
    return out


def table(doc):
    systems = sorted({s for run in doc["runs"] for sc in run.values() if isinstance(sc, dict) for s in sc})
    systems = sorted(set(systems) | {row["system"] for row in doc.get("memory_curve", [])})
    variants = [s for s in systems if s.startswith("template+")]
    lines = [
        "| variant | scenario | metric | variant ÷ template, each run | median |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for variant in variants:
        for scenario, metrics in METRICS.items():
            for metric, label in metrics:
                values = ratios(doc, variant, scenario, metric)
                if not values:
                    continue
                median = statistics.median(values)
                summary.setdefault(variant, {}).setdefault(scenario, {})[metric] = {
                    "runs": [round(v, 3) for v in values],
                    "median": round(median, 3),
                }
                each = " / ".join(f"{v:.3f}" for v in values)
                lines.append(f"| `{variant[len('template+') :]}` | {scenario} | {label} | {each} | {median:.3f} |")
        sizes = sorted({p["clients"] for row in doc.get("memory_curve", []) for p in row.get("points", [])})
        for clients in sizes:  # memory_curve: memory per connection at each size
            values = curve_ratios(doc, variant, clients)
            if not values:
                continue
            median = statistics.median(values)
            summary.setdefault(variant, {}).setdefault(f"memory_curve_{clients}", {})["app_kb_per_conn"] = {
                "runs": [round(v, 3) for v in values],
                "median": round(median, 3),
            }
            each = " / ".join(f"{v:.3f}" for v in values)
            lines.append(
                f"| `{variant[len('template+') :]}` | memory_curve {clients:,} | app KB/conn | {each} | {median:.3f} |"
            )
    return "\n".join(lines), summary


def main(path):
    doc = json.load(open(path))
    text, summary = table(doc)
    print(text)
    with open(path.replace(".json", "-ab.json"), "w") as out:
        json.dump(summary, out, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/speedups-ab/latest.json")
