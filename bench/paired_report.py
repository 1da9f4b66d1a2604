"""The paired A/B's tables (bench/run --paired, bench/paired_ab.py), as markdown.

    bench/.venv-asgi/bin/python bench/paired_report.py bench/results/speedups-paired/latest.json [--md out.md] [--each]

A pair ratio is the variant's figure divided by the template's in the same pair (run back to back). For every
speedup that a variant turns off and every row that speedup serves (its ROWS): the median of the pair ratios,
their min-max and number, the A/A's min-max on the same row (the template against itself, paired the same way),
and a verdict. Every row here is a cost (app CPU per message, app memory per connection), so a ratio above 1
is what the speedup saves, and the gain direction is up:

- **clears the A/A spread (p ...)**: the median is above the A/A's highest, and the pair ratios stand above the
  A/A's as a whole: a one-sided rank test (Mann-Whitney U, exact over every way of splitting the pooled ratios
  into two groups of those sizes, ties counted half) gives p <= 0.05;
- **median beyond, not significant (p ...)**: the median is above the A/A's highest, the rank test is not;
- **within the spread**: the median is inside the A/A's range: no gain this A/B can tell apart;
- **below the spread**: the median is under the A/A's lowest: the speedup costs on this row.

A speedup is kept when it clears the spread on a row it serves, and it is below the spread on none. (Until
2026-12-06 every single pair had to be above the A/A's highest: with 5 pairs and this machine's A/A spread of
up to 15%, that rejected gains of 10-20% which, together, cost the WebSocket echo a third of its app CPU,
docs/performance.md.) Writes <json>-paired.json beside the results (the
summary) unless --no-summary."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
from pathlib import Path

from paired_ab import AA, row_scenario, row_value  # bench/paired_ab.py, beside this file

METRIC_LABELS = {
    "app_cpu_ms_per_1000": "app CPU per message",
    "app_rss_kb_per_conn": "app memory per connection",
    "app_kb_per_conn": "app memory per idle connection",
    "server_cpu_ms_per_1000": "server CPU per message",
    "echo_per_s": "throughput",
}
HIGHER_IS_BETTER = {"echo_per_s", "delivered_per_s"}  # for these a speedup's gain is a ratio below 1


def pair_ratios(doc, variant, row, metric):
    """[(pair number, variant/template)] of every pair of `variant` on the scenario of `row`."""
    out = []
    for pair in doc["pairs"]:
        if pair["variant"] != variant or pair["scenario"] != row_scenario(row):
            continue
        base = row_value(pair["template"].get("result"), row, metric)
        value = row_value(pair["variant_side"].get("result"), row, metric)
        if base and value is not None:
            out.append((pair["pair"], value / base))
    return out


SIGNIFICANT = 0.05  # the rank test's p at or below which a median beyond the A/A range counts


def u_statistic(values, aa, sign):
    """Mann-Whitney U of `values` over `aa` in the gain direction: pairs (v, a) with v beyond a, ties half."""
    return sum(1.0 if sign * (v - a) > 0 else 0.5 if v == a else 0.0 for v in values for a in aa)


def rank_test(values, aa, sign=1):
    """One-sided p that `values` stand beyond `aa` by chance: the share of the splits of the pooled ratios into
    groups of the same sizes whose U is at least the observed one (every split up to 100,000, else 20,000 drawn
    with a fixed seed)."""
    pooled, n = list(values) + list(aa), len(values)
    observed = u_statistic(values, aa, sign)
    total = math.comb(len(pooled), n)
    if total <= 100_000:
        splits = itertools.combinations(range(len(pooled)), n)
    else:
        draw = random.Random(0)
        splits = (draw.sample(range(len(pooled)), n) for _ in range(20_000))
        total = 20_000
    hits = 0
    for chosen in splits:
        picked = set(chosen)
        group = [pooled[i] for i in picked]
        rest = [pooled[i] for i in range(len(pooled)) if i not in picked]
        hits += u_statistic(group, rest, sign) >= observed - 1e-9
    return hits / total


def verdict(values, aa, gain_up=True):
    """(verdict, pairs beyond the A/A range in the gain direction) of a row's pair ratios."""
    if not values or len(aa) < 2:
        return "no A/A to judge by" if values else "not measured", 0
    sign = 1 if gain_up else -1
    median = statistics.median(values)
    edge, other = (max(aa), min(aa)) if gain_up else (min(aa), max(aa))
    beyond = sum(sign * (v - edge) > 0 for v in values)
    if sign * (median - edge) > 0:
        p = rank_test(values, aa, sign)
        if p <= SIGNIFICANT:
            return f"clears the A/A spread (p {p:.3f})", beyond
        return f"median beyond, not significant (p {p:.3f})", beyond
    if sign * (median - other) < 0:
        return "below the spread (costs)", beyond
    return "within the spread", beyond


