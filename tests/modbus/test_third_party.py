"""A third-party Modbus client (plain pymodbus, not our driver) sees the documented map,
against the in-process simulator and against `infusiond sim modbus` started from the CLI."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
from pymodbus.client import AsyncModbusTcpClient

from sim_devices.modbus_server import ModbusPumpSimulator
from tests.modbus.conftest import demo_pump
from tests.support.procs import wait_for_line


async def _exercise_documented_map(port: int, expect_rate: int) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert await client.connect()
    try:
        rr = await client.read_holding_registers(0, count=12, device_id=1)
        assert rr.registers[0] == 1  # map_version
        assert rr.registers[1] == 1  # infusing
        assert rr.registers[3:5] == [0, expect_rate]  # rate, 0.01 mL/h, high word first
        assert rr.registers[9] == 100  # battery %
        ident = await client.read_holding_registers(30, count=8, device_id=1)
        assert b"".join(w.to_bytes(2, "big") for w in ident.registers).rstrip(b"\0") == b"SIM-GP1"
        # rate_setpoint 63.00 mL/h, command 6 (apply), command_seq 7 -- one FC16
        wr = await client.write_registers(20, [0, 6300, 6, 7], device_id=1)
        assert not wr.isError()
        rr = await client.read_holding_registers(24, count=2, device_id=1)
        assert rr.registers == [7, 0]  # executed_seq echoes, last_result ok
        rr = await client.read_holding_registers(3, count=2, device_id=1)
        assert rr.registers == [0, 6300]
        # 2000 mL/h is above the device max: last_result 1, rate unchanged
        await client.write_registers(20, [200000 >> 16, 200000 & 0xFFFF, 6, 8], device_id=1)
        rr = await client.read_holding_registers(3, count=2, device_id=1)
        assert rr.registers == [0, 6300]
        rr = await client.read_holding_registers(24, count=2, device_id=1)
        assert rr.registers == [8, 1]
        # read-only registers refuse writes (exception 2, illegal address)
        bad = await client.write_register(1, 0, device_id=1)
        assert bad.isError()
        assert bad.exception_code == 2
        # an undefined command is refused (exception 3, illegal value)
        bad = await client.write_registers(22, [42, 10], device_id=1)
        assert bad.isError()
        assert bad.exception_code == 3
    finally:
        client.close()


@pytest.mark.asyncio
async def test_plain_pymodbus_client_sees_the_documented_map() -> None:
    """Read reg 0 == 1, write setpoint + command 6 + seq, executed_seq echoes the seq."""
    sim = ModbusPumpSimulator([demo_pump(1)])
    async with sim.serving("tcp://127.0.0.1:0") as served:
        await _exercise_documented_map(int(served.url.rsplit(":", 1)[1]), 5250)
    assert sim.pump(1).rate == Decimal("63.00")


def _banner(proc: subprocess.Popen[bytes], lines: int) -> str:
    """The first ``lines`` lines the CLI prints on stdout ("serving ... on URL ...")."""
    assert proc.stdout is not None
    seen = wait_for_line(proc, b"\n", 20, stream=proc.stdout)
    while seen.count(b"\n") < lines:
        seen += wait_for_line(proc, b"\n", 20, stream=proc.stdout)
    return seen.decode()


def _ports(banner: str) -> list[int]:
    """The ports the CLI says it serves on (it binds port 0 and reports what it got)."""
    return [int(p) for p in re.findall(r" on tcp://127\.0\.0\.1:(\d+) ", banner)]


@pytest.fixture
def cli_sim() -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    """`infusiond sim modbus` on a port the OS picks, read back from what it prints."""
    args = ["--status", "infusing", "--rate", "52.5", "--vtbi", "250", "--pumps", "2"]
    listen = ["--listen", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "sim", "modbus", *listen, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        banner = _banner(proc, 1)
        (port,) = _ports(banner)
        yield proc, port, banner
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.asyncio
async def test_cli_simulator_prints_what_it_serves_and_logs_writes(
    cli_sim: tuple[subprocess.Popen[bytes], int, str],
) -> None:
    """`infusiond sim modbus --listen` serves the map, prints URL/units/map, logs writes."""
    proc, port, banner = cli_sim
    assert f"serving generic-pump-v1 on tcp://127.0.0.1:{port} unit ids 1,2" in banner
    await _exercise_documented_map(port, 5250)
    log = wait_for_line(proc, b"last_result=1", 10)
    assert b"register write" in log
    assert b"values=[0, 6300, 6, 7]" in log
    proc.terminate()
    assert proc.wait(timeout=10) == 0


def test_cli_rejects_a_bad_fault_naming_it() -> None:
    """An unknown fault is a usage error that lists the known ones; nothing is served."""
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "sim", "modbus", "--faults", "gremlins"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"unknown fault 'gremlins'" in done.stderr
    assert b"occlusion" in done.stderr


@pytest.mark.asyncio
async def test_cli_port_per_pump_serves_one_device_per_port() -> None:
    """`--pumps 2 --port-per-pump` on port 0: each pump is unit 1 on a port of its own, both
    printed; `2:` faults pump 2."""
    cmd = [sys.executable, "-m", "daemon.cli", "sim", "modbus"]
    opts = ["--listen", "tcp://127.0.0.1:0", "--pumps", "2", "--port-per-pump"]
    opts += ["--status", "infusing", "--rate", "10", "--faults", "2:door_open"]
    proc = subprocess.Popen([*cmd, *opts], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        ports = _ports(_banner(proc, 2))
        assert len(set(ports)) == 2
        states = []
        for port in ports:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
            assert await client.connect()
            try:
                rr = await client.read_holding_registers(1, count=2, device_id=1)
                states.append(rr.registers)
            finally:
                client.close()
        assert states == [[1, 0], [3, 1 << 3]]  # pump 1 infusing; pump 2 alarm, door open
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_reports_a_port_in_use_in_one_line() -> None:
    """A port another process holds: exit 1 with one line naming the URL, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        url = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "sim", "modbus", "--listen", url],
            capture_output=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert f"infusiond sim modbus: cannot serve Modbus on {url}".encode() in done.stderr
    assert b"Traceback" not in done.stderr


def test_cli_rejects_a_fault_for_a_pump_that_does_not_exist() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "sim", "modbus", "--faults", "5:occlusion"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"pump(s) [5]; pumps are [1]" in done.stderr
