"""The fault-simulation campaign run by CI: 2,000 seeded random schedules.

``SIM_SEED=<n>`` starts the campaign at seed n (default 0); a failing seed is replayed, with
its shrunk schedule, by ``make fuzz SEED=<n>``. ``make fuzz`` runs longer campaigns.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.harness import DEFAULT_LENGTH, campaign
from tests.sim.invariants import Violation

SCHEDULES = 2000


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=Violation,
    reason="today's core still breaks I1 (seed 28: a dose at the hard max is rounded up past it,"
    " protocol/), I4 (seeds 618, 650, 763, 1145, 1272, 1507, 1597, 1829: a restart after the"
    " pump went offline loses its last known rate, so a change made meanwhile is never"
    " journaled) and I3 (seed 1332: a final answer journaled just before a crash is never"
    " published); seeds beyond 2,000 also find I4 seed 6484 (a device change seen in an"
    " uncertain write's read-back is dropped) and I2 seed 16292 (a stop interrupted before its"
    " write is reconciled applied because the pump stopped by itself): one xfail test per cause"
    " in test_regressions.py",
)
def test_random_fault_schedules_keep_every_safety_invariant() -> None:
    """2,000 schedules of commands, restarts, crashes, device, broker and journal faults: no
    out-of-library write (I1), no false applied (I2), every command ends and is written once
    (I3), every device change journaled and judged (I4), no exit (I5), the chain verifies (I6)."""
    first = int(os.environ.get("SIM_SEED", "0"))
    result = campaign(range(first, first + SCHEDULES), DEFAULT_LENGTH, workers=2, minimise=1)
    if result.failing:
        code = result.failing[0][1].split(":", 1)[0]
        raise Violation(code, result.describe())
