"""bench/paired_ab.py's plan and bench/paired_report.py's verdicts, on made-up pairs (no stack is started)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paired_ab  # noqa: E402  (bench/, beside the tests folder)
import paired_report  # noqa: E402

SPEEDUPS = {
    "fast_echo": {"requires": [], "rows": [["echo_ws", "app_cpu_ms_per_1000"]]},
    "fast_send": {"requires": [], "rows": [["broadcast", "app_cpu_ms_per_1000"]]},
    "parked": {"requires": ["fast_send"], "rows": [["memory_curve_5000", "app_kb_per_conn"]]},
}
FACTS = {
    "names": list(SPEEDUPS),
    "speedups": SPEEDUPS,
    "expected_on": {
        "template": ["fast_echo", "fast_send", "parked"],
        paired_ab.AA: ["fast_echo", "fast_send", "parked"],
        "template+SPEEDUPS_SKIP=fast_echo": ["fast_send", "parked"],
        "template+SPEEDUPS_SKIP=fast_send": ["fast_echo"],  # parked REQUIRES fast_send: off with it
    },
    "skipped": {"template+SPEEDUPS_SKIP=fast_echo": ["fast_echo"], "template+SPEEDUPS_SKIP=fast_send": ["fast_send"]},
}


def test_each_variant_runs_the_scenarios_of_its_rows_and_the_aa_every_one():
    variants = [paired_ab.AA, "template+SPEEDUPS_SKIP=fast_echo", "template+SPEEDUPS_SKIP=fast_send"]
    units, off, rows, _everything, left_out = paired_ab.plan(FACTS, variants, ["echo_ws", "memory_curve"])
    assert off["template+SPEEDUPS_SKIP=fast_send"] == ["fast_send", "parked"]  # not alone: REQUIRES
    assert rows["template+SPEEDUPS_SKIP=fast_send"] == [("broadcast", "app_cpu_ms_per_1000")]  # its own rows only
    assert units == [(paired_ab.AA, "echo_ws"), ("template+SPEEDUPS_SKIP=fast_echo", "echo_ws")]
    assert left_out == [(paired_ab.AA, "broadcast"), ("template+SPEEDUPS_SKIP=fast_send", "broadcast")]


def side(value, on=("fast_echo", "fast_send", "parked")):
    return {"result": {"app_cpu_ms_per_1000": value}, "speedups_on": {"app1": list(on), "app2": list(on)}}


def doc(variant_ratios):
    pairs = []
    for variant, ratios in variant_ratios.items():
        on = FACTS["expected_on"].get(variant, FACTS["expected_on"]["template"])
        for k, ratio in enumerate(ratios, 1):
            pairs.append(
                {
                    "pair": k,
                    "variant": variant,
                    "scenario": "echo_ws",
                    "first": "template",
                    "seconds": 60,
                    "template": dict(side(10.0), began="t"),
                    "variant_side": dict(side(10.0 * ratio, on), began="t"),
                }
            )
    rows = [["echo_ws", "app_cpu_ms_per_1000"]]
    return {
        "method": "paired",
        "sizes": {"pairs": 5},
        "speedups": SPEEDUPS,
        "expected_on": FACTS["expected_on"],
        "variants": {
            v: {
                "turns_off": [n for n in FACTS["expected_on"]["template"] if n not in FACTS["expected_on"][v]],
                "for": FACTS["skipped"].get(v, []),
                "rows": rows,
            }
            for v in variant_ratios
        },
        "pairs": pairs,
    }


def test_the_verdict_compares_the_median_with_the_aa_range_and_the_pairs_with_the_aa_pairs():
    aa = [0.95, 1.05, 0.99, 1.02, 0.97]
    # every pair above every A/A pair: the smallest p there is with 5 and 5 (1 split of 252)
    assert paired_report.verdict([1.2, 1.3, 1.25, 1.1, 1.15], aa) == ("clears the A/A spread (p 0.004)", 5)
    # one pair inside the A/A range: the median still clears, and the rank test too
    assert paired_report.verdict([1.2, 1.0, 1.25, 1.1, 1.15], aa)[0] == "clears the A/A spread (p 0.016)"
    # a median beyond the range but pairs that mix with the A/A's: not enough
    assert paired_report.verdict([1.06, 0.9, 1.07, 0.94, 1.08], aa)[0] == "median beyond, not significant (p 0.345)"
    # with 3 and 2 pairs no split order is rare enough (1 in 10)
    assert paired_report.verdict([1.2, 1.3, 1.25], [0.95, 1.05])[0] == "median beyond, not significant (p 0.100)"
    assert paired_report.verdict([1.04, 1.2, 0.9], [0.95, 1.05])[0] == "within the spread"
    assert paired_report.verdict([0.8, 0.85, 0.9], [0.95, 1.05])[0] == "below the spread (costs)"
    assert paired_report.verdict([1.2], [1.0])[0] == "no A/A to judge by"


def test_the_report_judges_a_speedup_on_its_rows_and_flags_a_variant_that_turns_off_more():
    text, speedups, variants = paired_report.markdown(
        doc(
            {
                paired_ab.AA: [0.96, 1.03, 0.99, 1.05, 0.97],
                "template+SPEEDUPS_SKIP=fast_echo": [1.3, 1.2, 1.4, 1.25, 1.35],
            }
        )
    )
    assert speedups["fast_echo"]["keep"] is True
    assert speedups["fast_echo"]["rows"][0]["aa_range"] == [0.96, 1.05]
    assert variants["template+SPEEDUPS_SKIP=fast_echo"]["log_turns_off"] == ["fast_echo"]
    assert "| `fast_echo` | echo_ws app CPU per message | **1.300** |" in text

    text, speedups, variants = paired_report.markdown(
        doc({paired_ab.AA: [0.96, 1.03, 0.99], "template+SPEEDUPS_SKIP=fast_send": [1.0, 1.01, 0.98]})
    )
    assert variants["template+SPEEDUPS_SKIP=fast_send"]["log_turns_off"] == ["fast_send", "parked"]
    assert "**no: 2 speedups off**" in text
    assert speedups["fast_send"]["also_off"] == ["parked"] and not speedups["fast_send"]["alone"]
    assert "not measured alone: `SPEEDUPS_SKIP=fast_send` also turns off parked" in text
