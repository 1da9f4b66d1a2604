"""Render bench/results/latest.json as the markdown table of docs/performance.md (and, with --png, the plot).

    bench/.venv-asgi/bin/python bench/report.py bench/results/latest.json [--md out.md] [--png out.png]

Without --md the markdown goes to stdout. Only the standard library is needed for the markdown;
matplotlib (pinned in bench/requirements-asgi.txt) only for --png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAMES = {
    "template": "Template (Flask-SocketIO, gevent)",
    "template_tuned": "Template, tuned",
    "template_alt": "Template, other checkout",
    "template_simplews": "Template on plain gevent + simple-websocket",
    "node": "Node socket.io",
    "asgi": "python-socketio ASGI",
}
SHORT = {
    "template": "Template",
    "template_tuned": "Template tuned",
    "template_alt": "Template alt",
    "template_simplews": "Template simple-websocket",
    "node": "Node",
    "asgi": "ASGI",
}


def dig(obj, dotted):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def fmt(value, digits=0):
    if value is None:
        return "–"
    if isinstance(value, float) and digits == 0 and abs(value) < 10 and value != int(value):
        digits = 1
    return f"{value:,.{digits}f}"


def cpu_ms_per_1000(med):
    cpu, rate = med.get("server.total.cpu_pct_of_core"), med.get("echo_per_s")
    if cpu is None or not rate:
        return None
    return cpu * 10 / (rate / 1000)  # (cpu% / 100) * 1000 ms per s, divided by thousands of messages per s


def rows(doc):
    s = doc["sizes"]
    r = []
    r.append(
        (
            "Connect",
            f"clients/s reached ({s['connect_clients']:,} clients asked at {s['connect_rate']}/s)",
            "connect",
            "connects_per_s",
            0,
            True,
        )
    )
    r.append(("Connect", "connect p99, ms (handshake to `connect`)", "connect", "connect.p99_ms", 0, False))
    r.append(("Connect", "upgraded to WebSocket p99, ms", "connect", "upgraded.p99_ms", 0, False))
    r.append(("Connect", "failed connections", "connect", "connect_failed", 0, False))
    r.append(
        (
            "WS echo",
            f"echoes/s ({s['echo_clients']} clients, 1 in flight each, {s['echo_duration']:g} s)",
            "echo_ws",
            "echo_per_s",
            0,
            True,
        )
    )
    r.append(("WS echo", "latency p50 / p99, ms", "echo_ws", ("latency.p50_ms", "latency.p99_ms"), 1, False))
    r.append(
        (
            "WS echo",
            "server CPU, % of one core (apps+HAProxy+Redis)",
            "echo_ws",
            "server.total.cpu_pct_of_core",
            0,
            False,
        )
    )
    r.append(
        (
            "WS echo",
            "server CPU ms per 1,000 echoes (all server processes)",
            "echo_ws",
            "server_cpu_ms_per_1000",
            0,
            False,
        )
    )
    r.append(
        (
            "Polling echo",
            f"echoes/s ({s['polling_clients']} clients, long-polling only, {s['polling_duration']:g} s)",
            "echo_polling",
            "echo_per_s",
            0,
            True,
        )
    )
    r.append(("Polling echo", "latency p50 / p99, ms", "echo_polling", ("latency.p50_ms", "latency.p99_ms"), 1, False))
    r.append(("Polling echo", "server CPU ms per 1,000 echoes", "echo_polling", "server_cpu_ms_per_1000", 0, False))
    asked = s["broadcast_clients"] * s["broadcast_senders"] * s["broadcast_rate"]
    r.append(
        (
            "Broadcast",
            f"delivered, % of {asked:,.0f}/s asked ({s['broadcast_clients']:,} clients, "
            f"{s['broadcast_senders']} senders x {s['broadcast_rate']:g}/s, {s['broadcast_duration']:g} s)",
            "broadcast",
            lambda m: 100 * m["delivered_fraction"] if m.get("delivered_fraction") is not None else None,
            1,
            True,
        )
    )
    r.append(
        ("Broadcast", "delivery latency p50 / p99, ms", "broadcast", ("latency.p50_ms", "latency.p99_ms"), 1, False)
    )
    r.append(("Broadcast", "server CPU, % of one core", "broadcast", "server.total.cpu_pct_of_core", 0, False))
    r.append(("Broadcast", "server CPU ms per 1,000 deliveries", "broadcast", "server_cpu_ms_per_1000", 1, False))
    if "broadcast_ceiling" in doc.get("medians", {}):  # older results files lack it
        limit = fmt(s.get("ceiling_p99_ms", 100))
        r.append(
            (
                "Broadcast ceiling",
                f"highest deliveries/s with 100% delivered and p99 < {limit} ms "
                f"({s.get('ceiling_clients', 0):,} clients, {s.get('ceiling_senders')} senders, rate stepped up "
                f"every {s.get('ceiling_step_duration', 0):g} s)",
                "broadcast_ceiling",
                "ceiling_deliveries_per_s",
                0,
                True,
            )
        )
        r.append(
            (
                "Broadcast ceiling",
                "at that step: delivered/s achieved / p99, ms",
                "broadcast_ceiling",
                ("ceiling_delivered_per_s", "ceiling_p99_ms"),
                0,
                True,
            )
        )
    r.append(
        (
            "Memory",
            f"RSS of all server processes with {s['broadcast_clients']:,} clients, MB",
            "broadcast",
            "server.total.rss_mb",
            0,
            False,
        )
    )
    r.append(("Memory", "of which the app processes, MB", "broadcast", "server.app.rss_mb", 0, False))
    r.append(
        (
            "Memory",
            f"app RSS added per connection ({s['connect_clients']:,} clients connected on a fresh stack), KB",
            "connect",
            "app_rss_kb_per_conn",
            0,
            False,
        )
    )
    r.append(
        ("Load generator", "its CPU during WS echo, % of one core", "echo_ws", "loadgen_cpu_pct_of_core", 0, False)
    )
    r.append(
        (
            "Other load",
            "CPU used by other programs during WS echo, % of one core",
            "echo_ws",
            "other_cpu_pct_of_core",
            0,
            False,
        )
    )
    return r


def value_of(med, metric):
    if med is None:
        return None
    if callable(metric):
        return metric(med)
    if isinstance(metric, tuple):
        vals = [med.get(m) for m in metric]
        return None if any(v is None for v in vals) else vals
    return med.get(metric)


def cell(value, digits):
    if isinstance(value, list):
        return " / ".join(fmt(v, digits) for v in value)
    return fmt(value, digits)


def ratio(a, b):
    if isinstance(a, list) and isinstance(b, list):
        return " / ".join(f"{x / y:.2f}x" if y else "–" for x, y in zip(a, b))
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.2f}x"


def capacity_lbs(doc):
    """' behind 2 HAProxy processes (maxconn 9950 each: ulimit -n 20000 per process)' for the sizes line."""
    n = doc["sizes"].get("capacity_haproxy_processes")
    if not n:
        return ""
    maxconn = doc["sizes"].get("capacity_haproxy_maxconn") or doc["machine"].get("haproxy_maxconn")
    limit = (doc["machine"].get("ulimit_nofile") or [None, None])[1]
    return (
        f" behind {n} HAProxy process{'es' if n > 1 else ''} (maxconn {maxconn} each: ulimit -n {limit} per "
        "process, two descriptors per proxied connection)"
    )


def markdown(doc):
    m = doc["machine"]
    med = doc["medians"]
    systems = [
        s
        for s in ("template", "template_tuned", "template_alt", "template_simplews", "node", "asgi")
        if any(s in v for v in med.values())
    ]
    bases = [s for s in ("template", "template_tuned", "template_alt") if s in systems]
    refs = [s for s in ("node", "asgi") if s in systems]
    # ratio columns: (numerator, denominator, header)
    pairs = [(b, r, f"{SHORT[b]}/{SHORT[r]}") for b in bases for r in refs]
    if "template_simplews" in systems and "template" in systems:  # the WebSocket server A/B
        pairs.append(("template_simplews", "template", "simple-websocket/gevent-websocket"))
    runs = doc["sizes"]["runs"]
    out = []
    v = m["versions"]
    tp = v.get("template_packages", {})
    ap = v.get("asgi_packages", {})
    np_ = v.get("node_packages", {})
    out.append(
        f"Measured {m['date'][:10]} on {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}; Python {v.get('python_template')}, Node {v.get('node')}, HAProxy {v.get('haproxy')}, "
        f"Redis {v.get('redis')}; template at {m.get('template_git', '?')}. Load average at start {' '.join(m['loadavg_at_start'])}, at end "
        f"{' '.join(m.get('loadavg_at_end', ['?']))}. Every system: 2 server processes behind the repo's "
        f"haproxy.cfg (sticky on `io`) and one Redis, all on this machine together with the load generator "
        f"({doc['sizes']['workers']} Node processes). Medians of {runs} interleaved run(s)."
    )
    out.append("")
    out.append(
        f"Versions: Flask-SocketIO {tp.get('Flask-SocketIO')}, python-socketio {tp.get('python-socketio')}, "
        f"gevent {tp.get('gevent')}, gunicorn {tp.get('gunicorn')}; socket.io {np_.get('socket.io')} + "
        f"@socket.io/redis-adapter {np_.get('@socket.io/redis-adapter')}; uvicorn {ap.get('uvicorn')} + "
        f"uvloop {ap.get('uvloop')}; client socket.io-client {np_.get('socket.io-client')}"
        + (
            f"; Template simple-websocket: simple-websocket {sp.get('simple-websocket')}, wsproto {sp.get('wsproto')} "
            f"(no gevent-websocket, gunicorn's plain gevent worker)"
            if (sp := v.get("simplews_packages"))
            else ""
        )
        + "."
    )
    out.append("")
    header = ["Scenario", "Measure"] + [SHORT[s] for s in systems] + [h for _, _, h in pairs]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    for scenario_label, label, scenario, metric, digits, _higher_better in rows(doc):
        if scenario not in med:
            continue
        vals = {s: value_of(med[scenario].get(s), metric) for s in systems}
        cells = [scenario_label, label] + [cell(vals[s], digits) for s in systems]
        if metric == "ceiling_deliveries_per_s":  # no step passed
            cells[2:] = [f"{c} (below the first step)" if vals[s] == 0 else c for c, s in zip(cells[2:], systems)]
        if scenario_label in ("Load generator", "Other load"):
            cells += ["" for _ in pairs]
        else:
            cells += [ratio(vals[a], vals[b]) for a, b, _ in pairs]
        out.append("| " + " | ".join(cells) + " |")
    out += ceiling_table(doc, systems)
    out += curve_table(doc)
    if doc.get("capacity"):
        out.append("")
        out.append(
            "| Capacity (template, WebSocket only) | processes | HAProxy processes | clients asked | alive after hold | "
            "failures | ramp, s | app RSS per 1,000 clients, MB | all servers' RSS per 1,000 clients, MB |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in doc["capacity"]:
            lbs = c.get("haproxy_processes", 1)  # results from before there could be several
            if "error" in c:
                out.append(f"| {c['variant']} | {c['processes']} | {lbs} | – | error | – | – | – | – |")
                continue
            out.append(
                f"| {c['variant']} | {c['processes']} | {lbs} | {c['clients']:,} | {c.get('alive_after_hold', 0):,} | "
                f"{c.get('failures', 0):,} | {fmt(c.get('ramp_s'), 1)} | {fmt(c.get('app_rss_mb_per_1000_conns'), 1)} | "
                f"{fmt(c.get('total_rss_mb_per_1000_conns'), 1)} |"
            )
    if doc.get("scaling_medians"):
        sm = doc["scaling_medians"]
        out.append("")
        out.append(
            f"| Cost growth (template, WS echo, {doc['sizes']['scaling_clients']} clients) | "
            + " | ".join(f"{n} proc." for n in sm)
            + " |"
        )
        out.append("|---|" + "---:|" * len(sm))
        out.append("| echoes/s | " + " | ".join(fmt(sm[n]["echo_per_s"]) for n in sm) + " |")
        out.append("| latency p99, ms | " + " | ".join(fmt(sm[n]["p99_ms"], 1) for n in sm) + " |")
        out.append(
            "| server CPU, % of one core | " + " | ".join(fmt(sm[n]["server_cpu_pct_of_core"]) for n in sm) + " |"
        )
        out.append("| app RSS, MB | " + " | ".join(fmt(sm[n]["app_rss_mb"]) for n in sm) + " |")
    s = doc["sizes"]
    out.append("")
    out.append(
        f"Sizes used: connect {s['connect_clients']} clients at {s['connect_rate']}/s; WS echo {s['echo_clients']} "
        f"clients x {s['echo_duration']:g} s; broadcast {s['broadcast_clients']} clients, {s['broadcast_senders']} "
        f"senders x {s['broadcast_rate']:g}/s for {s['broadcast_duration']:g} s; polling echo {s['polling_clients']} "
        f"clients x {s['polling_duration']:g} s; capacity {s.get('capacity_clients_used')} clients on "
        f"{s['capacity_processes']} processes{capacity_lbs(doc)}, held {s['capacity_hold']:g} s; cost growth "
        f"{s['scaling_processes']} processes x {s['scaling_duration']:g} s; runs {runs}"
        + (" (quick)" if s.get("quick") else "")
        + "."
    )
    if "broadcast_ceiling" in med:
        out[-1] = out[-1][:-1] + (
            f"; broadcast ceiling {s['ceiling_clients']} clients, {s['ceiling_senders']} senders, steps "
            f"{s['ceiling_steps']} deliveries/s, {s['ceiling_step_duration']:g} s each + "
            f"{s['ceiling_grace']:g} s grace, stopped at the first step below 100% delivered or with p99 >= "
            f"{s['ceiling_p99_ms']:g} ms."
        )
    for note in doc.get("notes", []):
        out.append(f"Note: {note}.")
    return "\n".join(out) + "\n"


CURVE_NAMES = {"template": "Template", "node": "Node", "asgi": "ASGI"}


def curve_table(doc):
    """memory_curve: app memory per idle WebSocket client (after the upgrade) at each size, KB, medians; the
    template's ratio to Node and how many such clients one GiB of app memory holds."""
    med = doc.get("memory_curve_medians") or {}
    if not med:
        return []
    systems = sorted(med, key=lambda s: (not s.startswith("template"), s != "node", s))
    sizes = sorted({int(n) for s in med.values() for n in s}, key=int)
    rows = next((r for r in doc.get("memory_curve", []) if "processes" in r), {})
    out = [
        "",
        f"| Memory per connection: idle WebSocket clients on {rows.get('processes', '?')} processes "
        f"(behind {rows.get('haproxy_processes', '?')} HAProxy processes), app RSS added per client, KB | "
        + " | ".join(CURVE_NAMES.get(s, s) for s in systems)
        + (" | Template/Node | clients per GiB (Template, Node)" if {"template", "node"} <= set(med) else "")
        + " |",
        "|---|" + "---:|" * len(systems) + ("---:|---:|" if {"template", "node"} <= set(med) else ""),
    ]
    for n in sizes:
        vals = {s: med[s].get(str(n), {}) for s in systems}
        cells = [f"{n:,} clients"]
        for s in systems:
            v = vals[s]
            if not v:
                cells.append("")
                continue
            each = "/".join(f"{x:.1f}" for x in v["each_run"])
            flag = "" if v.get("all_upgraded", True) else " (not all upgraded)"
            cells.append(f"**{v['app_kb_per_conn']:.1f}** ({each}){flag}")
        if {"template", "node"} <= set(med):
            t, nd = vals["template"].get("app_kb_per_conn"), vals["node"].get("app_kb_per_conn")
            cells.append(f"{t / nd:.2f}x" if t and nd else "")
            cells.append(f"{1024 * 1024 / t:,.0f}, {1024 * 1024 / nd:,.0f}" if t and nd and t > 0 and nd > 0 else "")
        out.append("| " + " | ".join(cells) + " |")
    for system in systems:
        errors = [r for r in doc.get("memory_curve", []) if r.get("system") == system and "error" in r]
        if errors:
            reached = [max((p["clients"] for p in r.get("points", [])), default=0) for r in errors]
            out.append("")
            out.append(
                f"{CURVE_NAMES.get(system, system)}: {len(errors)} of "
                f"{sum(r.get('system') == system for r in doc['memory_curve'])} runs ended early "
                f"({errors[0]['error']}), after reaching {', '.join(f'{n:,}' for n in reached)} clients: no figure "
                "above that size."
            )
    env = next((r.get("env") for r in doc.get("memory_curve", []) if r.get("system") == "template"), None)
    if env:
        out.append("")
        out.append(
            "Template caps raised for the curve so that 10,000 clients fit on 2 processes (they allocate nothing): "
            + ", ".join(f"`{k}={v}`" for k, v in env.items())
            + "."
        )
    return out


