"""``infusiond sim ehr``: the simulated EHR / alarm manager as a command-line tool.

Listens on ``--listen mllp://HOST:PORT`` (default ``mllp://127.0.0.1:2575``) for IHE PCD DEC,
IPEC and ACM, answers each with ``--answer`` (AA by default; AE/AR to exercise a gateway's
refusal handling), prints one line per message and, with ``--json PATH``, appends each as a
JSON line to PATH. Runs until interrupted.

``--order KEY=VALUE,...`` (repeatable) sends PIV orders (RGV^O15) to ``--piv URL`` instead, prints
each RRG^O16 answer (MSA-1 and reason) and exits 0 only if every order was answered AA. Keys:
``pump``, ``drug``, ``concentration`` (``4 ug/mL``), ``dose`` (``0.06 ug/kg/min``) are required;
``id``, ``vtbi`` (``250 mL``), ``diluent``, ``by``, ``weight`` (kg), ``patient``, ``bed`` optional.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

from drivers.clock import utc_now
from drivers.hl7.ack import AckCode
from drivers.hl7.piv import build_rgv
from sim_devices.ehr import EhrSimulator, Received, send_order

_ORDER_KEYS = {"pump", "drug", "concentration", "dose", "id", "vtbi", "diluent", "by", "weight"}
_ORDER_KEYS |= {"patient", "bed"}


def parse_order(text: str, n: int) -> bytes:
    """``pump=pump-1,drug=norepinephrine,concentration=4 ug/mL,dose=0.06 ug/kg/min`` -> RGV^O15.
    Raises ValueError naming the key."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _ORDER_KEYS:
            raise ValueError(f"--order {text!r}: {key!r} is not one of {sorted(_ORDER_KEYS)}")
        fields[key] = value.strip()
    for key in ("pump", "drug", "concentration", "dose"):
        if not fields.get(key):
            raise ValueError(f"--order {text!r}: {key}= is required")

    def amount(key: str) -> tuple[str, str]:
        value, _, unit = fields[key].partition(" ")
        if not unit:
            raise ValueError(f"--order {key}={fields[key]!r}: expected 'VALUE UNIT'")
        return value, unit.strip()

    now = utc_now()
    order_id = fields.get("id") or f"ORD-{now:%H%M%S}-{n}"
    return build_rgv(
        control_id=f"EHR-{order_id}",
        now=now,
        order_id=order_id,
        pump_id=fields["pump"],
        drug=fields["drug"],
        concentration=amount("concentration"),
        dose=amount("dose"),
        ordered_by=fields.get("by", ""),
        diluent=fields.get("diluent"),
        vtbi=amount("vtbi") if "vtbi" in fields else None,
        weight_kg=fields.get("weight"),
        patient_id=fields.get("patient", ""),
        bed=fields.get("bed", ""),
    )


async def _send_orders(url: str, orders: list[bytes]) -> int:
    host, port = _endpoint(url)
    worst = 0
    for payload in orders:
        code, text, _ = await send_order(host, port, payload)
        print(f"RRG^O16 {code.value} {text}".rstrip(), flush=True)  # noqa: T201
        worst = worst if code is AckCode.AA else 1
    return worst


def _endpoint(url: str) -> tuple[str, int]:
    """``mllp://HOST:PORT`` -> (host, port); ValueError names the URL."""
    scheme, sep, rest = url.partition("://")
    host, colon, port = (rest if sep else url).rpartition(":")
    if (sep and scheme not in {"mllp", "tcp"}) or not colon or not host or not port.isdigit():
        raise ValueError(f"{url!r}: expected mllp://HOST:PORT")
    return host, int(port)


async def _main(args: argparse.Namespace, record: TextIO | None) -> None:
    def on_message(message: Received) -> None:
        print(message.line(), flush=True)  # noqa: T201
        if record is not None:
            record.write(json.dumps(message.to_json()) + "\n")
            record.flush()

    host, port = _endpoint(args.listen)
    sim = EhrSimulator(host=host, port=port, answer=AckCode(args.answer), on_message=on_message)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    print(f"EHR simulator listening on mllp://{host}:{sim.port}", flush=True)  # noqa: T201
    try:
        await stop.wait()
    finally:
        await sim.stop()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``infusiond sim ehr``."""
    try:
        _endpoint(args.listen)
        orders = [parse_order(text, n) for n, text in enumerate(args.order or [], start=1)]
        if orders:
            _endpoint(args.piv or "")
    except ValueError as exc:
        print(f"infusiond: error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    if orders:
        return asyncio.run(_send_orders(args.piv, orders))
    with contextlib.ExitStack() as stack:
        record = (
            stack.enter_context(Path(args.json).open("a", encoding="utf-8")) if args.json else None
        )
        asyncio.run(_main(args, record))
    return 0
