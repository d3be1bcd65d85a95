"""``infusiond demo``: the fixed demo bedside of docs/integration-guide.md, in one process.

Started together, stopped together (Ctrl-C):

- an MQTT broker on loopback unless ``--broker mqtt://host:port`` is given: mosquitto (MQTT v5)
  as a child process when installed, else the embedded amqtt (3.1.1) (``daemon.demo.broker``);
- ``pump-1``: Modbus TCP simulator, norepinephrine 4 ug/mL in D5W (central), profile adult-icu,
  70 kg, infusing 0.05 ug/kg/min = 52.5 mL/h;
- ``pump-2``: New Era simulator over a TCP socket, vasopressin 0.2 [USP'U]/mL, 0.03 [USP'U]/min
  = 9.0 mL/h;
- ``pump-phd`` (``--phd``): a Harvard Apparatus PHD ULTRA, address 1 on its own pump-chain
  simulator over a TCP socket, 60 mL syringe (26.59 mm), norepinephrine 4 ug/mL on ``bed-phd``,
  infusing 52.5 mL/h;
- ``pump-3``... (``--pumps N``): further norepinephrine pumps on the same Modbus simulator (unit
  ids 3..N), each on its own bed (``bed-3``...) so they are not duplicates of pump-1;
- ``bed-1``: a simulated monitor sending HL7 ORU^R01 over MLLP to the daemon, from a patient
  model that responds to pump-1 and pump-2 as they really deliver;
- the daemon itself, with remote control enabled for these simulated pumps (any clinician id)
  and Home Assistant MQTT discovery on (prefix ``homeassistant``);
- ``--scenario FILE``: timed faults and front-panel events on these pumps and the monitor, and
  at any time faults sent on ``infusiond/<gateway>/sim/<pump>/fault`` (daemon/demo/devices.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from daemon.base.config import Config
from daemon.base.logging_setup import configure_logging
from daemon.base.paths import default_data_dir, lock_data_dir
from daemon.base.payload import JsonObject
from daemon.core.gateway import Gateway
from daemon.demo.broker import demo_broker
from daemon.demo.devices import (
    PHD_ADDRESS,
    PHD_DIAMETER_MM,
    DemoDevices,
    demo_scenario,
    patient_of,
    sim_control,
)
from daemon.ui.web_server import WebServer
from sim_devices.clock import SimClock
from sim_devices.ehr import EhrSimulator
from sim_devices.fault_topic import FaultControl, fault_topic
from sim_devices.monitor import Monitor
from sim_devices.patient_model import Doses
from sim_devices.scenario import Scenario, ScenarioError

WEIGHT_KG = 70
NE_UG_ML = 4
VP_U_ML = Decimal("0.2")
HOST = "127.0.0.1"
ANY_CLINICIAN = "*"


@dataclass(frozen=True, slots=True)
class DemoEndpoints:
    """What the demo is listening on (printed, and used by tests)."""

    broker_url: str
    broker_ws_url: str | None
    gateway_id: str
    data_dir: Path
    modbus_url: str
    newera_url: str
    vitals_url: str
    dashboard_url: str | None = None
    phd_url: str | None = None
    hl7_out_url: str | None = None
    piv_url: str | None = None


def demo_config(
    *,
    gateway_id: str,
    data_dir: Path,
    broker_url: str,
    protocol: str,
    modbus_url: str,
    newera_url: str,
    vitals_url: str,
    pumps: int,
    phd_url: str | None = None,
    library: Path | None = None,
    hl7_out_url: str | None = None,
    piv_url: str | None = None,
) -> Config:
    """The daemon configuration of the demo bedside, written as a configuration file would give
    it (TOML tables as JSON objects) and validated by :class:`Config` exactly like one."""
    norepinephrine: JsonObject = {
        "drug": "norepinephrine",
        "concentration": {"value": NE_UG_ML, "unit": "ug/mL"},
        "diluent": "D5W",
        "route": "central",
        "library_profile": "adult-icu",
        "weight_kg": WEIGHT_KG,
    }
    pump_list: list[JsonObject] = [
        {
            "id": "pump-1",
            "driver": "modbus",
            "url": modbus_url,
            "unit_id": 1,
            "bed": "bed-1",
            **norepinephrine,
        },
        {
            "id": "pump-2",
            "driver": "newera",
            "url": newera_url,
            "address": 0,
            "bed": "bed-1",
            "drug": "vasopressin",
            "concentration": {"value": float(VP_U_ML), "unit": "[USP'U]/mL"},
            "diluent": "D5W",
            "route": "central",
            "library_profile": "adult-icu",
            "weight_kg": WEIGHT_KG,
        },
    ]
    pump_list.extend(
        {
            "id": f"pump-{k}",
            "driver": "modbus",
            "url": modbus_url,
            "unit_id": k,
            "bed": f"bed-{k}",
            **norepinephrine,
        }
        for k in range(3, pumps + 1)
    )
    if phd_url is not None:
        pump_list.append(
            {
                "id": "pump-phd",
                "driver": "phd",
                "url": phd_url,
                "address": PHD_ADDRESS,
                "syringe_diameter_mm": float(PHD_DIAMETER_MM),
                "bed": "bed-phd",
                **norepinephrine,
            }
        )
    return Config(
        gateway_id=gateway_id,
        data_dir=data_dir,
        broker={"url": broker_url, "protocol": protocol},
        control={"enabled": True, "allowlist": [ANY_CLINICIAN]},
        library=None if library is None else {"path": library},
        vitals=[{"listen": vitals_url, "bed": "bed-1"}],
        pumps=pump_list,
        hl7_out={"url": hl7_out_url, "dec_period_s": 60.0} if hl7_out_url else None,
        piv={"listen": piv_url} if piv_url else None,
        discovery={"enabled": True},  # Home Assistant finds the demo bedside by itself
    )


@contextlib.asynccontextmanager
async def running_demo(
    *,
    gateway_id: str = "demo",
    data_dir: Path | None = None,
    broker: str = "embedded",
    pumps: int = 2,
    speed: float = 1.0,
    broker_ws: str | None = None,
    web_port: int = 0,
    phd: bool = False,
    library: Path | None = None,
    hl7_out: str | None = None,
    ehr_sim: bool = False,
    piv_listen: str | None = None,
    scenario: Scenario | None = None,
) -> AsyncIterator[tuple[DemoEndpoints, Gateway]]:
    """Run the whole demo bedside in this event loop; yields once the daemon is ready.

    ``hl7_out`` (``mllp://HOST:PORT``) sends DEC/IPEC/ACM to that EHR; ``ehr_sim`` runs the
    simulated EHR here (printing one line per message) and sends to it; ``piv_listen``
    (``mllp://HOST:PORT``, port 0: any) takes PIV orders, which only ever become pending;
    ``scenario`` (checked by :func:`daemon.demo.devices.demo_scenario`) is played on the
    simulated devices, and faults sent on the demo broker's ``.../sim/<pump>/fault`` topics are
    applied at once."""
    if pumps < 2:
        raise ValueError("--pumps must be at least 2 (pump-1 and pump-2 are the fixed bedside)")
    data = data_dir if data_dir is not None else default_data_dir()
    clock = SimClock(speed=speed)
    devices = DemoDevices.build(pumps, clock)
    modbus, newera, phd_chain = devices.modbus, devices.newera, devices.phd_chain

    def doses() -> Doses:
        return Doses.from_pump_rates(
            weight_kg=WEIGHT_KG,
            norepinephrine_ml_h=float(modbus.pump(1).delivered_rate_ml_h),
            norepinephrine_ug_ml=NE_UG_ML,
            vasopressin_ml_h=float(newera.pumps[0].delivering_ml_h),
            vasopressin_u_ml=float(VP_U_ML),
        )

    monitor = Monitor(patient_of(scenario).model(), dose_source=doses, bed="bed-1", clock=clock)
    bank = devices.bank(phd=phd, monitor=monitor)
    async with contextlib.AsyncExitStack() as stack:
        if broker == "embedded":
            mqtt = await stack.enter_async_context(demo_broker(HOST, log_dir=data / "logs"))
            broker_url, ws_url, protocol = mqtt.url, mqtt.ws_url, mqtt.protocol
        else:
            broker_url, ws_url, protocol = broker, broker_ws, "5"
        if ehr_sim and hl7_out is None:
            ehr = EhrSimulator(host=HOST, on_message=lambda m: print(m.line(), flush=True))  # noqa: T201
            await ehr.start()
            stack.push_async_callback(ehr.stop)
            hl7_out = f"mllp://{HOST}:{ehr.port}"
        faults = FaultControl.for_broker(bank, broker_url, gateway_id, mqtt_v5=protocol == "5")
        await stack.enter_async_context(sim_control(bank, faults, scenario, clock))
        served = await stack.enter_async_context(modbus.serving(f"tcp://{HOST}:0"))
        await stack.enter_async_context(newera.serving(f"tcp://{HOST}:0"))
        if phd:
            await stack.enter_async_context(phd_chain.serving(f"tcp://{HOST}:0"))
        endpoints = DemoEndpoints(
            broker_url=broker_url,
            broker_ws_url=ws_url,
            gateway_id=gateway_id,
            data_dir=data,
            modbus_url=served.url,
            newera_url=f"socket://{HOST}:{newera.port}",
            vitals_url=f"tcp://{HOST}:0",  # the listener binds; its port is read back below
            dashboard_url=None,  # set below, once the server is bound
            phd_url=phd_chain.url if phd else None,
            hl7_out_url=hl7_out,
            piv_url=piv_listen,
        )
        gateway = Gateway(
            demo_config(
                gateway_id=gateway_id,
                data_dir=data,
                broker_url=broker_url,
                protocol=protocol,
                modbus_url=endpoints.modbus_url,
                newera_url=endpoints.newera_url,
                vitals_url=endpoints.vitals_url,
                pumps=pumps,
                phd_url=endpoints.phd_url,
                library=library,
                hl7_out_url=endpoints.hl7_out_url,
                piv_url=endpoints.piv_url,
            )
        )
        if ws_url is not None:
            web = await stack.enter_async_context(
                WebServer(
                    HOST,
                    web_port,
                    broker_ws_url=ws_url,
                    gateway=gateway_id,
                    history=gateway.history(),
                    metrics_registry=gateway.metrics.registry,
                )
            )
            endpoints = dataclasses.replace(endpoints, dashboard_url=web.url)
        async with asyncio.TaskGroup() as tg:
            gw_task = tg.create_task(gateway.run(), name="gateway")
            ready = tg.create_task(gateway.ready.wait(), name="gateway-ready")
            await asyncio.wait({gw_task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if gw_task.done():
                ready.cancel()
                gw_task.result()  # raises the gateway's error
                return
            # READY means every vitals listener is bound: take the port the OS gave it
            endpoints = dataclasses.replace(
                endpoints,
                vitals_url=gateway.vitals.listeners[0].url,
                piv_url=gateway.piv.url if gateway.piv is not None else None,
            )
            monitor_task = tg.create_task(monitor.run(endpoints.vitals_url), name="monitor")
            try:
                yield endpoints, gateway
            finally:
                monitor_task.cancel()
                gateway.stop()


def _self_command() -> str:
    """How this program was invoked (``.venv/bin/infusiond`` from ``make demo``)."""
    argv0 = sys.argv[0]
    return argv0 if Path(argv0).name == "infusiond" else "infusiond"


def banner(ep: DemoEndpoints, pumps: int, out: TextIO) -> None:
    """What to subscribe to and a ready-to-paste titration, printed at start."""
    host, _, port = ep.broker_url.removeprefix("mqtt://").rpartition(":")
    root = f"infusiond/{ep.gateway_id}"
    sim_topic = fault_topic(ep.gateway_id, "pump-1")
    occlusion, clear = '{"fault":"occlusion"}', '{"action":"clear"}'
    command = (
        '{"id":"titrate-\'$(date +%s%N)\'","issued_at":"\'$(date -u +%Y-%m-%dT%H:%M:%S.000Z)\'",'
        '"ttl_s":30,"by":{"clinician":"demo-nurse"},"action":"set_dose",'
        '"dose":{"value":0.06,"unit":"ug/kg/min"}}'
    )
    lines = [
        "infusiond demo - simulated bedside (NOT a medical device; not for clinical use)",
        "",
        f"  broker      {ep.broker_url}"
        + (f"   (WebSocket {ep.broker_ws_url})" if ep.broker_ws_url else ""),
        f"  gateway     {ep.gateway_id}   journal in {ep.data_dir}",
        (
            f"  pump-1      Modbus TCP {ep.modbus_url}  norepinephrine 4 ug/mL, 70 kg, "
            "0.05 ug/kg/min = 52.5 mL/h"
        ),
        (
            f"  pump-2      New Era {ep.newera_url}  vasopressin 0.2 [USP'U]/mL, "
            "0.03 [USP'U]/min = 9.0 mL/h"
        ),
        *(
            f"  pump-{k}      Modbus TCP unit {k}  norepinephrine (bed-{k})"
            for k in range(3, pumps + 1)
        ),
        *(
            [
                (
                    f"  pump-phd    PHD ULTRA {ep.phd_url} address {PHD_ADDRESS}  "
                    "norepinephrine 4 ug/mL (bed-phd), 52.5 mL/h"
                )
            ]
            if ep.phd_url
            else []
        ),
        f"  bed-1       HL7 ORU^R01 over MLLP -> {ep.vitals_url}",
        *(
            [f"  EHR         IHE PCD DEC/IPEC/ACM over MLLP -> {ep.hl7_out_url}"]
            if ep.hl7_out_url
            else []
        ),
        *(
            [f"  PIV orders  RGV^O15 over MLLP <- {ep.piv_url}  (pending until confirmed)"]
            if ep.piv_url
            else []
        ),
        "",
        *(
            [f"Dashboard: {ep.dashboard_url}  (open it in a browser on this machine)", ""]
            if ep.dashboard_url
            else []
        ),
        "Home Assistant: point its MQTT integration at this broker; the pumps and bed-1",
        "  appear by MQTT discovery (prefix homeassistant).",
        "",
        "Watch everything:",
        f"  mosquitto_sub -h {host} -p {port} -t '{root}/#' -v",
        f"  {_self_command()} watch --broker {ep.broker_url} --gateway {ep.gateway_id}"
        + (f" --http {ep.dashboard_url}" if ep.dashboard_url else ""),
        "",
        "Titrate pump-1 to 0.06 ug/kg/min (= 63.0 mL/h; answered accepted, then applied):",
        f"  mosquitto_pub -h {host} -p {port} -q 1 -t '{root}/pump/pump-1/command' -m '{command}'",
        "and read the answers on:",
        f"  mosquitto_sub -h {host} -p {port} -t '{root}/pump/+/command/result' -v",
        "",
        "Inject an occlusion into pump-1 (the alarm shows in watch and on MQTT within seconds):",
        f"  mosquitto_pub -h {host} -p {port} -q 1 -t '{sim_topic}' -m '{occlusion}'",
        f"and clear its cause with -m '{clear}' (answers on {sim_topic}/result)",
        "",
        "Ctrl-C stops everything.",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()


async def _main(args: argparse.Namespace, scenario: Scenario | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_demo(
        gateway_id=args.gateway_id,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        broker=args.broker,
        pumps=args.pumps,
        speed=args.speed,
        broker_ws=args.broker_ws,
        web_port=args.web_port,
        phd=bool(getattr(args, "phd", False)),
        library=Path(args.library) if getattr(args, "library", None) else None,
        hl7_out=getattr(args, "hl7_out", None),
        ehr_sim=bool(getattr(args, "ehr_sim", False)),
        piv_listen=getattr(args, "piv_listen", None),
        scenario=scenario,
    ) as (endpoints, _gateway):
        banner(endpoints, args.pumps, sys.stdout)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond demo``."""
    if args.pumps < 2:
        print("infusiond: error: --pumps must be at least 2", file=sys.stderr)  # noqa: T201
        return 2
    if not args.speed > 0:
        print("infusiond: error: --speed must be > 0", file=sys.stderr)  # noqa: T201
        return 2
    if args.broker != "embedded" and not args.broker.startswith("mqtt://"):
        print(  # noqa: T201
            "infusiond: error: --broker must be 'embedded' or mqtt://HOST:PORT", file=sys.stderr
        )
        return 2
    for flag in ("hl7_out", "piv_listen"):
        url = getattr(args, flag, None)
        if url is not None and not url.startswith(("mllp://", "tcp://")):
            name = "--" + flag.replace("_", "-")
            print(f"infusiond: error: {name} must be mllp://HOST:PORT", file=sys.stderr)  # noqa: T201
            return 2
    scenario: Scenario | None = None
    if getattr(args, "scenario", None):
        try:
            scenario = demo_scenario(
                Path(args.scenario), pumps=args.pumps, phd=bool(getattr(args, "phd", False))
            )
        except ScenarioError as exc:
            print(f"infusiond: error: --scenario: {exc}", file=sys.stderr)  # noqa: T201
            return 2
    configure_logging("warning", stream=sys.stderr)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    with lock_data_dir(data_dir):  # one daemon per journal: refuse before starting anything
        asyncio.run(_main(args, scenario))
    return 0