def fmt(values):
    return "/".join(f"{v:.3f}" for v in values)


def summarize(doc):
    """{speedup: {rows: [...], keep: bool|None}} and {variant: {turns_off, log_turns_off, ...}}."""
    variants = {}
    for name, info in doc["variants"].items():
        seen = {}  # what the instances' start log lines said, over every pair
        notes = set()
        for pair in doc["pairs"]:
            if pair["variant"] != name:
                continue
            for side, key in ((pair["variant_side"], "variant"), (pair["template"], "template")):
                for names in (side.get("speedups_on") or {}).values():
                    seen.setdefault(key, set()).add(tuple(names))
            notes.update(pair["variant_side"].get("log_notes") or [])
        logged = None
        if len(seen.get("variant", ())) == 1 and len(seen.get("template", ())) == 1:
            (template_on,), (variant_on,) = seen["template"], seen["variant"]
            logged = [n for n in template_on if n not in variant_on]
        variants[name] = {
            "turns_off": info["turns_off"],  # by SPEEDUP_NAMES and REQUIRES
            "log_turns_off": logged,  # by the start log lines (None: not read, or the instances disagreed)
            "log_lines_differ": len(seen.get("variant", ())) > 1 or len(seen.get("template", ())) > 1,
            "log_notes": sorted(notes),
            "pairs": sum(p["variant"] == name for p in doc["pairs"]),
        }
    speedups = {}
    for variant, info in doc["variants"].items():
        if variant == doc.get("aa", AA):
            continue
        # what it turns off: the start log's word where it was read, else SPEEDUP_NAMES and REQUIRES'
        off = variants[variant]["log_turns_off"]
        off = info["turns_off"] if off is None else off
        aimed = info.get("for", off)
        for name in aimed or [None]:
            rows = (doc["speedups"][name]["rows"] if name else None) or info["rows"]  # no ROWS: every row run
            key = name if name and len(aimed) == 1 else variant[len("template+") :]
            if name and len(aimed) > 1:  # SPEEDUPS=off: each one's rows
                key = f"{name} (via {key})"
            entry = speedups.setdefault(key, {"variant": variant, "speedup": name, "rows": []})
            entry["also_off"] = [n for n in off if n != name] if name else off
            entry["alone"] = not entry["also_off"]
            for row, metric in rows:
                values = [r for _, r in pair_ratios(doc, variant, row, metric)]
                aa = [r for _, r in pair_ratios(doc, doc.get("aa", AA), row, metric)]
                gain_up = metric not in HIGHER_IS_BETTER
                text, beyond = verdict(values, aa, gain_up)
                entry["rows"].append(
                    {
                        "row": row,
                        "metric": metric,
                        "pairs": [round(v, 3) for v in values],
                        "median": round(statistics.median(values), 3) if values else None,
                        "aa_pairs": [round(v, 3) for v in aa],
                        "aa_range": [round(min(aa), 3), round(max(aa), 3)] if aa else None,
                        "beyond_aa": beyond,
                        "verdict": text,
                    }
                )
            verdicts = [r["verdict"] for r in entry["rows"]]
            if any(v in ("not measured", "no A/A to judge by") for v in verdicts) or not verdicts:
                entry["keep"] = None
            else:
                cleared = any(v.startswith("clears") for v in verdicts)
                entry["keep"] = cleared and not any(v.startswith("below") for v in verdicts)
    return speedups, variants


