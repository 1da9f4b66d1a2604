"""Writes the measured figures of docs/ (and deployment/patches/README.md) from the measuring scripts' own result
files, so no figure is typed by hand:

- docs/operations.md: the fault table, from docs/faults.json (measured by bench/measure_faults.py), and the
  connection state recovery figures, from bench/results/recovery/ (bench/measure_recovery.py) and
  bench/results/recovery-ab/ (bench/run, recovery on against off); docs/configuration.md: a line of those;
- docs/performance.md: the summary, the goals, the before/after table, the benchmark tables and the memory
  figures, from bench/results/ (measured by bench/run and bench/memory_breakdown.py); docs/scaling.md: the
  capacity table; docs/docker.md: bench/measure_docker.py's figures; deployment/patches/README.md: each
  speedup's A/B.

The README carries no figures: it links to docs/performance.md.

    .venv/bin/python bench/figures.py          # rewrite the marked sections of those files
    .venv/bin/python bench/figures.py --check  # exit 1 if one of them is out of date (bench/tests runs it)
"""

import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]


def load(name):
    return json.loads((ROOT / "bench" / "results" / name).read_text())


def median(doc, scenario, system, key):
    """One median of a benchmark file, or None where that run lacks it (older files lack newer scenarios)."""
    return doc["medians"].get(scenario, {}).get(system, {}).get(key)


def fault_table():
    import measure_faults

    doc = json.loads((ROOT / "docs" / "faults.json").read_text())
    return measure_faults.table(doc["results"], doc["meta"])


RECOVERY_FAULTS = "recovery/latest.json"  # bench/measure_recovery.py
RECOVERY_AB = "recovery-ab/latest.json"  # bench/run --systems template,template+CONNECTION_STATE_RECOVERY=true
RECOVERY_ON = "template+CONNECTION_STATE_RECOVERY=true"
RECOVERY_AA = "template+CONNECTION_STATE_RECOVERY=false"  # the template again, named apart: the A/A


def run_value(run, scenario, system, key):
    """One run's figure; "latency.p99_ms" reads run[...]["latency"]["p99_ms"] where the flat key is absent."""
    value = run.get(scenario, {}).get(system, {})
    if key in value:
        return value[key]
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def recovery_cost(scenario, key, system=RECOVERY_ON):
    """`system` ÷ the template on one benchmark row: the medians' ratio and each run's own."""
    doc = load(RECOVERY_AB)
    median_ratio = ratio(median(doc, scenario, system, key), median(doc, scenario, "template", key))
    runs = [
        ratio(run_value(run, scenario, system, key), run_value(run, scenario, "template", key)) for run in doc["runs"]
    ]
    return median_ratio, [value for value in runs if value is not None]


def fmt_cost(scenario, key, system=RECOVERY_ON):
    value, runs = recovery_cost(scenario, key, system)
    return f"{fmt_ratio(value)} ({'/'.join(f'{r:.2f}' for r in runs)})"


def fault_row(result):
    affected = [m for m in result["members"] if m["affected"]]
    recovered = sum(1 for m in affected if m["recovered"] == [True] and m["same_id"])
    return affected, recovered


def recovery_table():
    """docs/operations.md, "Connection state recovery": what it costs and what it buys, on and off."""
    faults, ab = load(RECOVERY_FAULTS), load(RECOVERY_AB)
    results, meta = faults["results"], faults["meta"]
    lines = [
        f"**What it buys** (`bench/measure_recovery.py`, {meta['date']}, {meta['machine']}): {meta['members']} "
        f"Node `socket.io-client` members of a room, a sender saying {meta['rate']:g} numbered messages per "
        "second to it, 3 instances; the fault hits the instance with most members (not the sender's).",
        "",
        "| fault | recovery | members hit | recovered, same id | messages lost | duplicates | out of order |"
        " fault to the last missed message received |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "kill": "`kill -9` of an instance",
        "restart": "graceful restart of an instance",
        "cut": "the instance's clients cut for 10 s by HAProxy (instance up)",
    }
    for fault, label in names.items():
        for recovery in ("true", "false"):
            result = results.get(f"{fault}/recovery={recovery}")
            if not result:
                continue
            affected, recovered = fault_row(result)
            late = result["fault_to_last_missed_ms_max"]
            lines.append(
                f"| {label} | {'on' if recovery == 'true' else 'off'} | {len(affected)} | {recovered} | "
                f"{result['lost_total']} of {result['sent'] * len(result['members'])} | {result['duplicates_total']} | "
                f"{sum(m['out_of_order'] for m in result['members'])} | "
                f"{'–' if late is None or recovery == 'false' else f'{late / 1000:.1f} s'} |"
            )
    on, off = results.get("footprint/recovery=true"), results.get("footprint/recovery=false")
    lines += [
        "",
        f"**What it costs.** `bench/run` ({ab['machine']['date'][:10]}, {ab['sizes']['runs']} interleaved runs, "
        "2 instances): recovery on ÷ off, median (each run); *A/A*: the template against itself (the setting "
        "named, off), the run-to-run spread on this shared machine.",
        "",
        "| row | on ÷ off | A/A |",
        "|---|---|---|",
    ]
    rows = [
        ("WebSocket echo: echoes/s (acks: nothing stored)", "echo_ws", "echo_per_s"),
        ("WebSocket echo: app CPU per 1,000 echoes", "echo_ws", "app_cpu_ms_per_1000"),
        ("broadcast: app CPU per 1,000 deliveries", "broadcast", "app_cpu_ms_per_1000"),
        ("broadcast: p99 latency", "broadcast", "latency.p99_ms"),
        ("broadcast: delivered", "broadcast", "delivered_fraction"),
    ]
    aa = RECOVERY_AA in ab["medians"].get("echo_ws", {})
    for label, scenario, key in rows:
        spread = fmt_cost(scenario, key, RECOVERY_AA) if aa else "not measured"
        lines.append(f"| {label} | {fmt_cost(scenario, key)} | {spread} |")
    redis_on = median(ab, "broadcast", RECOVERY_ON, "server.redis.cpu_pct_of_core")
    redis_off = median(ab, "broadcast", "template", "server.redis.cpu_pct_of_core")
    asked = ab["sizes"].get("broadcast_senders", 2) * ab["sizes"].get("broadcast_rate", 10)
    lines.append(
        f"| broadcast: Redis CPU ({asked:g} broadcasts/s to 1,000 clients) | {redis_on:.1f}% of a core on, "
        f"{redis_off:.1f}% off | |"
    )
    if on and off:
        lines += [
            f"| Redis memory per 1,000 idle WebSocket clients (`bench/measure_recovery.py`) | "
            f"{on['redis_memory_mb_per_1000_clients']:.2f} MB on, "
            f"{off['redis_memory_mb_per_1000_clients']:.2f} MB off | |",
            f"| Redis CPU per 1,000 idle WebSocket clients (heartbeats, record refreshes) | "
            f"{on['redis_idle_cpu_pct_per_1000_clients']:.2f}% of a core on, "
            f"{off['redis_idle_cpu_pct_per_1000_clients']:.2f}% off | |",
            f"| Redis memory per packet kept for replay ({on['packet_payload_bytes']}-byte payload) | "
            f"{on['redis_bytes_per_packet_kept']} bytes; at most 10,000 packets, none older than the window | |",
        ]
    return "\n".join(lines)


