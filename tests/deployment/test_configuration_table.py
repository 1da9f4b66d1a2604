"""docs/configuration.md lists every variable the deployment layer reads (your own settings in application/
are yours to document)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Where the deployment's settings are read: Python env look-ups and HAProxy's "${VAR}" / .if defined(VAR).
SOURCES = [
    ROOT / "gunicorn.conf.py",
    ROOT / "haproxy" / "haproxy.cfg",
    ROOT / "scripts" / "native_stack.py",
    *sorted((ROOT / "deployment").rglob("*.py")),
]
PATTERNS = [
    r'os\.getenv\("([A-Z][A-Z0-9_]+)"',
    r'os\.environ\.get\("([A-Z][A-Z0-9_]+)"',
    r'env_(?:str|bool|number|list|secret)\(env, "([A-Z][A-Z0-9_]+)"',
    r"\$\{([A-Z][A-Z0-9_]+)",
    r"defined\(([A-Z][A-Z0-9_]+)\)",
    r'base_env\.get\("([A-Z][A-Z0-9_]+)"',
]


def read_by(*paths):
    """The variables these files read (PATTERNS)."""
    found = set()
    for path in paths:
        text = path.read_text()
        for pattern in PATTERNS:
            found.update(re.findall(pattern, text))
    return found


def variables_read():
    return read_by(*SOURCES)


def documented(text):
    table_rows = [line for line in text.splitlines() if line.startswith("| `")]
    names = set()
    for row in table_rows:
        first_cell = row.split("|")[1]
        names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
        if "APP1_ADDR" in first_cell:
            names.update(f"APP{i}_ADDR" for i in range(1, 9))
    return names


def test_every_variable_read_is_in_the_configuration_table():
    found = variables_read()
    assert len(found) > 30, f"the patterns find too few variables: {sorted(found)}"
    missing = found - documented((ROOT / "docs" / "configuration.md").read_text())
    assert not missing, f"add to the configuration table in docs/configuration.md: {sorted(missing)}"
