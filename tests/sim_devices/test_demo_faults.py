"""Run-time faults in the demo: a fault published on the demo broker reaches the simulated pump,
and the gateway reports the alarm on MQTT; ``demo --scenario`` plays a scenario file."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiomqtt
import pytest

from daemon.cli import main
from daemon.demo import running_demo
from daemon.demo_devices import demo_scenario
from sim_devices.fault_topic import fault_topic
from sim_devices.scenario import ScenarioError
from tests.reliability.harness import Message, probe
from tests.support.procs import Mosquitto

ROOT = "infusiond/demo"


def occlusion_raised(m: Message) -> bool:
    return (
        m.topic == f"{ROOT}/pump/pump-1/event"
        and m.data["type"] == "alarm_raised"
        and m.data["alarm"]["code"] == "occlusion"
    )


def occlusion_in_state(m: Message) -> bool:
    return m.topic == f"{ROOT}/pump/pump-1/state" and "occlusion" in [
        a["code"] for a in m.data["alarms"]
    ]


def answer(ident: str) -> object:
    return lambda m: m.topic.endswith("/fault/result") and m.json["id"] == ident


def printed_answer(out: str) -> dict[str, str]:
    """The JSON answer line among the (in-process) demo's log lines."""
    answer: dict[str, str] = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])
    return answer


async def publish(url: str, topic: str, payload: str) -> None:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    async with aiomqtt.Client(host, int(port), protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic, payload, qos=1)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_occlusion_sent_on_the_fault_topic_is_raised_by_the_gateway_on_mqtt(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """``{"fault": "occlusion"}`` on .../sim/pump-1/fault is answered injected; the gateway then
    publishes alarm_raised and pump-1's state carries the occlusion. A bad fault, an unknown
    pump and a non-JSON payload are answered rejected, naming the problem."""
    async with (
        running_demo(data_dir=tmp_path / "d", broker=mosquitto.url),
        probe(mosquitto.url, f"{ROOT}/#") as seen,
    ):
        topic = fault_topic("demo", "pump-1")
        await publish(mosquitto.url, topic, '{"id": "f1", "fault": "occlusion"}')
        result = await seen.wait_for(answer("f1"))  # type: ignore[arg-type]
        assert (result.topic, result.json["status"]) == (f"{topic}/result", "injected")
        assert not result.retain
        await seen.wait_for(occlusion_raised)
        await seen.wait_for(occlusion_in_state)

        await publish(mosquitto.url, topic, '{"id": "f2", "fault": "gremlins"}')
        bad = await seen.wait_for(answer("f2"))  # type: ignore[arg-type]
        assert bad.json["status"] == "rejected"
        assert "unknown Modbus fault 'gremlins'" in bad.json["error"]

        await publish(mosquitto.url, fault_topic("demo", "pump-9"), '{"id": "f3", "fault": "x"}')
        bad = await seen.wait_for(answer("f3"))  # type: ignore[arg-type]
        assert bad.json["error"].startswith("pump: no simulated pump 'pump-9'")

        await publish(mosquitto.url, topic, "occlusion please")
        bad = await seen.wait_for(lambda m: m.topic == f"{topic}/result" and m.json["id"] is None)
        assert bad.json["error"].startswith("payload: not JSON")


SCENARIO = """
name = "occlusion-soon"
description = "pump-1 occludes 2 simulated seconds after the start"

[[events]]
at_s = 2
pump = "pump-1"
action = "fault"
fault = "occlusion"
"""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_demo_scenario_plays_its_faults_on_the_demo_pumps(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """``demo --scenario FILE``: the file's occlusion on pump-1 reaches MQTT as alarm_raised."""
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    scenario = demo_scenario(path, pumps=2, phd=False)
    async with (
        probe(mosquitto.url, f"{ROOT}/#") as seen,
        running_demo(data_dir=tmp_path / "d", broker=mosquitto.url, scenario=scenario),
    ):
        await seen.wait_for(occlusion_raised)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("pump = 'pump-1'\naction = 'stall'", "'stall' is not a Modbus pump event"),
        ("pump = 'pump-7'\naction = 'reset'", "no simulated pump 'pump-7'; pumps: pump-1, pump-2"),
        ("pump = 2\naction = 'reset'", "name the pump by its id, one of pump-1, pump-2"),
        ("pump = 'pump-2'\naction = 'fault'\nfault = 'occlusion'", "unknown fault 'occlusion'"),
    ],
)
def test_demo_refuses_a_scenario_it_cannot_play_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], event: str, message: str
) -> None:
    """``infusiond demo --scenario`` exits 2 naming the file, the event and the problem, before
    a broker, a simulator or the daemon is started."""
    path = tmp_path / "bad.toml"
    path.write_text(f"name = 'bad'\n[[events]]\nat_s = 5\n{event}\n")
    code = main(["demo", "--scenario", str(path), "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--scenario: {path}: events[0]" in err
    assert message in err
    assert not (tmp_path / "d").exists()


def test_demo_refuses_pumps_and_doses_in_its_scenario(tmp_path: Path) -> None:
    """The demo's pumps are fixed and its patient follows them: [[pumps]] and [[doses]] are
    for a single simulator and are refused, each with the reason."""
    path = tmp_path / "p.toml"
    path.write_text("name = 'p'\n[[pumps]]\npump = 1\n")
    with pytest.raises(ScenarioError, match="the demo's pumps are fixed"):
        demo_scenario(path, pumps=2, phd=False)
    path.write_text("name = 'p'\n[[doses]]\nat_s = 0\nnorepinephrine = 0.1\n")
    with pytest.raises(ScenarioError, match="follows what its pumps deliver"):
        demo_scenario(path, pumps=2, phd=False)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_sim_fault_cli_injects_and_reports_rejections(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``infusiond sim fault pump-1 occlusion`` prints the injected answer and exits 0 (and the
    gateway raises the alarm); an unknown fault exits 1 with the demo's error."""
    async with (
        running_demo(data_dir=tmp_path / "d", broker=mosquitto.url),
        probe(mosquitto.url, f"{ROOT}/#") as seen,
    ):
        argv = ["sim", "fault", "--broker", mosquitto.url, "pump-1", "occlusion"]
        assert await asyncio.to_thread(main, argv) == 0
        assert printed_answer(capsys.readouterr().out)["status"] == "injected"
        await seen.wait_for(occlusion_raised)
        argv = ["sim", "fault", "--broker", mosquitto.url, "pump-2", '{"fault": "gremlins"}']
        assert await asyncio.to_thread(main, argv) == 1
        answer = printed_answer(capsys.readouterr().out)
        assert answer["status"] == "rejected"
        assert "unknown fault 'gremlins' of the New Era simulator" in answer["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "tcp://x:1", "pump-1", "occlusion"], "--broker must be mqtt://HOST:PORT"),
        (["pump-1", "{not json"], "EVENT is not valid JSON"),
    ],
)
def test_sim_fault_cli_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad broker URL or event is refused before anything is sent."""
    assert main(["sim", "fault", *args]) == 2
    assert message in capsys.readouterr().err


def test_sim_fault_cli_without_a_demo_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening on the broker port: exit 2 and say that no demo answered."""
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        argv = ["sim", "fault", "--broker", f"mqtt://127.0.0.1:{port}", "pump-1", "occlusion"]
        assert main(argv) == 2
    assert "no answer (is infusiond demo running on that broker?)" in capsys.readouterr().err
