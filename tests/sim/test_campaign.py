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
def test_random_fault_schedules_keep_every_safety_invariant() -> None:
    """2,000 schedules of commands, restarts, crashes, device, broker and journal faults: no
    out-of-library write (I1), no false applied (I2), every command ends and is written once
    (I3), every device change journaled and judged (I4), no exit (I5), the chain verifies (I6)."""
    first = int(os.environ.get("SIM_SEED", "0"))
    result = campaign(range(first, first + SCHEDULES), DEFAULT_LENGTH, workers=2, minimise=1)
    if result.failing:
        code = result.failing[0][1].split(":", 1)[0]
        raise Violation(code, result.describe())
