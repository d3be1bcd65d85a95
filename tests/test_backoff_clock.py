"""Backoff grows, caps and jitters as documented; the simulated clock scales time."""

from __future__ import annotations

import pytest

from drivers.backoff import Backoff
from sim_devices.clock import SimClock


def test_backoff_doubles_until_capped_without_jitter() -> None:
    """With jitter 0 the delays are initial * 2**n, never above the cap."""
    b = Backoff(initial_s=0.1, maximum_s=1.0, jitter=0)
    assert [round(b.next_delay(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_backoff_jitter_stays_within_the_band_and_reset_restarts() -> None:
    """Full jitter with rng=1 gives 0 delay; reset starts again from the initial delay."""
    b = Backoff(initial_s=0.5, maximum_s=4.0, jitter=1.0, rng=lambda: 1.0)
    assert b.next_delay() == 0.0
    b = Backoff(initial_s=0.5, maximum_s=4.0, jitter=0.5, rng=lambda: 0.5)
    assert b.next_delay() == pytest.approx(0.375)
    b.next_delay()
    b.reset()
    assert b.next_delay() == pytest.approx(0.375)


@pytest.mark.parametrize(("kwargs"), [{"initial_s": 0}, {"factor": 0.5}, {"jitter": 2}])
def test_backoff_rejects_nonsense_parameters(kwargs: dict[str, float]) -> None:
    """Invalid parameters are refused at construction."""
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_sim_clock_scales_the_source() -> None:
    """At speed 60 one source second is one simulated minute."""
    t = [100.0]
    clock = SimClock(speed=60, source=lambda: t[0])
    t[0] = 101.5
    assert clock.now() == pytest.approx(90.0)


def test_sim_clock_rejects_zero_speed() -> None:
    """Speed must be positive."""
    with pytest.raises(ValueError, match="speed"):
        SimClock(speed=0)
