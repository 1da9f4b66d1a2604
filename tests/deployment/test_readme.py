"""The README stays true: its commands exist, its code is the tested code, and docs/configuration.md lists every
variable read."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()

# Where settings are read: Python env look-ups and HAProxy's "${VAR}" / .if defined(VAR).
SOURCES = [
    "gunicorn.conf.py",
    "haproxy/haproxy.cfg",
    "scripts/native_stack.py",
    *(str(path) for package in ("application", "operations", "patches") for path in (ROOT / package).glob("*.py")),
]
PATTERNS = [
    r'os\.getenv\("([A-Z][A-Z0-9_]+)"',
    r'os\.environ\.get\("([A-Z][A-Z0-9_]+)"',
    r'env_(?:str|bool|number|list|secret)\(env, "([A-Z][A-Z0-9_]+)"',
    r"\$\{([A-Z][A-Z0-9_]+)",
    r"defined\(([A-Z][A-Z0-9_]+)\)",
    r'base_env\.get\("([A-Z][A-Z0-9_]+)"',
]


def variables_read():
    found = set()
    for source in SOURCES:
        text = (ROOT / source).read_text()
        for pattern in PATTERNS:
            found.update(re.findall(pattern, text))
    return found


def documented(text=CONFIGURATION):
    table_rows = [line for line in text.splitlines() if line.startswith("| `")]
    names = set()
    for row in table_rows:
        first_cell = row.split("|")[1]
        names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
        if "APP1_ADDR" in first_cell:
            names.update(f"APP{i}_ADDR" for i in range(1, 9))
    return names


def test_every_variable_read_is_in_the_configuration_table():
    missing = variables_read() - documented()
    assert not missing, f"add to the configuration table in docs/configuration.md: {sorted(missing)}"


def test_the_readme_settings_are_in_the_configuration_table():
    shown = documented(README)
    assert shown, "the README's table of settings to change first is gone"
    assert not shown - documented(), f"not in docs/configuration.md: {sorted(shown - documented())}"


def test_the_first_lines_give_the_two_commands_and_they_exist():
    head = "\n".join(README.splitlines()[:5])
    assert "`docker compose up --build`" in head and "`scripts/stack up`" in head and "`scripts/test`" in head
    for script in ("scripts/stack", "scripts/test", ".ci/run"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_code_shown_in_the_readme_is_the_tested_code():
    """Each line of the README's Python blocks stands in the file it comes from (comments aside)."""

    def code(line):
        return line.split("  #")[0].strip()

    sources = set()
    for path in ("examples/announcements.py", "tests/deployment/test_examples_extending.py", "deployment/operations/probes.py", "app.py"):
        sources.update(code(line) for line in (ROOT / path).read_text().splitlines())
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            assert code(line) in sources, line


def test_readme_figures_are_the_scripts_output():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_figures.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
