"""The simulated pump behaves like the device (model only, simulated time as an argument)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from drivers.newera.frames import Alarm, Command, Reply, Status
from sim_devices.newera_pump import Fault, NewEraPumpModel, NewEraPumpSetup


def pump(**kwargs: object) -> NewEraPumpModel:
    return NewEraPumpModel(NewEraPumpSetup(**kwargs))  # type: ignore[arg-type]


def send(p: NewEraPumpModel, text: str, at: float = 0.0, *, safe: bool = False) -> Reply:
    return p.handle(Command.parse(text), at, safe=safe)


def test_power_on_reset_alarm_is_reported_once_and_the_command_not_executed() -> None:
    """A fresh pump answers its first command with A?R (not executing it), then normally."""
    p = pump()
    first = send(p, "RAT 5 MH")
    assert first.alarm is Alarm.RESET
    assert p.rate_ml_h == 0
    assert send(p, "RAT 5 MH") == Reply(0, Status.STOPPED, "")
    assert p.rate_ml_h == 5


def test_dispensed_volume_integrates_rate_over_simulated_time() -> None:
    """36 mL/h for 100 s dispenses 1.000 mL; DIS reports it with the syringe's unit."""
    p = pump(rate_ml_h=Decimal(36), running=True, reset_alarm=False)
    assert send(p, "DIS", at=100.0).data == "I1.000W0.000ML"
    assert send(p, "CLD INF", at=100.0).data == ""
    assert send(p, "DIS", at=100.0).data == "I0.000W0.000ML"


def test_small_syringes_count_in_microlitres() -> None:
    """A 4.699 mm syringe reports volumes in uL."""
    p = pump(diameter_mm=Decimal("4.699"), rate_ml_h=Decimal("0.36"), running=True)
    p.alarm = None
    assert send(p, "DIS", at=100.0).data == "I10.00W0.000UL"


def test_stp_pauses_then_stops_and_run_resumes() -> None:
    """STP while pumping gives P, STP again gives S; RUN from P resumes pumping."""
    p = pump(rate_ml_h=Decimal(9), running=True, reset_alarm=False)
    assert send(p, "STP").status is Status.PAUSED
    assert send(p, "RUN").status is Status.INFUSING
    assert send(p, "STP").status is Status.PAUSED
    assert send(p, "STP").status is Status.STOPPED


def test_volume_target_stops_the_pump() -> None:
    """With VOL 1 (mL), the pump stops after dispensing 1 mL."""
    p = pump(rate_ml_h=Decimal(36), reset_alarm=False)
    send(p, "VOL 1")
    send(p, "RUN")
    p.advance(1000.0)
    assert p.status is Status.STOPPED
    assert p.infused_ml == 1


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("FOO", "?"),
        ("RAT abc", "?"),
        ("CLD", "?"),
        ("RAT 9999 MM", "?OOR"),
        ("DIA 99", "?OOR"),
        ("SAF 999", "?OOR"),
    ],
)
def test_bad_commands_get_device_error_codes(text: str, error: str) -> None:
    """Unknown commands or shapes answer '?', values outside the device range '?OOR'."""
    p = pump(reset_alarm=False)
    assert send(p, text).data == error


def test_not_applicable_commands() -> None:
    """RUN without a rate and DIA while pumping answer '?NA'."""
    p = pump(reset_alarm=False)
    assert send(p, "RUN").data == "?NA"
    send(p, "RAT 5 MH")
    send(p, "RUN")
    assert send(p, "DIA 10").data == "?NA"


def test_safe_mode_timeout_stops_the_pump_with_a_t() -> None:
    """After SAF 5, five simulated seconds without a valid packet stop the pump with A?T."""
    p = pump(rate_ml_h=Decimal(9), running=True, reset_alarm=False)
    send(p, "SAF 5", at=0.0)
    send(p, "", at=4.0, safe=True)  # keeps the link alive
    p.advance(8.9)
    assert p.status is Status.INFUSING
    p.advance(9.0)
    assert p.status is Status.STOPPED
    assert send(p, "", at=9.5, safe=True).alarm is Alarm.COMM_TIMEOUT


def test_safe_mode_pump_answers_basic_commands_with_com() -> None:
    """A pump in safe mode does not execute basic-mode commands: it answers ?COM."""
    p = pump(rate_ml_h=Decimal(9), reset_alarm=False)
    send(p, "SAF 10")
    assert send(p, "RAT 1 MH").data == "?COM"
    assert p.rate_ml_h == 9
    assert send(p, "SAF0", safe=True).data == ""
    assert p.safe_timeout_s == 0


def test_reject_fault_answers_with_its_code_once() -> None:
    """An injected rejection (e.g. ?IGN) answers one command without executing it."""
    p = pump(reset_alarm=False)
    p.reject_with = "?IGN"
    p.inject(Fault.REJECT, count=1)
    assert send(p, "RAT 5 MH").data == "?IGN"
    assert p.rate_ml_h == 0
    assert send(p, "RAT 5 MH").data == ""