def ceiling_table(doc, systems):
    """broadcast_ceiling step by step: median delivered % and p99 of the runs that reached each step."""
    steps = doc.get("ceiling_steps") or {}
    systems = [s for s in systems if steps.get(s)]
    if not systems:
        return []
    asked = sorted({row["asked_deliveries_per_s"] for s in systems for row in steps[s]})
    out = [
        "",
        "| Broadcast ceiling, asked deliveries/s | " + " | ".join(f"{a:,}" for a in asked) + " |",
        "|---|" + "---:|" * len(asked),
    ]
    for s in systems:
        by = {row["asked_deliveries_per_s"]: row for row in steps[s]}
        cells = []
        for a in asked:
            row = by.get(a)
            if row is None:
                cells.append("not tried")
                continue
            frac, p99 = row.get("delivered_fraction"), row.get("latency.p99_ms")
            text = f"{fmt(100 * frac if frac is not None else None, 1)}%, p99 {fmt(p99)} ms"
            cells.append(text + ("" if row["passed"] == row["tried"] else f" ({row['passed']}/{row['tried']} passed)"))
        out.append(f"| {SHORT[s]}: delivered, p99 | " + " | ".join(cells) + " |")
    return out


def plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = doc["medians"]
    systems = [
        s
        for s in ("template", "template_tuned", "template_alt", "template_simplews", "node", "asgi")
        if any(s in v for v in med.values())
    ]
    colors = {
        "template": "#d62728",
        "template_tuned": "#ff9896",
        "template_alt": "#ff7f0e",
        "template_simplews": "#9467bd",
        "node": "#2ca02c",
        "asgi": "#1f77b4",
    }
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))

    ax = axes[0][0]
    groups = [("echo_ws", "WS echo"), ("echo_polling", "polling echo")]
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        vals = [med.get(g, {}).get(s, {}).get("echo_per_s", 0) for g, _ in groups]
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=SHORT[s], color=colors[s])
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(groups))], [g[1] for g in groups])
    ax.set_ylabel("echoes / s (median)")
    ax.set_title("Echo throughput, 2 processes each")
    if systems:
        ax.legend(fontsize=8)

    ax = axes[0][1]
    metrics = [("echo_ws", "WS echo"), ("echo_polling", "polling echo"), ("broadcast", "broadcast")]
    for i, s in enumerate(systems):
        p50 = [med.get(g, {}).get(s, {}).get("latency.p50_ms", 0) for g, _ in metrics]
        p99 = [med.get(g, {}).get(s, {}).get("latency.p99_ms", 0) for g, _ in metrics]
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, p99, width, color=colors[s], alpha=0.35)
        ax.bar(xs, p50, width, color=colors[s], label=SHORT[s])
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(metrics))], [m[1] for m in metrics])
    ax.set_ylabel("ms (solid p50, light p99)")
    ax.set_yscale("log")
    ax.set_title("Latency")
    if systems:
        ax.legend(fontsize=8)

    ax = axes[1][0]
    sm = doc.get("scaling_medians", {})
    if sm:
        xs = [int(n) for n in sm]
        ax.plot(xs, [sm[n]["echo_per_s"] for n in sm], "o-", color=colors["template"], label="echoes/s")
        ax.set_xticks(xs)
        ax.set_xlabel("template processes")
        ax.set_ylabel("echoes / s")
        ax2 = ax.twinx()
        ax2.plot(xs, [sm[n]["server_cpu_pct_of_core"] for n in sm], "s--", color="grey", label="server CPU %")
        ax2.set_ylabel("server CPU, % of one core")
        ax.set_title(
            f"Cost growth: WS echo, {doc['sizes']['scaling_clients']} clients ({doc['machine']['nproc']} cores)"
        )
    ax = axes[1][1]
    for c in doc.get("capacity", []):
        steps = c.get("steps") or []
        if steps:
            idle = c["idle_rss_mb"]["app"]
            ax.plot(
                [0] + [st["connected"] for st in steps],
                [idle] + [st["rss_mb"]["app"] for st in steps],
                "o-",
                label=f"template x{c['processes']}, {c.get('haproxy_processes', 1)} HAProxy: {c['variant']}",
            )
    ax.set_xlabel("connected WebSocket clients")
    ax.set_ylabel("app processes' RSS, MB")
    ax.set_title("Memory vs connections")
    if doc.get("capacity"):
        ax.legend(fontsize=8)
    fig.suptitle(
        f"bench/run {doc['machine']['date'][:10]}: {doc['machine']['nproc']} cores, medians of "
        f"{doc['sizes']['runs']} run(s)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="?", default=str(Path(__file__).resolve().parent / "results" / "latest.json"))
    p.add_argument("--md")
    p.add_argument("--png")
    a = p.parse_args(argv)
    doc = json.loads(Path(a.json).read_text())
    text = markdown(doc)
    if a.md:
        Path(a.md).write_text(text)
    else:
        sys.stdout.write(text)
    if a.png:
        plot(doc, a.png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
