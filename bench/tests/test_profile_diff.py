"""bench/profile_diff.py reads py-spy's collapsed stacks as py-spy writes them, per 1,000 messages."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import profile_diff  # noqa: E402


def write_profile(folder, system, lines):
    (folder / "raw" / f"py-spy-{system}-echo_ws.txt").write_text("\n".join(lines) + "\n")


def test_samples_per_1000_messages_and_frames_without_python(tmp_path):
    (tmp_path / "raw").mkdir()
    doc = {
        "machine": {
            "date": "2026-12-06T00:00:00",
            "cpu_model": "cpu",
            "template_git": "aaa (work tree)",
            "template_alt_git": "bbb",
        },
        "sizes": {"echo_duration": 11},  # profiles last 10 s
        "runs": [{"echo_ws": {"template": {"echo_per_s": 100}, "template_alt": {"echo_per_s": 200}}}],
    }
    (tmp_path / "latest.json").write_text(json.dumps(doc))
    # a new greenlet's samples have no Python frame: py-spy writes an empty stack
    write_profile(
        tmp_path,
        "template",
        [
            "run (/x/site-packages/gevent/hub.py:10);handle (/work/main/deployment/a.py:3) 100",
            " 50",
        ],
    )
    write_profile(tmp_path, "template_alt", ["run (/x/site-packages/gevent/hub.py:12) 100"])
    profile_diff.main([str(tmp_path)])
    text = (tmp_path / "profile-diff.md").read_text()
    # template: 150 samples x 5 ms / 1,000 messages (100/s x 10 s) = 750 ms per 1,000; alt: 500 / 2 = 250
    assert "template at aaa 750.0, template at bbb 250.0" in text
    assert "| `(no Python frame)` | 250.0 | 0.0 |" in text
    assert "| `handle (deployment/a.py)` | 500.0 | 0.0 |" in text
    assert "| `run (gevent/hub.py)` | 500.0 | 250.0 |" in text