def markdown(doc, each=False):
    speedups, variants = summarize(doc)
    pairs = doc["pairs"]
    longest = max((p["seconds"] for p in pairs), default=0)
    machine = doc.get("machine", {})
    sizes = doc.get("sizes", {})
    lines = [
        f"Paired A/B, {machine.get('date', '?')}, {machine.get('nproc', '?')} cores ({machine.get('cpu_model', '?')}), "
        f"template {machine.get('template_git', '?')}: {len(pairs)} pairs in {sizes.get('pairs')} round(s) "
        f"(a pair: the template and the variant on one scenario, each on a fresh stack, back to back; the longest "
        f"pair took {longest:.0f} s), {doc.get('elapsed_s', 0) / 60:.0f} min in all"
        + ("; **interrupted**" if doc.get("interrupted") else "")
        + ".",
        "",
        "**What each variant turns off** (the instances' start log line `speedups on: ...` against the template's; "
        "*by REQUIRES*: SPEEDUP_NAMES and the modules' REQUIRES):",
        "",
        "| variant | turns off (start log) | by REQUIRES | pairs | measured alone |",
        "|---|---|---|---|---|",
    ]
    for name, info in variants.items():
        logged = info["log_turns_off"]
        shown = ", ".join(logged) if logged else ("none" if logged == [] else "not read")
        if info["log_lines_differ"]:
            shown += " (instances or pairs differ)"
        required = ", ".join(info["turns_off"]) or "none"
        n_off = len(logged) if logged is not None else len(info["turns_off"])
        alone = "yes" if n_off <= 1 else f"**no: {n_off} speedups off**"
        if logged is not None and sorted(logged) != sorted(info["turns_off"]):
            alone += "; **log and REQUIRES disagree**"
        lines.append(f"| `{name[len('template+') :]}` | {shown} | {required} | {info['pairs']} | {alone} |")
    notes = sorted({n for info in variants.values() for n in info["log_notes"]})
    if notes:
        lines += ["", "Start log notes: " + "; ".join(f"`{n}`" for n in notes)]
    lines += [
        "",
        "**Per speedup and row**: variant ÷ template in each pair (the speedup left off; above 1: the speedup saves "
        "that much), median, each pair, and the A/A's range on the same row.",
        "",
        "| speedup | row | median | pairs (min–max) | n | A/A range (n) | beyond A/A | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in speedups.items():
        label = f"`{key}`" + ("" if entry["alone"] else f" ⚠ also off: {', '.join(entry['also_off'])}")
        for r in entry["rows"]:
            row = f"{r['row']} {METRIC_LABELS.get(r['metric'], r['metric'])}"
            if not r["pairs"]:
                lines.append(f"| {label} | {row} | – | – | 0 | – | – | {r['verdict']} |")
                continue
            aa = f"{r['aa_range'][0]:.3f}–{r['aa_range'][1]:.3f} ({len(r['aa_pairs'])})" if r["aa_range"] else "–"
            beyond = f"{r['beyond_aa']} of {len(r['pairs'])}" if len(r["aa_pairs"]) > 1 else "–"
            lines.append(
                f"| {label} | {row} | **{r['median']:.3f}** | {fmt(r['pairs'])} ({min(r['pairs']):.3f}–{max(r['pairs']):.3f}) "
                f"| {len(r['pairs'])} | {aa} | {beyond} | {r['verdict']} |"
            )
    lines += [
        "",
        "**Verdict per speedup** (kept when it clears the A/A spread on a row it serves, below it on none; the rule: "
        "bench/paired_report.py):",
        "",
    ]
    for key, entry in speedups.items():
        keep = entry["keep"]
        word = (
            "not judged (a row unmeasured or no A/A)" if keep is None else ("keep" if keep else "does not pay: remove")
        )
        if not entry["alone"]:
            word += (
                f" (⚠ not measured alone: `{entry['variant'][len('template+') :]}` also turns off "
                f"{', '.join(entry['also_off'])})"
            )
        lines.append(f"- `{key}`: {word}")
    aa_rows = doc["variants"].get(doc.get("aa", AA), {}).get("rows", [])
    if aa_rows:
        lines += ["", "**A/A** (the template against itself, paired the same way): each pair's ratio per row.", ""]
        for row, metric in aa_rows:
            values = [r for _, r in pair_ratios(doc, doc.get("aa", AA), row, metric)]
            if values:
                lines.append(
                    f"- {row} {METRIC_LABELS.get(metric, metric)}: median {statistics.median(values):.3f}, "
                    f"{fmt(values)} ({min(values):.3f}–{max(values):.3f}, n {len(values)})"
                )
    if each:
        lines += [
            "",
            "**Each pair** (first: which ran first; other load: CPU of neither the servers nor the load generator, "
            "% of a core, template/variant):",
            "",
            "| round | variant | scenario | first | began | s | other load |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in pairs:
            other = "/".join(
                str((side.get("result") or {}).get("other_cpu_pct_of_core", "–"))
                for side in (p["template"], p["variant_side"])
            )
            lines.append(
                f"| {p['pair']} | `{p['variant'][len('template+') :]}` | {p['scenario']} | {p['first']} "
                f"| {min(p['template']['began'], p['variant_side']['began'])} | {p['seconds']:.0f} | {other} |"
            )
    return "\n".join(lines) + "\n", speedups, variants


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="latest.json of bench/run --paired")
    p.add_argument("--md", help="write the markdown here (default: stdout)")
    p.add_argument("--each", action="store_true", help="also list every pair (order, time, other load)")
    p.add_argument("--no-summary", action="store_true", help="do not write <results>-paired.json")
    a = p.parse_args(argv)
    doc = json.loads(Path(a.results).read_text())
    if doc.get("method") != "paired":
        raise SystemExit(f"{a.results}: not a bench/run --paired result (bench/ab_report.py reads the others)")
    text, speedups, variants = markdown(doc, each=a.each)
    if a.md:
        Path(a.md).write_text(text)
    else:
        sys.stdout.write(text)
    if not a.no_summary:
        summary = Path(a.results).with_name(Path(a.results).stem + "-paired.json")
        summary.write_text(json.dumps({"speedups": speedups, "variants": variants}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
