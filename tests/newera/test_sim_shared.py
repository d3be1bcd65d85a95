"""The simulator parts shared by New Era and PHD ULTRA (sim_devices/serial_*) act alike for both."""

from __future__ import annotations

from decimal import Decimal

import pytest

from drivers.newera.frames import Command as NeCommand
from drivers.phd.grammar import Command as PhdCommand
from sim_devices import newera_pump, phd_pump
from sim_devices.newera_server import NewEraSimulator
from sim_devices.phd_server import PhdSimulator
from sim_devices.serial_server import Endpoint, parse_listen


def test_listen_url_names_a_tcp_endpoint_or_a_serial_device() -> None:
    assert parse_listen("tcp://127.0.0.1:0") == Endpoint(host="127.0.0.1", port=0)
    assert parse_listen("socket://localhost:7000") == Endpoint(host="localhost", port=7000)
    assert parse_listen("/dev/pts/7") == Endpoint(path="/dev/pts/7")
    assert parse_listen("serial:///tmp/tty-a") == Endpoint(path="/tmp/tty-a")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://127.0.0.1", "needs host and port"),
        ("udp://127.0.0.1:7000", "use tcp://HOST:PORT or a serial device path"),
    ],
)
def test_bad_listen_url_is_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_listen(url)


def test_each_simulator_defaults_to_one_pump_at_0_and_its_vendor_baud_rate() -> None:
    newera, phd = NewEraSimulator(), PhdSimulator()
    assert (sorted(newera.pumps), newera.baudrate) == ([0], 19200)
    assert (sorted(phd.pumps), phd.baudrate) == ([0], 9600)
    assert isinstance(newera.pumps[0], newera_pump.NewEraPumpModel)
    assert isinstance(phd.pumps[0], phd_pump.PhdPumpModel)


def test_two_pumps_at_one_address_are_refused_by_both_simulators() -> None:
    with pytest.raises(ValueError, match="two simulated pumps at address 3"):
        NewEraSimulator(
            [newera_pump.NewEraPumpSetup(address=3), newera_pump.NewEraPumpSetup(address=3)]
        )
    with pytest.raises(ValueError, match="two simulated pumps at address 3"):
        PhdSimulator([phd_pump.PhdPumpSetup(address=3), phd_pump.PhdPumpSetup(address=3)])


def test_new_era_fault_on_a_command_spares_its_query_and_counts_down_on_writes() -> None:
    pump = NewEraSimulator().pumps[0]
    fault = newera_pump.Fault.DROP_REPLY
    with pytest.raises(ValueError, match="fault 'drop-reply': unknown command 'nosuch'"):
        pump.inject(fault, 1, on="nosuch")
    pump.inject(fault, 1, on="rat")  # spelled as the pump does: upper case
    assert pump.fault_on == {fault: "RAT"}
    assert not pump.take_fault(fault, NeCommand("RAT"))  # a query
    assert not pump.take_fault(fault, NeCommand("VOL", "5"))  # another command
    assert pump.take_fault(fault, NeCommand("RAT", "9MH"))
    assert not pump.take_fault(fault, NeCommand("RAT", "9MH"))  # count used up
    assert (pump.faults, pump.fault_on) == ({}, {})


def test_phd_fault_on_a_command_spares_its_query_and_counts_down_on_writes() -> None:
    pump = PhdSimulator([phd_pump.PhdPumpSetup(rate_ml_h=Decimal(9))]).pumps[0]
    fault = phd_pump.Fault.DROP_REPLY
    with pytest.raises(ValueError, match="fault 'drop-reply': unknown command 'IRATE'"):
        pump.inject(fault, 1, on="IRATE")  # PHD names are lower case: not normalised
    pump.inject(fault, 2, on="irate")
    assert not pump.take_fault(fault, PhdCommand("irate"))  # a query
    assert not pump.take_fault(fault, PhdCommand("tvolume", "5 ml"))
    assert pump.take_fault(fault, PhdCommand("irate", "9 ml/hr"))
    assert pump.faults == {fault: 1}
    assert pump.take_fault(fault, PhdCommand("irate", "8 ml/hr"))
    assert (pump.faults, pump.fault_on) == ({}, {})
