"""Paired A/B of template variants against the template (`bench/run --paired`), issue #24.

    bench/run --paired --pairs 5 --echo-duration 10 --polling-duration 10 \
        --systems template+SPEEDUPS=on,template+SPEEDUPS_SKIP=event_context,... --out bench/results/speedups-paired
    bench/.venv-asgi/bin/python bench/paired_report.py bench/results/speedups-paired/latest.json

A pair is the template and one variant on one scenario, each on a fresh stack, back to back (a minute or two
for both): the drift of a shared machine between the two is what it is within that minute, not what it is
between the first and the last of 16 systems. Which one goes first alternates pair by pair. Each variant gets
its own pairs (and its own template runs), on the scenarios of the rows it serves: `ROWS` of the speedups that
its configuration turns off (deployment/patches/*.py). The A/A (`template+SPEEDUPS=on`, the template again;
added when --systems does not name it) is paired the same way, on every scenario that any variant needs, so
each row has its own A/A spread. A round runs every (variant, scenario) pair once, starting one pair later
each round; --pairs rounds.

Measured alone: for each variant the results name every speedup its configuration turns off, from the
installer's start log line (`speedups on: ...`, deployment/operations/speedups.py) of each instance, next to
what SPEEDUP_NAMES and the modules' REQUIRES say it should be; bench/paired_report.py flags a variant that
turns off more than one. Results: <out>/latest.json (rewritten after every pair, so an interrupted run keeps
what it measured), <out>/raw/<stamp>.json and each stack's logs, <out>/latest.md (bench/paired_report.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

AA = "template+SPEEDUPS=on"  # the template again: its pair ratios are the spread between two runs of the same
BASE = "template"

# Run with the template's venv (deployment/ imports its libraries): each speedup's REQUIRES and ROWS, and what
# each variant's settings turn off, by the installer's rule (deployment/operations/speedups.py) with the settings'
# own parsers. VERIFIED is not applied: a version mismatch shows in the start log instead.
FACTS = r"""
import json, sys
from deployment.operations.speedups import module_of
from deployment.settings import SPEEDUP_NAMES, env_bool, env_list

def on(env):
    if not env_bool(env, "SPEEDUPS", True):
        return []
    skip, installed = set(env_list(env, "SPEEDUPS_SKIP")), []
    for name in SPEEDUP_NAMES:
        if name not in skip and all(n in installed for n in getattr(module_of(name), "REQUIRES", ())):
            installed.append(name)
    return installed

envs = json.loads(sys.argv[1])
print(json.dumps({
    "names": list(SPEEDUP_NAMES),
    "speedups": {
        name: {
            "requires": list(getattr(module_of(name), "REQUIRES", ())),
            "rows": [list(row) for row in getattr(module_of(name), "ROWS", [])],
        }
        for name in SPEEDUP_NAMES
    },
    "expected_on": {system: on(env) for system, env in envs.items()},
    "skipped": {system: env_list(env, "SPEEDUPS_SKIP") for system, env in envs.items()},
}))
"""


def speedup_facts(B, systems):
    envs = {system: B.variant_env(system) for system in systems}
    out = subprocess.run(
        [str(B.TEMPLATE_PYTHON), "-c", FACTS, json.dumps(envs)], cwd=B.ROOT, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"bench/paired_ab.py: reading the speedups' REQUIRES and ROWS failed:\n{out.stderr}")
    return json.loads(out.stdout)


def row_scenario(row):
    """A row's scenario: memory_curve_5000 -> memory_curve, echo_ws -> echo_ws."""
    return "memory_curve" if row.startswith("memory_curve_") else row


def row_value(result, row, metric):
    """The figure of `row`/`metric` in one loadgen result (memory_curve_N: the point at N clients)."""
    if not isinstance(result, dict) or "error" in result and not result.get("points"):
        return None
    if row.startswith("memory_curve_"):
        clients = int(row.rsplit("_", 1)[1])
        point = next((p for p in result.get("points", []) if p["clients"] == clients), None)
        value = point.get(metric) if point else None
    else:
        value = result
        for part in metric.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else None


SPEEDUPS_ON = re.compile(r"speedups on: (.*)$")
NOTES = re.compile(r"(speedup \S+ stays off: .*|patch \S+ stays off: .*)$")


