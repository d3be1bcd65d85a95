"""Run-time fault messages are validated strictly and answered; only valid ones reach a device."""

from __future__ import annotations

import ast
import json
import re

import pytest

from daemon.demo_devices import DemoDevices
from drivers.newera.frames import Alarm
from sim_devices.clock import SimClock
from sim_devices.fault_topic import fault_topic, handle
from sim_devices.monitor import Monitor
from sim_devices.patient_model import Doses
from sim_devices.scenario import load_scenario
from sim_devices.sim_bank import SimBank
from tests.docs.docs_text import DOCS


@pytest.fixture
def devices() -> DemoDevices:
    return DemoDevices.build(3, SimClock())


@pytest.fixture
def bank(devices: DemoDevices) -> SimBank:
    monitor = Monitor(load_scenario("demo").model(), dose_source=Doses)
    return devices.bank(phd=True, monitor=monitor)


def send(bank: SimBank, pump: str, payload: object) -> dict[str, object]:
    return handle(bank, pump, json.dumps(payload).encode())


def test_the_topic_names_the_gateway_and_the_pump() -> None:
    """Control topics live under the gateway's root, per pump."""
    assert fault_topic("demo", "pump-1") == "infusiond/demo/sim/pump-1/fault"
    assert fault_topic("icu-3") == "infusiond/icu-3/sim/+/fault"


def test_a_fault_reaches_only_the_pump_of_the_topic(devices: DemoDevices, bank: SimBank) -> None:
    """An occlusion for pump-3 sets pump-3's alarm (Modbus unit 3), not pump-1's; the answer
    echoes the id and says injected."""
    answer = send(bank, "pump-3", {"id": "a-1", "fault": "occlusion"})
    assert answer == {"id": "a-1", "pump": "pump-3", "status": "injected"}
    assert "occlusion" in devices.modbus.pump(3).alarms
    assert "occlusion" not in devices.modbus.pump(1).alarms


def test_front_panel_and_serial_events_reach_the_serial_pumps(
    devices: DemoDevices, bank: SimBank
) -> None:
    """pump-2 (New Era, address 0) stalls; pump-phd (address 1) takes a front-panel rate."""
    assert send(bank, "pump-2", {"action": "stall"})["status"] == "injected"
    assert devices.newera.pumps[0].alarm is Alarm.STALLED
    assert send(bank, "pump-phd", {"action": "rate", "rate_ml_h": 40})["status"] == "injected"
    assert devices.phd_chain.pumps[1].rate_ml_h == 40


def test_a_monitor_fault_goes_to_the_monitor_topic(bank: SimBank) -> None:
    """``monitor`` takes monitor faults (action defaults to monitor there); a pump does not."""
    assert send(bank, "monitor", {"fault": "garbled"})["status"] == "injected"
    wrong = send(bank, "pump-1", {"action": "monitor", "fault": "garbled"})
    assert wrong["status"] == "rejected"
    assert "monitor faults go to .../sim/monitor/fault" in str(wrong["error"])


@pytest.mark.parametrize(
    ("pump", "payload", "error"),
    [
        ("pump-1", {"fault": "gremlins"}, "fault: unknown Modbus fault 'gremlins'"),
        ("pump-1", {"fault": "occlusion", "at_s": 5}, "at_s: not in a run-time fault"),
        ("pump-1", {"fault": "occlusion", "pump": "pump-2"}, "pump: not in a run-time fault"),
        ("pump-1", {"fault": "occlusion", "id": 7}, "id: must be 1-64 characters"),
        ("pump-1", {"fault": "occlusion", "colour": "red"}, "colour: unknown field"),
        ("pump-1", {"action": "explode"}, "action: 'explode' is not one of fault, clear"),
        ("pump-1", {"action": "rate", "rate_ml_h": -1}, "rate_ml_h: Input should be greater"),
        (
            "pump-1",
            {"action": "drift", "set": {"baseline_map": 40}},
            "action: a patient drift is part",
        ),
        ("pump-9", {"fault": "occlusion"}, "pump: no simulated pump 'pump-9'; pumps: pump-1"),
        ("pump-2", {"fault": "slow", "value": "soon"}, "value: slow takes seconds"),
        ("pump-1", ["occlusion"], "payload: must be a JSON object"),
    ],
)
def test_bad_messages_are_rejected_naming_the_field(
    devices: DemoDevices, bank: SimBank, pump: str, payload: object, error: str
) -> None:
    """Every bad message is answered rejected with the field and the problem; nothing is
    applied to any pump."""
    answer = send(bank, pump, payload)
    assert answer["status"] == "rejected"
    assert str(answer["error"]).startswith(error)
    assert all(not devices.modbus.pump(u).alarms for u in devices.modbus.unit_ids)
    assert devices.newera.pumps[0].faults == {}


def test_oversized_and_non_json_payloads_are_rejected(bank: SimBank) -> None:
    """A payload over 4 KiB or not JSON is refused before it is parsed further."""
    big = handle(bank, "pump-1", b"{" + b" " * 5000 + b"}")
    assert str(big["error"]).startswith("payload: larger than 4096 bytes")
    assert str(handle(bank, "pump-1", b"\xff")["error"]).startswith("payload: not JSON")


def test_every_fault_the_biomed_guide_publishes_is_injected(bank: SimBank) -> None:
    """Each ``mosquitto_pub`` to a ``.../sim/<pump>/fault`` topic in the biomed guide, and each
    payload its prose suggests, is answered injected by the demo's handler."""
    guide = (DOCS / "biomed-guide.md").read_text(encoding="utf-8")
    sent = re.findall(r"-t infusiond/demo/sim/([\w-]+)/fault -m '([^']*)'", guide)
    assert sent
    prose = [
        ("pump-1", '{"action": "clear"}'),
        ("pump-2", '{"action": "stall"}'),
        ("pump-2", '{"action": "rate", "rate_ml_h": 40}'),
        ("monitor", '{"fault": "garbled"}'),
    ]
    for pump, payload in [*sent, *prose]:
        assert payload in guide
        answer = handle(bank, pump, payload.encode())
        assert answer["status"] == "injected", answer


def test_only_the_demo_listens_for_sim_faults() -> None:
    """No module of the service (``infusiond run``) imports the fault listener or the bank:
    only ``daemon/demo.py`` and ``daemon/demo_devices.py`` do."""
    root = DOCS.parent
    users = set()
    for path in sorted((root / "daemon").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in (
                "sim_devices.fault_topic",
                "sim_devices.sim_bank",
            ):
                users.add(str(path.relative_to(root)))
    assert users == {"daemon/demo.py", "daemon/demo_devices.py"}
