"""Benchmark ``check``: verdicts per second from protocol/ vs ``json.loads`` of the same request.

Run: ``.venv/bin/python -m bench.check_bench [--seconds S]``. Prints one JSON object:
``{"bench": "check", "verdicts_per_s", "json_loads_per_s", "ratio", "target_per_s", "ok", "rows"}``
where ``ratio`` = json_loads_per_s / verdicts_per_s (how many json.loads fit in one verdict);
the row of ``python -m bench`` gives the inverse (verdict rate as a share of json.loads' rate,
target >= 0.2)
and a verdict is the whole path of ``infusiond check`` minus process start: decode the JSON,
validate the request, evaluate every rule, build the verdict JSON text (``Verdict.json_text``,
as the CLI does; checked once against ``json.dumps`` of ``to_dict`` before timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from daemon.base.library_file import load_library
from protocol.engine import evaluate
from protocol.library import DEFAULT_LIBRARY_PATH
from protocol.request import parse_request_json

TARGET_PER_S = 10_000
TARGET_SHARE = 0.2  # docs/performance.md: verdicts/s >= 0.2x json.loads/s of the same request

# The demo titration (pump-1 to 0.06 ug/kg/min) with a history, vitals and another channel:
# a typical request.
REQUEST = json.dumps(
    {
        "now": "2026-11-26T10:00:00Z",
        "profile": "adult-icu",
        "patient": {"weight_kg": 70, "baseline_sbp": 150, "chronic_hypertension": False},
        "infusion": {
            "drug": "norepinephrine",
            "concentration": {"value": 4, "unit": "ug/mL"},
            "diluent": "D5W",
            "route": "central",
            "line_shares": ["heparin"],
        },
        "current": {"value": 0.05, "unit": "ug/kg/min"},
        "requested": {"dose": {"value": 0.06, "unit": "ug/kg/min"}},
        "history": [
            {"at": "2026-11-26T08:00:00Z", "dose": {"value": 0.08, "unit": "ug/kg/min"}},
            {"at": "2026-11-26T09:30:00Z", "dose": {"value": 0.05, "unit": "ug/kg/min"}},
        ],
        "vitals": {
            "map": {"value": 75, "unit": "mm[Hg]", "at": "2026-11-26T09:58:00Z"},
            "sbp": {"value": 105, "unit": "mm[Hg]", "at": "2026-11-26T09:58:00Z"},
            "hr": {"value": 92, "unit": "/min", "at": "2026-11-26T09:58:00Z"},
        },
        "other_infusions": [{"drug": "vasopressin", "dose": {"value": 0.03, "unit": "U/min"}}],
    }
)


def _rates(
    baseline: Callable[[], object], subject: Callable[[], object], seconds: float
) -> tuple[float, float]:
    """Calls per second of both, measured in alternating chunks over about ``2 * seconds`` so a
    load change on a shared machine hits both alike; the median chunk rate of each."""
    for _ in range(200):  # warm up caches
        baseline()
        subject()
    base_rates: list[float] = []
    subject_rates: list[float] = []
    chunk = seconds / 10
    end = time.perf_counter() + 2 * seconds
    while time.perf_counter() < end or len(base_rates) < 3:
        for fn, rates in ((baseline, base_rates), (subject, subject_rates)):
            n, start = 0, time.perf_counter()
            while True:
                for _ in range(100):
                    fn()
                n += 100
                elapsed = time.perf_counter() - start
                if elapsed >= chunk:
                    rates.append(n / elapsed)
                    break
    return statistics.median(base_rates), statistics.median(subject_rates)


def measure(*, quick: bool = False, seconds: float | None = None) -> dict[str, Any]:
    """Verdicts per second vs ``json.loads`` per second of the same request text."""
    span = seconds if seconds is not None else (0.5 if quick else 2.0)
    library = load_library(DEFAULT_LIBRARY_PATH)

    def verdict() -> str:  # what ``infusiond check`` does between reading stdin and writing
        return evaluate(library, parse_request_json(REQUEST)).json_text(ensure_ascii=False)

    answer = evaluate(library, parse_request_json(REQUEST))
    assert verdict() == json.dumps(answer.to_dict(), ensure_ascii=False)
    assert answer.verdict == "accept"
    baseline, verdicts = _rates(lambda: json.loads(REQUEST), verdict, span)
    share = verdicts / baseline
    return {
        "bench": "check",
        "verdicts_per_s": round(verdicts),
        "json_loads_per_s": round(baseline),
        "ratio": round(baseline / verdicts, 2),
        "target_per_s": TARGET_PER_S,
        "ok": verdicts >= TARGET_PER_S,
        "rows": [
            {
                "figure": "check: verdicts per second",
                "value": round(verdicts),
                "unit": "/s",
                "baseline": round(baseline),
                "ratio": round(share, 4),
                "target": f">= {TARGET_SHARE:g}x of json.loads' rate",
                "met": share >= TARGET_SHARE,
            }
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    print(json.dumps(measure(seconds=args.seconds)))


if __name__ == "__main__":
    main()
