"""The project's proof stays true: every measured figure in docs/ (and deployment/patches/README.md) is what
bench/figures.py writes from the measuring scripts' result files (bench/results/, docs/faults.json)."""

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent


def test_the_figures_in_the_docs_are_the_generators_output():
    result = subprocess.run(
        [sys.executable, str(BENCH / "figures.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deployment_and_its_tests_do_not_depend_on_bench():
    """bench/ can be deleted: nothing the app, the image or the stack's tests run imports from it."""
    pattern = re.compile(
        r"^\s*(from|import)\s+(bench|figures|measure_\w+|memory_breakdown\w*|report|ab_report|paired_ab|paired_report)\b"
    )
    paths = [ROOT / name for name in ("app.py", "wsgi.py", "gunicorn.conf.py")]
    for folder in ("deployment", "application", "scripts", "tests"):
        paths += sorted((ROOT / folder).rglob("*.py"))
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in paths
        if "node_modules" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.match(line)
    ]
    assert not offenders, offenders
