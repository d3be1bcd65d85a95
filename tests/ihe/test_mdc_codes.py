"""The MDC tables hold the published IEEE 11073-10101 codes (code = partition * 65536 + term)."""

from __future__ import annotations

from daemon.ihe import messages
from drivers.hl7.codes import code_tables
from drivers.hl7.sample import Parameter


def test_pulse_rate_is_understood_under_its_published_code_only() -> None:
    """MDC_PULS_RATE is 2::18442 = 149514; 149522 (2::18450) is MDC_BLD_PULS_RATE_INV and is
    not taken for a heart rate."""
    tables = code_tables()
    entry = tables.find_code(["149514", "", "MDC"])
    assert entry is not None
    assert (entry.parameter, entry.name) == (Parameter.HR, "MDC_PULS_RATE")
    assert tables.find_code(["149522", "", "MDC"]) is None


def test_every_numeric_mdc_code_is_in_its_partition() -> None:
    """Devices are partition 1 (object), metrics 2 (SCADA), events 3, units 4: a code outside
    its partition is a typo, whatever its reference id says."""
    t = messages.terms()
    partitions = {1: t.devices, 2: t.pump, 3: {**t.events, "event": t.alarm["event"]}, 4: t.units}
    for partition, table in partitions.items():
        for key, term in table.items():
            if term.system == "MDC" and term.code:
                assert int(term.code) >> 16 == partition, (key, term)
    facets = [t.alarm[k].code for k in ("source", "phase", "state", "inactivation")]
    assert facets == ["68480", "68481", "68482", "68483"]


def test_no_gateway_event_is_sent_under_an_unpublished_mdc_id() -> None:
    """Every MDC event id is one the IPEC supplement defines; the others are local codes."""
    published = {"MDC_EVT_PUMP_DELIV_START", "MDC_EVT_PUMP_DELIV_STOP", "MDC_ATTR_EVT_COND"}
    events = messages.terms().events
    assert {e.ref for e in events.values() if e.system == "MDC"} == published
    local = {k for k, e in events.items() if e.system == messages.LOCAL}
    assert local == {"rate_changed", "program_changed", "override_accepted"}