def recovery_setting():
    """docs/configuration.md, CONNECTION_STATE_RECOVERY's row: the cost in one phrase."""
    parts, within = [], True
    for label, scenario in (("per broadcast delivery", "broadcast"), ("per WebSocket echo", "echo_ws")):
        on, _ = recovery_cost(scenario, "app_cpu_ms_per_1000")
        aa, aa_runs = recovery_cost(scenario, "app_cpu_ms_per_1000", RECOVERY_AA)
        within = within and min(aa_runs) <= on <= max(aa_runs)
        parts.append(f"{label} {fmt_ratio(on)} on ÷ off (A/A {fmt_ratio(aa)})")
    verdict = "within the A/A runs' range" if within else "beyond the A/A runs' range on at least one row"
    return f"app CPU {', '.join(parts)}: {verdict}"


INLINE = {"recovery-setting"}  # sections inside a line (a table cell): no line breaks around them


def bench_tables():
    import report

    return report.markdown(load("latest.json")).strip()


def capacity_note():
    """Per-instance figures for sizing, derived from the benchmark's template runs."""
    doc = load("latest.json")
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
    value = median(doc, "broadcast_ceiling", "template", "ceiling_deliveries_per_s")
    if value is not None:
        lines.append(
            f"| broadcast ceiling on {replicas} instances: highest deliveries/s with 100% delivered and p99 < "
            f"{doc['sizes'].get('ceiling_p99_ms', 100):g} ms | "
            + (f"{value:,.0f}/s asked" if value else "below the first step asked")
            + " |"
        )
    return "\n".join(lines)


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(value):
    return "–" if value is None else f"{value:.2f}x"


def run_ratios(doc, scenario, key, other, system="template"):
    """Each run's own system / other ratio (both measured in that run), where the run has both."""
    values = [ratio(*(run.get(scenario, {}).get(s, {}).get(key) for s in (system, other))) for run in doc["runs"]]
    return [value for value in values if value is not None]


def single_runs(doc, scenario, key, other, line):
    """Each run's own template / other ratio, and how many of them meet `line`."""
    values = run_ratios(doc, scenario, key, other)
    if not values:
        return ""
    met = sum(value >= line for value in values)
    shown = ", ".join(f"{value:.3f}" for value in values)
    return f" (single runs {shown}: {met} of {len(values)} at or above {line:g}x)"


def goals_table():
    """The performance goals (issue #5) against the latest benchmark: each line says met or not met."""
    doc = load("latest.json")

    def get(scenario, system, key):
        return median(doc, scenario, system, key)

    rows = []

    def goal(text, measured, met):
        rows.append(f"| {text} | {measured} | {'met' if met else '**not met**'} |")

    echo = ratio(get("echo_ws", "template", "echo_per_s"), get("echo_ws", "node", "echo_per_s"))
    goal(
        "WebSocket echo at least 0.5x Node's throughput",
        f"{fmt_ratio(echo)} Node{single_runs(doc, 'echo_ws', 'echo_per_s', 'node', 0.5)}",
        echo is not None and echo >= 0.5,
    )
    poll = ratio(get("echo_polling", "template", "echo_per_s"), get("echo_polling", "asgi", "echo_per_s"))
    goal(
        "long-polling echo at least the ASGI server's",
        f"{fmt_ratio(poll)} ASGI{single_runs(doc, 'echo_polling', 'echo_per_s', 'asgi', 1)}",
        poll is not None and poll >= 1,
    )
    ours, node = (get("broadcast_ceiling", s, "ceiling_deliveries_per_s") for s in ("template", "node"))
    if ours is not None and node is not None:
        goal(
            "broadcast ceiling (100% delivered, p99 < 100 ms, rate stepped up) at least Node's",
            f"{ours:,.0f}/s vs Node {node:,.0f}/s",
            ours >= node,
        )
    shipped = next((c for c in doc.get("capacity", []) if c["variant"] == "shipped"), None)
    if shipped:
        goal(
            "10,000 WebSocket clients on 3 processes, zero failures",
            f"{shipped['alive_after_hold']:,} of {shipped['clients']:,} alive on {shipped['processes']} processes, "
            f"{shipped['failures']:,} failures",
            shipped["clients"] >= 10_000
            and shipped["processes"] <= 3
            and shipped["failures"] == 0
            and shipped["alive_after_hold"] == shipped["clients"],
        )
    # memory is judged where it matters, thousands of clients per process (issue #18): bench/run's memory_curve
    curve = doc if doc.get("memory_curve_medians") else load(latest_curve())  # the newest full run has one
    for n in (5000, 10000):
        t, nd = curve_kb(curve, "template", n), curve_kb(curve, "node", n)
        if t is not None and nd is not None:
            goal(
                f"app memory per idle WebSocket client at {n:,} clients on {curve['sizes']['replicas']} processes "
                "no more than Node's (memory_curve)",
                f"{t:.1f} KB vs Node {nd:.1f} KB ({fmt_ratio(ratio(t, nd))}; template "
                f"{curve['machine']['template_git'].split(' ')[0]}, {curve['machine']['date'][:10]})",
                t <= nd,
            )
    lines = [
        f"From `bench/results/latest.json` ({doc['machine']['date'][:10]}, template {doc['machine']['template_git']}):",
        "",
        "| goal | measured | |",
        "| --- | --- | --- |",
        *rows,
    ]
    if "template_tuned" in doc["medians"].get("echo_ws", {}):
        echo_tuned = ratio(get("echo_ws", "template_tuned", "echo_per_s"), get("echo_ws", "node", "echo_per_s"))
        poll_tuned = ratio(
            get("echo_polling", "template_tuned", "echo_per_s"), get("echo_polling", "asgi", "echo_per_s")
        )
        lines += [
            "",
            'Not shipped, for comparison: "Template tuned" (`ASYNC_HANDLERS=false LOG_LEVEL=warning`, see '
            "[configuration.md](configuration.md) for what it costs): "
            f"WebSocket echo {fmt_ratio(echo_tuned)} Node, long-polling echo {fmt_ratio(poll_tuned)} ASGI.",
        ]
    if "template_simplews" in doc["medians"].get("echo_ws", {}):
        echo_sw = ratio(get("echo_ws", "template_simplews", "echo_per_s"), get("echo_ws", "template", "echo_per_s"))
        cpu_sw = ratio(
            get("echo_ws", "template_simplews", "server_cpu_ms_per_1000"),
            get("echo_ws", "template", "server_cpu_ms_per_1000"),
        )
        p99_sw = ratio(
            get("broadcast", "template_simplews", "latency.p99_ms"), get("broadcast", "template", "latency.p99_ms")
        )
        mem_sw = ratio(
            get("broadcast", "template_simplews", "server.app.rss_mb"),
            get("broadcast", "template", "server.app.rss_mb"),
        )
        lines += [
            "",
            "gunicorn's plain `gevent` worker with simple-websocket, against the shipped gevent-websocket worker "
            f"(simple-websocket / gevent-websocket): WebSocket echo throughput {fmt_ratio(echo_sw)}, server CPU "
            f"per echo {fmt_ratio(cpu_sw)}, broadcast p99 {fmt_ratio(p99_sw)}, app memory with 1,000 clients "
            f"{fmt_ratio(mem_sw)}.",
        ]
    return "\n".join(lines)