def speedups_on_from_logs(running):
    """{instance: [speedups on]} from each app log's last start line (SPEEDUPS=off: []), and the lines that say
    why one stayed off."""
    found, notes = {}, []
    for path in sorted(running.stack.logs.glob("app*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if "SPEEDUPS=off: the stock libraries run" in line:
                found[path.stem] = []
            elif match := SPEEDUPS_ON.search(line):
                names = match.group(1).strip()
                found[path.stem] = [] if names == "none" else [n.strip() for n in names.split(",")]
            elif (match := NOTES.search(line)) and match.group(1) not in notes:
                notes.append(match.group(1))
    return found, notes


def measure(B, a, system, scenario, label, curve):
    """One side of a pair: `system` on a fresh stack, `scenario` only, then stopped."""
    began = time.time()
    side = {"system": system, "began": dt.datetime.fromtimestamp(began, dt.UTC).isoformat(timespec="seconds")}
    extra_env, lb_nodes = ({}, 1)
    if scenario == "memory_curve":
        extra_env, lb_nodes = curve["env"], curve["lbs"]
    try:
        running = B.Running(system, a.replicas, extra_env, label=label, lb_nodes=lb_nodes).__enter__()
    except Exception as exc:  # a system that does not start is recorded, the run goes on
        B.log(f"  {system} did not start: {exc}")
        return dict(side, result={"error": f"start: {exc}"}, seconds=round(time.time() - began, 1))
    try:
        side["speedups_on"], side["log_notes"] = speedups_on_from_logs(running)
        try:
            if scenario == "memory_curve":
                res = B.run_loadgen(
                    running, B.scenario_cfg("memory_curve", a, curve["clients"]), time_limit=a.curve_time_limit
                )
            else:
                cfg = B.scenario_cfg(scenario, a)
                res = B.run_loadgen(running, cfg, time_limit=max(300, cfg.get("timeLimitS", 0)))
        except B.LoadgenError as exc:  # memory_curve: the steps reached still count
            res = {"error": str(exc), **exc.partial}
        except RuntimeError as exc:
            res = {"error": str(exc)}
        if scenario == "memory_curve":
            res["points"] = B.curve_points(res)
        side["result"] = res
    finally:
        running.__exit__(None, None, None)
    side["seconds"] = round(time.time() - began, 1)
    return side


def targets(facts, variant, off):
    """The speedups a variant is for: those its SPEEDUPS_SKIP names (others that go off with them, by REQUIRES,
    are named and flagged, not measured for), or all it turns off (SPEEDUPS=off)."""
    return [n for n in off if n in facts.get("skipped", {}).get(variant, [])] or off


def plan(facts, variants, scenarios, base=BASE):
    """[(variant, scenario)]: each variant on the scenarios of the rows of the speedups it is for, the A/A on every
    scenario they need; with what each variant turns off, its rows, every row, and the (variant, scenario) left
    out by --scenarios."""
    off = {v: [n for n in facts["expected_on"][base] if n not in facts["expected_on"][v]] for v in variants}
    rows = {}
    for variant in variants:
        named = [tuple(r) for name in targets(facts, variant, off[variant]) for r in facts["speedups"][name]["rows"]]
        rows[variant] = list(dict.fromkeys(named))
    everything = list(dict.fromkeys(r for v in variants for r in rows[v]))
    units, left_out = [], []
    for variant in variants:
        wanted = rows[variant] or everything  # the A/A, or a setting that turns no whole speedup off
        for scenario in dict.fromkeys(row_scenario(r) for r, _ in wanted):
            (units if scenario in scenarios else left_out).append((variant, scenario))
    return units, off, rows, everything, left_out


def run(a, B):
    """bench/run --paired: --pairs rounds of (template, variant) pairs."""
    systems = [s.strip() for s in re.split(r",(?=template)", a.systems) if s.strip()]  # SPEEDUPS_SKIP=a,b stays one
    if any(not s.startswith("template") for s in systems):
        raise SystemExit("--paired compares template variants with the template: --systems takes template+NAME=VALUE")
    # --paired-base: the side every variant is paired with; another variant of the template measures a speedup
    # alone whose absence would turn others off (skip idle_websockets in both, then websocket_writes in one)
    base = a.paired_base
    aa = AA if base == BASE else f"{base}+SPEEDUPS=on"  # the base again, under another name
    variants = [s for s in systems if s != base]
    if aa not in variants:
        B.log(f"--paired: adding the A/A {aa} (the base again): each row is judged against its spread")
        variants.insert(0, aa)
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    facts = speedup_facts(B, [base, *variants])
    units, off, rows, everything, left_out = plan(facts, variants, scenarios, base)
    for name in sorted({n for v in variants for n in targets(facts, v, off[v]) if not facts["speedups"][n]["rows"]}):
        B.log(f"speedup {name} declares no ROWS (its module): a variant that turns it off is run on every row")
    for variant, scenario in left_out:
        B.log(f"{variant}: {scenario} (a row it serves) is not in --scenarios: not measured")
    if not units:
        raise SystemExit("--paired: nothing to measure (no variant row in --scenarios)")
    for variant in variants:
        turned = ", ".join(off[variant]) or "none"
        B.log(f"{variant}: turns off {turned}; scenarios {[s for v, s in units if v == variant]}")
        if len(off[variant]) > 1:
            B.log(f"  {variant} turns off more than one speedup: its figures are not one speedup's alone")

    out_dir = Path(a.out)
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    B.LOG_DIR = raw_dir / f"{stamp}-logs"
    maxconn = B.native_stack.haproxy_maxconn()
    per_lb = max(1, maxconn - B.LB_MARGIN)
    curve_max = max(B.curve_sizes(a))
    curve_lbs = max(1, min(B.MAX_LB_NODES, -(-2 * curve_max // per_lb)))  # as bench.py: two connections a client
    curve = {
        "env": B.parse_env_variant(a.curve_template_env)[1],
        "lbs": curve_lbs,
        "clients": min(curve_max, curve_lbs * per_lb),
    }
    sizes = {k: v for k, v in vars(a).items() if k != "out"}
    sizes.update(curve_clients_used=curve["clients"], curve_haproxy_processes=curve_lbs)
    doc = {
        "method": "paired",
        "machine": B.machine(),
        "sizes": sizes,
        "limits_raised": {
            name: {"value": B.BENCH_HAPROXY_ENV[name], "why": w} for name, w in B.BENCH_HAPROXY_WHY.items()
        },
        "aa": aa,
        "base": base,
        "variants": {
            v: {
                "turns_off": off[v],
                "for": targets(facts, v, off[v]),
                "rows": [list(r) for r in (rows[v] or everything)],
                "env": B.variant_env(v),
            }
            for v in variants
        },
        "speedups": facts["speedups"],
        "speedup_names": facts["names"],
        "expected_on": facts["expected_on"],
        "skipped": facts["skipped"],
        "units": [list(u) for u in units],
        "pairs": [],
    }
    path_latest, path_raw = out_dir / "latest.json", raw_dir / f"{stamp}.json"

    def save(final=False):
        doc["complete"] = final and not doc.get("interrupted")
        text = json.dumps(doc, indent=1)
        path_latest.write_text(text)
        path_raw.write_text(text)

    t_begin = time.monotonic()
    per_pair = []
    try:
        for k in range(1, a.pairs + 1):
            shift = (k - 1) % len(units)
            for index, (variant, scenario) in enumerate(units[shift:] + units[:shift]):
                variant_first = (k + units.index((variant, scenario))) % 2 == 0  # alternates pair by pair
                order = [variant, base] if variant_first else [base, variant]
                left = (a.pairs - k) * len(units) + len(units) - index
                eta = f", about {left * statistics.median(per_pair) / 60:.0f} min left" if per_pair else ""
                B.log(
                    f"pair {k}/{a.pairs} ({index + 1}/{len(units)} of the round{eta}): {' then '.join(order)}, {scenario}"
                )
                t0 = time.monotonic()
                sides = {}
                for side, system in zip(("first", "second"), order):
                    label = f"pair{k}-{units.index((variant, scenario)) + 1}-{side}-{system}-{scenario}"
                    sides[system] = measure(B, a, system, scenario, label, curve)
                    res = sides[system]["result"]
                    B.log(
                        f"  {system}: {curve_summary(res) if scenario == 'memory_curve' else B.summary(scenario, res)}"
                    )
                    time.sleep(1)
                per_pair.append(time.monotonic() - t0)
                pair = {
                    "pair": k,
                    "variant": variant,
                    "scenario": scenario,
                    "first": "variant" if variant_first else "template",
                    "seconds": round(per_pair[-1], 1),
                    "template": sides[base],  # the base side (the template unless --paired-base)
                    "variant_side": sides[variant],
                }
                doc["pairs"].append(pair)
                shown = []
                for row, metric in rows[variant] or everything:
                    if row_scenario(row) != scenario:
                        continue
                    reference = row_value(sides[base]["result"], row, metric)
                    value = row_value(sides[variant]["result"], row, metric)
                    if reference and value is not None:
                        shown.append(f"{row} {metric} {value / reference:.3f}")
                B.log(f"  variant/template: {'; '.join(shown) or 'no figure'} (pair took {per_pair[-1]:.0f} s)")
                save()
    except KeyboardInterrupt:
        B.log("interrupted: stopping every process")
        doc["interrupted"] = True
    finally:
        B.cleanup()
    doc["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    doc["machine"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    save(final=True)
    report = Path(__file__).resolve().parent / "paired_report.py"
    subprocess.run([sys.executable, str(report), str(path_latest), "--md", str(out_dir / "latest.md")], check=False)
    B.log(f"done in {doc['elapsed_s']}s: {path_latest}, {out_dir / 'latest.md'}")
    return 1 if doc.get("interrupted") else 0


def curve_summary(res):
    points = ", ".join(f"{p['clients']}: {p['app_kb_per_conn']} KB/conn" for p in res.get("points", []))
    return f"{points or 'no point'}{' (' + res['error'] + ')' if 'error' in res else ''}"
