"""Where two templates' CPU goes, side by side: the py-spy profiles of `bench/run --profile` (one worker of each
system, run 1), per 1,000 messages of the scenario.

    bench/run --runs 1 --systems template,template_alt --template-root DIR --scenarios echo_ws \\
        --profile --profile-scenarios echo_ws --out bench/results/NAME
    .venv/bin/python bench/profile_diff.py bench/results/NAME            # writes NAME/profile-diff.md

A figure is the samples (py-spy at 200 Hz, running threads only) in which a function is on the stack (inclusive)
or on top (self), times 5 ms, per 1,000 messages the whole system handled during the profile: one of the
processes is sampled, so compare the columns, not the absolute values with other pages. Samples without any
Python frame are reported as "(no Python frame)": in a gevent worker, mostly greenlets being set up or torn down.
"""

import collections
import json
import re
import sys
from pathlib import Path

RATE_HZ = 200  # bench.py's py_spy_profiler
NO_FRAME = "(no Python frame)"
SCENARIO_DURATION = {"echo_ws": "echo_duration", "echo_polling": "polling_duration"}


def frame_name(frame):
    """'func (path/file.py:12)' without the line and without the site-packages or checkout prefix."""
    frame = re.sub(r":\d+\)$", ")", frame.strip())
    frame = re.sub(r"\(/.*?site-packages/", "(", frame)
    return re.sub(r"\(/[^()]*?/((deployment|realtime|application|demo)/)", r"(\1", frame) or NO_FRAME


def profile(path):
    """(samples, {function: inclusive samples}, {function: self samples}) of a py-spy raw (collapsed) file."""
    total, inclusive, own = 0, collections.Counter(), collections.Counter()
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame_name(f) for f in stack.split(";")] or [NO_FRAME]
        total += int(count)
        for name in set(frames):
            inclusive[name] += int(count)
        own[frames[-1]] += int(count)
    return total, inclusive, own


def per_1000(samples, messages):
    return samples * 1000 / RATE_HZ / messages * 1000  # ms per 1,000 messages


def diff(folder, scenario, systems, top=25):
    doc = json.loads((folder / "latest.json").read_text())
    run = doc["runs"][0][scenario]
    seconds = max(1, doc["sizes"][SCENARIO_DURATION[scenario]] - 1)  # as bench.py's profile
    columns = []
    for system in systems:
        total, inclusive, own = profile(folder / "raw" / f"py-spy-{system}-{scenario}.txt")
        messages = run[system]["echo_per_s"] * seconds
        columns.append((total, messages, inclusive, own))
    labels = [label(doc, system) for system in systems]
    lines = [
        f"### {scenario}",
        "",
        "Sampled CPU of one worker, ms per 1,000 messages: "
        + ", ".join(f"{name} {per_1000(c[0], c[1]):.1f}" for name, c in zip(labels, columns)),
        "",
    ]
    for kind, index in (("self (on top of the stack)", 3), ("inclusive (anywhere on the stack)", 2)):
        names = set().union(*(c[index] for c in columns))
        ranked = sorted(
            names,
            key=lambda n: (
                -max(abs(per_1000(c[index][n], c[1]) - per_1000(columns[0][index][n], columns[0][1])) for c in columns)
            ),
        )
        lines += [f"Largest differences, {kind}:", "", "| function | " + " | ".join(labels) + " |"]
        lines.append("| --- |" + " ---: |" * len(labels))
        for name in ranked[:top]:
            cells = " | ".join(f"{per_1000(c[index][name], c[1]):.1f}" for c in columns)
            lines.append(f"| `{name}` | {cells} |")
        lines.append("")
    return lines


def label(doc, system):
    machine = doc["machine"]
    if system == "template_alt":
        return f"template at {(machine.get('template_alt_git') or '?').split(' ')[0]}"
    return f"{system} at {machine['template_git'].split(' ')[0]}" if system == "template" else system


def main(argv):
    folder = Path(argv[0])
    doc = json.loads((folder / "latest.json").read_text())
    systems = [
        s
        for s in ("template", "template_alt")
        if s in doc["runs"][0].get("echo_ws", doc["runs"][0].get("echo_polling", {}))
    ]
    lines = [f"# py-spy profiles side by side ({doc['machine']['date'][:10]}, {doc['machine']['cpu_model']})", ""]
    lines.append("Written by `bench/profile_diff.py` (its docstring says how to read it).")
    lines.append("")
    for scenario in SCENARIO_DURATION:
        if all((folder / "raw" / f"py-spy-{s}-{scenario}.txt").exists() for s in systems):
            lines += diff(folder, scenario, systems)
    (folder / "profile-diff.md").write_text("\n".join(lines))
    print(f"wrote {folder / 'profile-diff.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