def tuning_table():
    """The template as shipped before this tuning (bench/results/before-tuning.json) and now (latest.json)."""
    before, after = load("before-tuning.json"), load("latest.json")
    rows = [
        ("WS echo, echoes/s", "echo_ws", "echo_per_s", "{:,.0f}"),
        ("WS echo, server CPU ms per 1,000 echoes", "echo_ws", "server_cpu_ms_per_1000", "{:,.0f}"),
        ("WS echo, app CPU ms per 1,000 echoes", "echo_ws", "app_cpu_ms_per_1000", "{:,.0f}"),
        ("polling echo, echoes/s", "echo_polling", "echo_per_s", "{:,.0f}"),
        ("polling echo, server CPU ms per 1,000 echoes", "echo_polling", "server_cpu_ms_per_1000", "{:,.0f}"),
        ("broadcast 20,000/s, p99 ms", "broadcast", "latency.p99_ms", "{:,.1f}"),
        ("broadcast, server CPU ms per 1,000 deliveries", "broadcast", "server_cpu_ms_per_1000", "{:,.1f}"),
        ("app RSS with 1,000 clients, MB", "broadcast", "server.app.rss_mb", "{:,.0f}"),
    ]
    lines = [
        f"| template as shipped | before: {before['machine']['template_git'].split(' ')[0]} | "
        f"now: {after['machine']['template_git'].split(' ')[0]} | now / before | now / Node |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, scenario, key, pattern in rows:
        old, new = median(before, scenario, "template", key), median(after, scenario, "template", key)
        node = median(after, scenario, "node", key)
        shown = [pattern.format(v) if v is not None else "–" for v in (old, new)]
        lines.append(
            f"| {label} | {shown[0]} | {shown[1]} | {fmt_ratio(ratio(new, old))} | {fmt_ratio(ratio(new, node))} |"
        )
    node_echo = [median(run, "echo_ws", "node", "echo_per_s") for run in (before, after)]
    node_cpu = [median(run, "echo_ws", "node", "server_cpu_ms_per_1000") for run in (before, after)]
    lines += [
        "",
        f"Before and now are different benchmark runs ({before['machine']['date'][:10]} and "
        f"{after['machine']['date'][:10]}) and the machine drifts between them: Node, unchanged, echoed "
        f"{node_echo[0]:,.0f}/s then {node_echo[1]:,.0f}/s ({node_cpu[0]:,.1f} then {node_cpu[1]:,.1f} ms of server "
        "CPU per 1,000 echoes). The last column compares within one run.",
    ]
    return "\n".join(lines)


MEMORY_CURVE = "memory-curve/latest.json"  # bench/run --scenarios memory_curve --out bench/results/memory-curve
MEMORY_CURVE_AFTER = "memory-curve-after/latest.json"  # the same after the first cut (--systems template,node)
MEMORY_CURVE_PARKED = "memory-curve-parked/latest.json"  # after the second cut, idle WebSockets parked
MEMORY_BREAKDOWN = "memory-breakdown.json"  # bench/memory_breakdown.py --env WEBSOCKET_WRITER_ON_DEMAND=false
MEMORY_BREAKDOWN_AFTER = "memory-breakdown-on-demand.json"  # --env SPEEDUPS_SKIP=idle_websockets (the first cut)
MEMORY_BREAKDOWN_PARKED = "memory-breakdown-parked.json"  # bench/memory_breakdown.py, as shipped
# (file, title) of each curve, oldest first; the last one that exists is the template as shipped
MEMORY_CURVES = (
    (MEMORY_CURVE, "Before the cuts (the template as it was on main)"),
    (MEMORY_CURVE_AFTER, "After the first cut (the writer greenlet on demand)"),
    (MEMORY_CURVE_PARKED, "After the second cut (idle WebSockets parked, as shipped now)"),
)


def curve_kb(curve, system, clients):
    """A memory curve's median app KB per idle connection of `system` at `clients`, or None."""
    return curve["memory_curve_medians"].get(system, {}).get(str(clients), {}).get("app_kb_per_conn")


def latest_curve():
    """The memory curve of the template as shipped: the last of MEMORY_CURVES that was measured."""
    return [name for name, _ in MEMORY_CURVES if (ROOT / "bench" / "results" / name).exists()][-1]


def memory_curve_note():
    """docs/performance.md, Memory per connection: the curve (bench/run's memory_curve), before and after each cut."""
    return "\n\n".join(
        curve_note(name, title) for name, title in MEMORY_CURVES if (ROOT / "bench" / "results" / name).exists()
    )


def curve_note(name, title):
    import report

    doc = load(name)
    s, m = doc["sizes"], doc["machine"]
    lines = [
        f"**{title}.** From `bench/results/{name}` ({m['date'][:10]}, template {m['template_git'].split(' ')[0]}, "
        f"{m['nproc']} cores, load average at start {' '.join(m['loadavg_at_start'])}; medians of {s['curve_runs']} "
        f"interleaved runs, each run's figure in brackets; clients ramped at {s['curve_rate']}/s, polling first "
        f"then the upgrade, sampled {s['curve_step_hold']:g} s after each step). A figure is the RSS of every "
        "app process (gunicorn masters and workers, Node's and uvicorn's processes) with the clients connected, "
        "minus the same before the first client, divided by the clients; *clients per GiB* is 1 GiB divided by it.",
    ]
    return "\n".join(lines + report.curve_table(doc))


def memory_breakdown_note():
    """docs/performance.md, Where it goes: bench/memory_breakdown.py's results, before and after each cut."""
    measured = [
        (name, load(name), title)
        for name, title in (
            (MEMORY_BREAKDOWN, "writer as before"),
            (MEMORY_BREAKDOWN_AFTER, "writer on demand (first cut)"),
            (MEMORY_BREAKDOWN_PARKED, "parked (second cut, shipped)"),
        )
        if (ROOT / "bench" / "results" / name).exists()
    ]
    docs = [d for _, d, _ in measured]
    titles = [title for _, _, title in measured]
    doc = docs[-1]  # the tables by holder, site and session state: what is left to cut
    kb = lambda b: f"{b / 1024:.2f}"  # noqa: E731
    every = lambda key, f=kb: " | ".join(f(d[key]) for d in docs)  # noqa: E731
    runs = "; ".join(
        f"`bench/results/{name}` ({d['date'][:10]}, `{d['command'].strip()}`: {title})" for name, d, title in measured
    )
    lines = [
        f"From {runs}: one instance holding {docs[0]['websocket']:,} idle WebSocket clients each time (the first "
        "cut's file was made before the second cut existed, when it was the template as shipped). The RSS here "
        "is measured with tracemalloc on and the clients connected straight to the instance, so compare it within "
        "this table, not with the curve above. Per connection:",
        "",
        "| what | " + " | ".join(f"{t}, KB" for t in titles) + " |",
        "| --- |" + " ---: |" * len(docs),
        f"| worker RSS added (tracemalloc's own bookkeeping left out) | {every('rss_bytes_per_conn')} |",
        "| of which traced by tracemalloc (Python's allocators: objects, buffers, greenlet stacks) | "
        f"{every('traced_bytes_per_conn')} |",
        "| of which not traced (C allocations: libev watchers, allocator overhead, fragmentation, greenlets' "
        f"Python frame stacks) | {every('untraced_bytes_per_conn')} |",
        "| greenlets alive per connection (count) | "
        f"{every('greenlets_per_conn', lambda v: f'{round(v, 2) + 0.0:.2f}')} |",
        "| their saved C stacks (greenlet `_stack_saved`, within *traced*) | "
        f"{every('greenlet_stack_bytes_per_conn')} |",
        "",
        f"The rest describes the last column ({titles[-1]}):",
        "",
        "Traced bytes per connection by holder (the first frame of each allocation's traceback that names a "
        "library or a part of the template, `HOLDERS` in the script):",
        "",
        "| holder | KB per connection | blocks per connection |",
        "| --- | ---: | ---: |",
    ]
    for holder, v in doc["traced_by_holder"].items():
        if abs(v["bytes_per_conn"]) >= 10:
            lines.append(f"| {holder} | {kb(v['bytes_per_conn'])} | {v['blocks_per_conn']:.2f} |")
    lines += [
        "",
        "The largest allocation sites (the first frame outside the standard library):",
        "",
        "| site | holder | KB per connection |",
        "| --- | --- | ---: |",
    ]
    for site, v in list(doc["traced_by_site"].items())[:15]:
        lines.append(f"| `{site}` | {v['holder']} | {kb(v['bytes_per_conn'])} |")
    lines += [
        "",
        "Per-session state, measured on the objects (sys.getsizeof, one level deep; within *traced*):",
        "",
        "| holder | KB per connection |",
        "| --- | ---: |",
    ]
    for holder, b in doc["session_state_bytes_per_conn"].items():
        lines.append(f"| {holder} | {kb(b)} |")
    stacks = [(k, v) for k, v in doc["greenlet_stack_bytes_by_function"].items() if v >= 10]
    if stacks:
        lines += ["", "Greenlet saved stacks by what the greenlet runs:", "", "| greenlet runs | KB per connection |"]
        lines.append("| --- | ---: |")
        lines += [f"| `{k}` | {kb(v)} |" for k, v in stacks]
    return "\n".join(lines)


PREVIOUS_FULL_RUN = "previous-full-run.json"  # bench/results/latest.json as it was before the last full run


def other_cpu(earlier, later):
    """', on another CPU (X; this run: Y)' where two runs' machines differ: their ratios then do not compare."""
    cpus = earlier["machine"].get("cpu_model"), later["machine"].get("cpu_model")
    return "" if cpus[0] == cpus[1] else f", on another CPU: {cpus[0]}; this run: {cpus[1]}"


def headline():
    """docs/performance.md's summary: the shipped template against Node's socket.io and python-socketio on ASGI."""
    doc = load("latest.json")

    def get(scenario, system, key):
        return median(doc, scenario, system, key)

    def spread(scenario, other):
        """the runs' own ratios, min-max: how far this run's medians can be trusted"""
        values = run_ratios(doc, scenario, "echo_per_s", other)
        return f" (runs {min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""

    echo = get("echo_ws", "template", "echo_per_s")
    parts = [
        f"WebSocket echo {echo:,.0f}/s, {fmt_ratio(ratio(echo, get('echo_ws', 'node', 'echo_per_s')))} "
        "Node's socket.io" + spread("echo_ws", "node"),
        "long-polling echo "
        + fmt_ratio(ratio(get("echo_polling", "template", "echo_per_s"), get("echo_polling", "asgi", "echo_per_s")))
        + " python-socketio's on ASGI"
        + spread("echo_polling", "asgi"),
    ]
    ours, node = (get("broadcast_ceiling", s, "ceiling_deliveries_per_s") for s in ("template", "node"))
    if ours is not None and node is not None:
        parts.append(
            f"broadcasts up to {ours:,.0f} deliveries/s, all delivered at p99 < "
            f"{doc['sizes'].get('ceiling_p99_ms', 100):g} ms (Node {node:,.0f}/s)"
        )
    per_conn = [get("connect", s, "app_rss_kb_per_conn") for s in ("template", "node")]
    if None not in per_conn:
        parts.append(f"{per_conn[0]:.0f} KB of app memory per connection (Node {per_conn[1]:.0f} KB)")
    text = (
        f"Measured by `bench/run` on one {doc['machine']['nproc']}-core machine ({doc['machine']['date'][:10]}, "
        f"template {doc['machine']['template_git'].split(' ')[0]}; every system as {doc['sizes']['replicas']} "
        f"processes behind the same HAProxy configuration and one Redis; medians of {doc['sizes']['runs']} runs): "
        + "; ".join(parts)
        + "."
    )
    previous = load(PREVIOUS_FULL_RUN)
    if previous["machine"]["date"] < doc["machine"]["date"]:  # the full run before this one, to compare against
        prev = lambda scenario, other: ratio(  # noqa: E731
            median(previous, scenario, "template", "echo_per_s"), median(previous, scenario, other, "echo_per_s")
        )
        spreads = [run_ratios(previous, s, "echo_per_s", o) for s, o in (("echo_ws", "node"), ("echo_polling", "asgi"))]
        text += (
            f" The full run before ({previous['machine']['date'][:10]}, template "
            f"{previous['machine']['template_git'].split(' ')[0]}{other_cpu(previous, doc)}): "
            f"{fmt_ratio(prev('echo_ws', 'node'))} Node's "
            f"(runs {min(spreads[0]):.2f}–{max(spreads[0]):.2f}) and {fmt_ratio(prev('echo_polling', 'asgi'))} ASGI's "
            f"(runs {min(spreads[1]):.2f}–{max(spreads[1]):.2f})."
        )
    shipped = next((c for c in doc.get("capacity", []) if c["variant"] == "shipped"), None)
    if shipped:
        text += (
            f" In a separate run, {shipped['processes']} instances held {shipped['alive_after_hold']:,} of "
            f"{shipped['clients']:,} WebSocket clients ({shipped['failures']:,} failures)."
        )
    after = load(AFTER_PRUNING)
    if after["machine"]["date"] < doc["machine"]["date"]:  # the run above is newer: it already is "after"
        after = None
    text += (
        ""
        if after is None
        else (
            f" After three speedups that did not pay for themselves were removed (template "
            f"{after['machine']['template_git'].split(' ')[0]}, {after['machine']['date'][:10]}, "
            f"{after['sizes']['runs']} runs): WebSocket echo "
            + fmt_ratio(
                ratio(
                    median(after, "echo_ws", "template", "echo_per_s"), median(after, "echo_ws", "node", "echo_per_s")
                )
            )
            + " Node's, long-polling echo "
            + fmt_ratio(
                ratio(
                    median(after, "echo_polling", "template", "echo_per_s"),
                    median(after, "echo_polling", "asgi", "echo_per_s"),
                )
            )
            + " ASGI's, "
            + f"{median(after, 'connect', 'template', 'app_rss_kb_per_conn'):.0f} KB per connection (Node "
            + f"{median(after, 'connect', 'node', 'app_rss_kb_per_conn'):.0f} KB)."
        )
    )
    curve = doc if doc.get("memory_curve_medians") else load(latest_curve())  # the newest full run has one
    at = lambda s, n: curve_kb(curve, s, n)  # noqa: E731
    if None not in (at("template", 5000), at("node", 5000), at("template", 10000), at("node", 10000)):
        text += (
            f" Memory at the counts deployments run (`bench/run --scenarios memory_curve`, template "
            f"{curve['machine']['template_git'].split(' ')[0]}, {curve['machine']['date'][:10]}): "
            f"{at('template', 5000):.0f} KB per idle WebSocket client with 5,000 on 2 processes and "
            f"{at('template', 10000):.0f} KB with 10,000 (Node {at('node', 5000):.0f} and {at('node', 10000):.0f} KB), "
            f"about {1024 * 1024 / at('template', 10000):,.0f} idle clients per GiB of app memory (Node "
            f"{1024 * 1024 / at('node', 10000):,.0f}): see "
            "[Memory per connection](#memory-per-connection)."
        )
    return text


# bench/ab_report.py's summaries of the speedups' A/Bs, the later first: a variant's figures (and the A/A
# spread beside them) come from the first file that measured it.
AB_FILES = (
    "memory-ab2/latest-ab.json",
    "memory-ab/latest-ab.json",
    "speedups-ab2/latest-ab.json",
    "speedups-ab/latest-ab.json",
)
MEMORY_AB_FILES = AB_FILES[:2]  # the A/Bs with memory_curve (issue #18), the later first
AA = "template+SPEEDUPS=on"  # the template again: its ratios are the run-to-run spread
METRIC_LABELS = {
    "app_cpu_ms_per_1000": "app CPU per message",
    "echo_per_s": "throughput",
    "app_rss_kb_per_conn": "app memory per connection",
    "app_kb_per_conn": "app memory per idle connection",
}
# A speedup stays when leaving it off costs this much or more on its row (median), and more than the A/A spread.
KEEP_AT = 0.03
# Speedups that the A/B showed not to pay for themselves, removed from deployment.patches/: what each replaced.
REMOVED_SPEEDUPS = {
    "query_string": (
        "python-engineio's `parse_qs` (`engineio.server.urllib`): a split when nothing needs unquoting",
        [("echo_polling", "app_cpu_ms_per_1000")],
    ),
    "engineio_cors": (
        "python-engineio's `BaseServer._cors_allowed_origins`, skipped for requests without an Origin header",
        [("echo_polling", "app_cpu_ms_per_1000")],
    ),
    "inline_handlers": (
        "python-socketio's `Server._handle_event`: a WebSocket's events in the reading greenlet until a handler "
        "waits (`INLINE_HANDLERS`), others in reused greenlets (`IDLE_EVENT_GREENLETS`); both settings went "
        "with it, and events get python-socketio's greenlet each again (`ASYNC_HANDLERS`)",
        [("echo_ws", "app_cpu_ms_per_1000"), ("echo_polling", "app_cpu_ms_per_1000")],
    ),
}
# The settings inside a speedup, measured the same way: variant -> what it turns off.
SETTING_VARIANTS = {
    "template+WEBSOCKET_DIRECT_SEND=false": "websocket_writes' direct send (the setting within it)",
    "template+INLINE_HANDLERS=false": "inline_handlers' events in the reading greenlet (since removed)",
    "template+IDLE_EVENT_GREENLETS=0": "inline_handlers' reused event greenlets (since removed)",
    "template+SPEEDUPS=off": "every speedup of the A/B (the removed ones too)",
}
# echo_ws only, more runs: bench/results/memory-ab2-echo (idle_websockets), memory-ab-echo (the writer on demand)
MEMORY_ECHO_ABS = ("memory-ab2-echo/latest-ab.json", "memory-ab-echo/latest-ab.json")
# Measured on bench/run's memory_curve (issue #18): memory per idle connection at each size, and the rows it must
# not slow down (MEMORY_AB_FILES).
MEMORY_VARIANTS = {
    "template+SPEEDUPS_SKIP=idle_websockets": "idle_websockets (an idle WebSocket parked, without a greenlet)",
    "template+WEBSOCKET_WRITER_ON_DEMAND=false": "websocket_writes' writer on demand (the setting within it)",
}


def ab_source_name(variant, files=AB_FILES):
    """The first of `files` (the later A/Bs first) that measured this variant (with its own A/A), or None."""
    return next(
        (name for name in files if (ROOT / "bench" / "results" / name).exists() and variant in load(name)), None
    )


def ab_source(variant):
    """The A/B summary that measured this variant last (with its own A/A), or {}."""
    name = ab_source_name(variant)
    return load(name) if name else {}


def ab_cell(ab, variant, scenario, metric):
    ab = ab_source(variant) or ab
    figures = ab.get(variant, {}).get(scenario, {}).get(metric)
    if not figures:
        return "not measured"
    runs = "/".join(f"{value:.3f}" for value in figures["runs"])
    return f"{scenario} {METRIC_LABELS[metric]}: **{figures['median']:.3f}** ({runs})"


def aa_spread(ab, scenario, metric, variant=None):
    ab = ab_source(variant) if variant else ab
    figures = ab.get(AA, {}).get(scenario, {}).get(metric)
    if not figures:
        return "not measured"
    return f"{min(figures['runs']):.3f}–{max(figures['runs']):.3f}"


def polling_check():
    """docs/performance.md: long-polling echo alone with more runs (bench/run --scenarios echo_polling), where the
    full run's long-polling ratio against ASGI fell below the run before."""
    path = ROOT / "bench" / "results" / "polling-check" / "latest.json"
    if not path.exists():
        return "Not measured yet: `bench/run --systems template,asgi,node --scenarios echo_polling --runs 5 --out bench/results/polling-check`."  # noqa: E501
    lines = []
    for label, full in (("the full run before", load(PREVIOUS_FULL_RUN)), ("the full run now", load("latest.json"))):
        lp = {s: median(full, "echo_polling", s, "echo_per_s") for s in ("template", "asgi", "node")}
        cpu = {s: median(full, "echo_polling", s, "app_cpu_ms_per_1000") for s in ("template", "asgi", "node")}
        lines.append(
            f"- {label} ({full['machine']['date'][:10]}, template {full['machine']['template_git'].split(' ')[0]}): "
            f"long-polling echo {fmt_ratio(ratio(lp['template'], lp['asgi']))} ASGI's, "
            f"{fmt_ratio(ratio(lp['template'], lp['node']))} Node's; app CPU per 1,000 messages: template "
            f"{cpu['template']:.0f} ms, ASGI {cpu['asgi']:.0f} ms, Node {cpu['node']:.0f} ms"
        )
    doc = json.loads(path.read_text())
    parts = []
    for other, name in (("asgi", "python-socketio's on ASGI"), ("node", "Node's")):
        values = run_ratios(doc, "echo_polling", "echo_per_s", other)
        med = ratio(
            median(doc, "echo_polling", "template", "echo_per_s"), median(doc, "echo_polling", other, "echo_per_s")
        )
        parts.append(f"{fmt_ratio(med)} {name} (runs {min(values):.2f}–{max(values):.2f})")
    cpu = {s: median(doc, "echo_polling", s, "app_cpu_ms_per_1000") for s in ("template", "asgi", "node")}
    return (
        "\n".join(lines)
        + "\n\n"
        + (
            f"Long-polling echo alone, {doc['sizes']['runs']} interleaved runs (`bench/results/polling-check`, "
            f"{doc['machine']['date'][:10]}, template {doc['machine']['template_git'].split(' ')[0]}): "
            + "; ".join(parts)
            + f". App CPU per 1,000 messages: template {cpu['template']:.0f} ms, ASGI {cpu['asgi']:.0f} ms, "
            f"Node {cpu['node']:.0f} ms."
        )
    )


BEFORE_AFTER = "before-after/latest.json"  # bench/run --systems template,template_alt,node,asgi --template-root DIR


def before_after(name=BEFORE_AFTER):
    """docs/performance.md: the code of the full run before (a checkout of it, system template_alt) and today's,
    interleaved on one machine: do the echo ratios against Node and ASGI move with the code or with the machine?"""
    path = ROOT / "bench" / "results" / name
    if not path.exists():
        return (
            "Not measured yet: `git worktree add --detach /tmp/before REV`, then `bench/run --systems "
            "template,template_alt,node,asgi --template-root /tmp/before --scenarios echo_ws,echo_polling --runs 5 "
            "--out bench/results/before-after`."
        )
    doc = load(name)
    machine = doc["machine"]
    before = (machine.get("template_alt_git") or "?").split(" ")[0]
    now = machine["template_git"].split(" ")[0]
    lines = [
        f"From `bench/results/{name}` ({machine['date'][:10]}, {machine['cpu_model']}, "
        f"{doc['sizes']['runs']} interleaved runs, {doc['sizes']['echo_clients']} clients per echo scenario): the "
        f"template at {before} and at {now}, Node and ASGI, one after the other in every run. *Runs*: each run's "
        f"own ratio; *before within now's runs*: the ratio at {before} is not above the highest of the runs at {now}.",
        "",
        f"| echo ratio (throughput) | at {before} | at {now} | runs at {now} | before within now's runs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, scenario, other in (
        ("WebSocket vs Node", "echo_ws", "node"),
        ("WebSocket vs ASGI", "echo_ws", "asgi"),
        ("long-polling vs ASGI", "echo_polling", "asgi"),
        ("long-polling vs Node", "echo_polling", "node"),
    ):
        before_ratio, now_ratio = (
            ratio(median(doc, scenario, system, "echo_per_s"), median(doc, scenario, other, "echo_per_s"))
            for system in ("template_alt", "template")
        )
        runs = run_ratios(doc, scenario, "echo_per_s", other)
        within = before_ratio <= max(runs)
        lines.append(
            f"| {label} | {fmt_ratio(before_ratio)} | {fmt_ratio(now_ratio)} | "
            f"{min(runs):.2f}–{max(runs):.2f} | {'yes' if within else '**no**'} |"
        )
    lines += ["", f"| app CPU per 1,000 messages | at {before} | at {now} | now / before | ASGI | Node |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for label, scenario in (("WebSocket echo", "echo_ws"), ("long-polling echo", "echo_polling")):
        cpu = {s: median(doc, scenario, s, "app_cpu_ms_per_1000") for s in ("template_alt", "template", "asgi", "node")}
        pairs = run_ratios(doc, scenario, "app_cpu_ms_per_1000", "template_alt")
        lines.append(
            f"| {label} | {cpu['template_alt']:.0f} ms | {cpu['template']:.0f} ms | "
            f"{fmt_ratio(ratio(cpu['template'], cpu['template_alt']))} (runs {min(pairs):.2f}–{max(pairs):.2f}) | "
            f"{cpu['asgi']:.0f} ms | {cpu['node']:.0f} ms |"
        )
    return "\n".join(lines)


def speedups_paired(folder="speedups-paired"):
    """deployment/patches/README.md: a paired A/B of speedups (bench/run --paired, bench/paired_report.py)."""
    path = ROOT / "bench" / "results" / folder / "latest.json"
    shown = path.relative_to(ROOT).as_posix()
    if not path.exists():
        return f"Not measured yet: the command above writes `{shown}`."
    from paired_report import markdown  # bench/paired_report.py

    doc = json.loads(path.read_text())
    text = markdown(doc)[0]
    base = doc.get("base", "template")
    against = "" if base == "template" else f" (every pair against `{base[len('template+') :]}`, not the template)"
    return f"From `{shown}`{against}:\n\n" + text.rstrip("\n")


PAIRED_ONLY = {"event_greenlets": "event-greenlets-paired"}  # speedups measured by a paired A/B of their own only


def paired_rows(name):
    """The rows of bench/paired_report.py's summary for a speedup of PAIRED_ONLY, or None."""
    path = ROOT / "bench" / "results" / PAIRED_ONLY.get(name, "-") / "latest-paired.json"
    return json.loads(path.read_text())["speedups"][name]["rows"] if path.exists() else None


def speedups_tables():
    """deployment/patches/README.md: each replacement, what it replaces, the versions it was verified against, the
    benchmark row it serves with its A/B figure, and the test that proves it answers as the library does."""
    import importlib

    from deployment.operations.speedups import module_of
    from deployment.patches import OPERATIONS_PATCHES
    from deployment.settings import SPEEDUP_NAMES

    ab = load(AB_FILES[-1])

    def parts(name):
        """The speedup's modules: its public door's (deployment/operations/) and its replacement (patches/)."""
        found = [module_of(name)] if name in SPEEDUP_NAMES else []
        if (ROOT / "deployment" / "patches" / f"{name}.py").exists():
            found.append(importlib.import_module(f"deployment.patches.{name}"))
        return list(dict.fromkeys(found))

    def described(name):
        targets, verified = [], {}
        for module in parts(name):
            targets += [f"door: `{module.DOOR}`"] if hasattr(module, "DOOR") else [f"`{t}`" for t in module.REPLACES]
            verified.update(getattr(module, "VERIFIED", {}))
        pins = "<br>".join(f"{dist} {' / '.join(versions)}" for dist, versions in verified.items()) or "(public door)"
        return "<br>".join(targets), pins

    lines = [
        "**Speedups** (`SPEEDUPS=off` turns them all off). *Without it*: the template with this speedup left "
        "off (`SPEEDUPS_SKIP=name`), divided by the template in the same run, median of the runs (each run); "
        "above 1 for CPU or memory and below 1 for throughput means the speedup pays. *A/A*: the template "
        "against itself on the same row, the run-to-run spread.",
        "",
        "| speedup | replaces (or public door) | verified against | without it | A/A | proven by |",
        "|---|---|---|---|---|---|",
    ]
    for name in SPEEDUP_NAMES:
        module = module_of(name)
        replaces, verified = described(name)
        variant = f"template+SPEEDUPS_SKIP={name}"
        paired = paired_rows(name)
        if paired:  # measured only by a paired A/B of its own
            figures = "<br>".join(
                f"{r['row']} {METRIC_LABELS[r['metric']]}: **{r['median']:.3f}** (paired: "
                + "/".join(f"{v:.3f}" for v in r["pairs"])
                + ")"
                for r in paired
            )
            spread = "<br>".join(f"{r['aa_range'][0]:.3f}–{r['aa_range'][1]:.3f}" for r in paired)
        else:
            figures = "<br>".join(ab_cell(ab, variant, *row) for row in module.ROWS)
            spread = "<br>".join(aa_spread(ab, *row, variant=variant) for row in module.ROWS)
        lines.append(f"| `{name}` | {replaces} | {verified} | {figures} | {spread} | `{module.PROVEN_BY}` |")
    lines += [
        "",
        "**Settings inside the speedups and the switch itself**, measured the same way:",
        "",
        "| variant | turns off | echo_ws app CPU | echo_polling app CPU | broadcast app CPU | broadcast app KB/conn |",
        "|---|---|---|---|---|---|",
    ]
    for variant, what in SETTING_VARIANTS.items():
        cells = [
            ab_cell(ab, variant, scenario, metric).split(": ", 1)[-1]
            for scenario, metric in (
                ("echo_ws", "app_cpu_ms_per_1000"),
                ("echo_polling", "app_cpu_ms_per_1000"),
                ("broadcast", "app_cpu_ms_per_1000"),
                ("broadcast", "app_rss_kb_per_conn"),
            )
        ]
        lines.append(f"| `{variant[len('template+') :]}` | {what} | " + " | ".join(cells) + " |")
    memory_abs = [name for name in MEMORY_AB_FILES if (ROOT / "bench" / "results" / name).exists()]
    if memory_abs:
        rows = [
            (f"memory_curve_{n}", "app_kb_per_conn", f"{n:,} clients: app KB/conn") for n in (1000, 5000, 10000)
        ] + [
            ("echo_ws", "app_cpu_ms_per_1000", "echo_ws app CPU"),
            ("broadcast", "app_cpu_ms_per_1000", "broadcast app CPU"),
        ]
        lines += [
            "",
            "**Memory per idle connection** (`memory_curve`: 2 processes, 1,000, 5,000 and 10,000 WebSocket clients; "
            + ", ".join(f"`bench/results/{name}`" for name in memory_abs)
            + "), variant ÷ template in the same run, and the rows it must not slow down; each variant is followed "
            "by the A/A of its own A/B (the template against itself):",
            "",
            "| variant | turns off | " + " | ".join(label for _, _, label in rows) + " |",
            "|---|---|" + "---|" * len(rows),
        ]
        for variant, what in MEMORY_VARIANTS.items():
            source = ab_source_name(variant, memory_abs)
            if source is None:
                continue
            memory_ab = load(source)
            for shown, label in ((variant, what), (AA, f"nothing (A/A of `{source.split('/')[0]}`)")):
                cells = []
                for scenario, metric, _ in rows:
                    figures = memory_ab.get(shown, {}).get(scenario, {}).get(metric)
                    runs = "/".join(f"{v:.3f}" for v in figures["runs"]) if figures else ""
                    cells.append(f"**{figures['median']:.3f}** ({runs})" if figures else "not measured")
                lines.append(f"| `{shown[len('template+') :]}` | {label} | " + " | ".join(cells) + " |")
        for echo_name in MEMORY_ECHO_ABS:  # the echo row again, with more runs: its spread above is wide
            if not (ROOT / "bench" / "results" / echo_name).exists():
                continue
            echo_ab = load(echo_name)
            for variant in [*MEMORY_VARIANTS, AA]:
                cpu = echo_ab.get(variant, {}).get("echo_ws", {}).get("app_cpu_ms_per_1000")
                rate = echo_ab.get(variant, {}).get("echo_ws", {}).get("echo_per_s")
                if cpu and rate:
                    lines.append("")
                    lines.append(
                        f"`{variant[len('template+') :]}` on echo_ws again (`bench/results/{echo_name}`, "
                        f"{len(cpu['runs'])} runs): app CPU per message **{cpu['median']:.3f}** "
                        f"({'/'.join(f'{v:.3f}' for v in cpu['runs'])}), throughput **{rate['median']:.3f}** "
                        f"({'/'.join(f'{v:.3f}' for v in rate['runs'])})."
                    )
    lines += [
        "",
        "**For the operations layer** (on whatever `SPEEDUPS` says, while their versions match):",
        "",
        "| module | replaces | verified against | serves | proven by |",
        "|---|---|---|---|---|",
    ]
    for name in OPERATIONS_PATCHES:
        module = importlib.import_module(f"deployment.patches.{name}")
        replaces, verified = described(name)
        lines.append(f"| `{name}` | {replaces} | {verified} | {module.SERVES} | `{module.PROVEN_BY}` |")
    lines += [
        "",
        f"**Removed**: speedups whose gain did not stand clear of the spread (less than {KEEP_AT:.0%} on their "
        "row, or within the A/A range), measured as above before they were removed:",
        "",
        "| speedup | what it replaced | without it |",
        "|---|---|---|",
    ]
    for name, (what, rows) in REMOVED_SPEEDUPS.items():
        figures = "<br>".join(ab_cell(ab, f"template+SPEEDUPS_SKIP={name}", *row) for row in rows)
        lines.append(f"| `{name}` | {what} | {figures} |")
    return "\n".join(lines)


AFTER_PRUNING = "after-pruning/latest.json"  # bench/run of template, node, asgi after the speedups' pruning
BEFORE_PRUNING = "before-pruning.json"  # the full run before it (385ae30), bench/results/latest.json then


def after_pruning():
    """docs/performance.md: the goals' ratios before the pruning (BEFORE_PRUNING) and after it, side by side."""
    before, after = load(BEFORE_PRUNING), load(AFTER_PRUNING)
    rows = [
        ("WebSocket echo, echoes/s vs Node", "echo_ws", "echo_per_s", "node"),
        ("WebSocket echo, app CPU per 1,000 vs Node", "echo_ws", "app_cpu_ms_per_1000", "node"),
        ("long-polling echo, echoes/s vs ASGI", "echo_polling", "echo_per_s", "asgi"),
        ("long-polling echo, app CPU per 1,000 vs ASGI", "echo_polling", "app_cpu_ms_per_1000", "asgi"),
        ("broadcast, delivered vs Node", "broadcast", "delivered_fraction", "node"),
        ("app memory per connection (connect) vs Node", "connect", "app_rss_kb_per_conn", "node"),
    ]
    lines = [
        f"Template ÷ reference, medians (single runs in brackets). Before: {before['sizes']['runs']} runs at "
        f"{before['machine']['template_git'].split(' ')[0]} ({before['machine']['date'][:10]}, "
        f"{before['machine']['cpu_model']}); after: {after['sizes']['runs']} runs at "
        f"{after['machine']['template_git'].split(' ')[0]} ({after['machine']['date'][:10]}, "
        f"{after['machine']['cpu_model']}).",
        "",
        "| row | before the pruning | after the pruning |",
        "|---|---|---|",
    ]
    for label, scenario, key, other in rows:
        cells = []
        for doc in (before, after):
            value = ratio(median(doc, scenario, "template", key), median(doc, scenario, other, key))
            shown = "/".join(fmt_ratio(r) for r in run_ratios(doc, scenario, key, other))
            cells.append(f"{fmt_ratio(value)} ({shown})" if value is not None else "not measured")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def docker_report():
    """docs/docker.md#measured, from bench/measure_docker.py."""
    doc = load("docker/latest.json")
    up, kill = doc["up"], doc["kill"]
    rows = [
        "| what | measured |",
        "|---|---|",
        f"| `up --build`, cold, until HAProxy serves every replica | {up['cold_build_s']:.0f} s |",
        f"| `up --build` again (build cache), after a `down` | {up['warm_build_s']:.0f} s |",
    ]
    if up.get("standins_from_debootstrap_s"):
        rows.append(f"| `scripts/standin-images` from a new debootstrap | {up['standins_from_debootstrap_s']:.0f} s |")
    rows.append(
        f"| `docker kill` of one of 3 replicas: its {kill['on_killed_replica']} of {kill['clients']} Node clients "
        f"connected again after (median / max) | {kill['median_s']:.1f} s / {kill['max_s']:.1f} s; "
        f"clients of the other replicas disconnected: {kill['others_disconnected']} |"
    )
    app_mb = doc["images"]["app (built from the Dockerfile)"]
    images = [
        "",
        "| image | size | version |",
        "|---|---|---|",
        f"| the app, on the stand-in Python | {app_mb:.0f} MB | |",
    ]
    for variable, standin in doc["standins"].items():
        version = re.search(r"\d+\.\d+\.\d+", standin["version"]).group()
        images.append(f"| `{variable}` stand-in `{standin['image']}` | {standin['size_mb']:.0f} MB | {version} |")
    machine = f"\nDocker {doc['docker']}, {doc['compose']}, {doc['machine']['cpus']} cores."
    return "\n".join(rows + images) + "\n" + machine


# Which generated sections each file holds, between <!-- figures:NAME (bench/figures.py) --> and
# <!-- /figures:NAME -->.
TARGETS = {
    "docs/performance.md": {
        "headline": headline,
        "goals": goals_table,
        "tuning": tuning_table,
        "bench": bench_tables,
        "after-pruning": after_pruning,
        "memory-curve": memory_curve_note,
        "memory-breakdown": memory_breakdown_note,
        "polling-check": polling_check,
        "before-after": before_after,
        "before-after-d87e299": lambda: before_after("before-after-d87e299/latest.json"),
    },
    "docs/scaling.md": {"capacity": capacity_note},
    "docs/operations.md": {"faults": fault_table, "recovery": recovery_table},
    "docs/configuration.md": {"recovery-setting": recovery_setting},
    "docs/docker.md": {"docker": docker_report},
    "deployment/patches/README.md": {
        "speedups": speedups_tables,
        "speedups-paired": speedups_paired,
        "speedups-alone": lambda: speedups_paired("speedups-alone"),
        "speedups-alone-websocket": lambda: speedups_paired("speedups-alone-websocket"),
        "event-greenlets-paired": lambda: speedups_paired("event-greenlets-paired"),
    },
}


def render(text, sections, path):
    for name, make in sections.items():
        begin, end = f"<!-- figures:{name} (bench/figures.py) -->", f"<!-- /figures:{name} -->"
        if begin not in text or end not in text:
            raise SystemExit(f"{path} lacks the markers {begin} ... {end}")
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        around = "" if name in INLINE else "\n"
        text = f"{head}{begin}{around}{make()}{around}{end}{tail}"
    return text


def main(argv):
    stale = []
    for path, sections in TARGETS.items():
        current = (ROOT / path).read_text()
        wanted = render(current, sections, path)
        if wanted == current:
            continue
        if "--check" in argv:
            stale.append(path)
        else:
            (ROOT / path).write_text(wanted)
            print(f"wrote the figures in {path}")
    if stale:
        print(f"figures out of date in {', '.join(stale)}: run .venv/bin/python bench/figures.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
