"""Writes the README's measured figures from the scripts' own result files, so no figure is typed by hand:

- the fault table, from docs/faults.json (measured by scripts/measure_faults.py);
- the benchmark tables, from bench/results/latest.json (measured by bench/run).

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


SECTIONS = {"faults": fault_table, "bench": bench_tables}


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
