"""The ``infusiond`` command line.

This module only parses arguments and dispatches; each subcommand lives in its own module and
is imported lazily, so ``infusiond check`` does not pay for importing pymodbus or aiomqtt.
Every implementation module exposes ``run(args: argparse.Namespace) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Protocol

from protocol.errors import InfusiondError

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
#: the shell's status for a process killed by SIGPIPE (its reader went away)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class _Runner(Protocol):
    def __call__(self, args: argparse.Namespace) -> int: ...


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="journal and state directory (default: the per-user state directory)",
    )


def _add_newera_options(sp: argparse.ArgumentParser) -> None:
    """Options of ``sim newera`` beyond the shared ones."""
    sp.add_argument("--address", type=int, default=0, help="first pump address (0-99)")
    sp.add_argument("--pumps", type=int, default=1, help="pumps daisy-chained on the port")
    sp.add_argument("--diameter", default="26.59", metavar="MM", help="syringe diameter")
    sp.add_argument("--rate", default="0", metavar="ML_H", help="initial rate, mL/h")
    sp.add_argument("--running", action="store_true", help="start infusing")
    sp.add_argument("--vtbi", default="0", metavar="ML", help="volume target (0 = none)")
    sp.add_argument("--baud", type=int, default=19200, help="serial baud rate")
    sp.add_argument("--no-reset-alarm", action="store_true", help="do not hold A?R at power-on")
    sp.add_argument(
        "--emulate-wire", action="store_true", help="pace replies at the baud rate (bench)"
    )


def _add_phd_options(sp: argparse.ArgumentParser) -> None:
    """Options of ``sim phd`` beyond the shared ones (sim_devices.phd_cli)."""
    sp.add_argument("--address", type=int, default=0, help="first pump address (0-99)")
    sp.add_argument("--pumps", type=int, default=1, help="pumps on the chain (addresses follow)")
    sp.add_argument("--diameter", default="26.59", metavar="MM", help="syringe diameter")
    sp.add_argument("--rate", default="0", metavar="ML_H", help="initial infuse rate, mL/h")
    sp.add_argument("--running", action="store_true", help="start infusing")
    sp.add_argument("--target-volume", default="0", metavar="ML", help="target volume (0 = none)")
    sp.add_argument("--baud", type=int, default=9600, help="serial baud rate")
    sp.add_argument(
        "--emulate-wire", action="store_true", help="pace replies at the baud rate (bench)"
    )


def _add_monitor_options(
    p: argparse.ArgumentParser, where: argparse._MutuallyExclusiveGroup
) -> None:
    """Options of ``sim monitor`` beyond the common simulator ones (sim_devices.monitor_cli)."""
    where.add_argument(
        "--to", metavar="URL", help="gateway listener (default tcp://127.0.0.1:2575)"
    )
    p.add_argument("--bed", default="bed-1", metavar="ID", help="bed id sent in PV1-3")
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between messages"
    )
    p.add_argument("--coding", choices=("MDC", "LN"), default="MDC", help="OBX code system")
    p.add_argument("--seed", type=int, metavar="N", help="noise seed (default: the scenario's)")
    p.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="stop after N messages; exit 1 on any unexpected ACK",
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="read fault names from stdin while running (one per line)",
    )


def _add_modbus_sim_options(sp: argparse.ArgumentParser) -> None:
    """Options of the Modbus pump simulator (sim_devices/modbus_cli.py)."""
    sp.add_argument("--pumps", type=int, default=1, metavar="N", help="pumps (units 1..N)")
    sp.add_argument("--unit-ids", metavar="LIST", help="explicit unit ids, e.g. 1,2,7")
    sp.add_argument(
        "--profile",
        default="generic-pump-v1",
        metavar="NAME|PATH",
        help="register map: a profile name in drivers/profiles/ or a TOML file",
    )
    sp.add_argument(
        "--status",
        default="stopped",
        choices=("stopped", "infusing", "paused"),
        help="state at start (default: stopped)",
    )
    sp.add_argument("--rate", default="0", metavar="ML_H", help="initial rate, mL/h")
    sp.add_argument("--vtbi", default="0", metavar="ML", help="initial VTBI (0 = none)")
    sp.add_argument("--volume", default="0", metavar="ML", help="volume already infused")
    sp.add_argument("--max-rate", default="999.99", metavar="ML_H", help="device limit")
    sp.add_argument("--baudrate", type=int, default=19200, help="RTU baud rate")
    sp.add_argument(
        "--port-per-pump", action="store_true", help="pump k as unit 1 on port BASE+k-1"
    )


def _add_demo_options(p: argparse.ArgumentParser) -> None:
    """Options of ``infusiond demo`` (daemon/demo/bedside.py)."""
    p.add_argument(
        "--broker",
        default="embedded",
        metavar="embedded|mqtt://HOST:PORT",
        help="the demo's own broker (mosquitto, MQTT v5; amqtt 3.1.1 if absent) or another",
    )
    p.add_argument(
        "--gateway-id",
        default="demo",
        metavar="ID",
        help="gateway id: topics live under infusiond/<ID>/ (default: demo)",
    )
    _add_data_dir(p)
    p.add_argument("--pumps", type=int, default=2, metavar="N", help="number of pumps (>= 2)")
    p.add_argument("--phd", action="store_true", help="add pump-phd, a PHD ULTRA pump chain")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="simulated clock speed")
    p.add_argument(
        "--broker-ws",
        metavar="ws://HOST:PORT/",
        help="WebSocket URL of an external --broker, for the web dashboard",
    )
    p.add_argument(
        "--web-port", type=int, default=0, metavar="PORT", help="dashboard port (default: any)"
    )
    p.add_argument(
        "--library", metavar="PATH", help="drug library file (SIGHUP re-reads it; default: shipped)"
    )
    p.add_argument(
        "--hl7-out", metavar="mllp://HOST:PORT", help="send IHE PCD DEC/IPEC/ACM to this EHR"
    )
    p.add_argument("--ehr-sim", action="store_true", help="run a simulated EHR here and send to it")
    p.add_argument(
        "--scenario", metavar="FILE", help="scenario TOML: timed faults on the simulated devices"
    )


def _add_sim_tool_parsers(simsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``infusiond sim ehr`` and ``infusiond sim fault``: simulators that are not devices."""
    _add_ehr_sim_parser(simsub)
    _add_sim_fault_parser(simsub)


def _add_sim_fault_parser(simsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``infusiond sim fault`` (sim_devices/fault_cli.py)."""
    sp = simsub.add_parser("fault", help="send a fault to a simulated pump of infusiond demo")
    sp.add_argument("pump", metavar="PUMP", help="pump id (pump-1, ...) or 'monitor'")
    sp.add_argument("event", metavar="EVENT", help="a fault name, or one event as JSON")
    sp.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        metavar="mqtt://HOST:PORT",
        help="the demo's broker, as its banner prints it (default: mqtt://127.0.0.1:1883)",
    )
    sp.add_argument("--gateway", default="demo", metavar="ID", help="the demo's gateway id")
    sp.add_argument("--timeout", type=float, default=5.0, metavar="S", help="wait for the answer")
    sp.set_defaults(target="sim_devices.fault_cli:run")


def _add_ehr_sim_parser(simsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``infusiond sim ehr`` (sim_devices/ehr_cli.py)."""
    sp = simsub.add_parser("ehr", help="simulated EHR / alarm manager (IHE PCD over MLLP)")
    sp.add_argument(
        "--listen",
        default="mllp://127.0.0.1:2575",
        metavar="URL",
        help="where to accept DEC/IPEC/ACM messages (default: mllp://127.0.0.1:2575)",
    )
    sp.add_argument("--json", metavar="PATH", help="also append each message as JSON to PATH")
    sp.add_argument(
        "--answer", choices=["AA", "AE", "AR"], default="AA", help="ACK code to answer with"
    )
    sp.add_argument(
        "--order",
        action="append",
        metavar="KEY=VALUE,...",
        help="send a PIV order (pump=,drug=,concentration=,dose=...) to --piv and exit",
    )
    sp.add_argument("--piv", metavar="mllp://HOST:PORT", help="the gateway's PIV listener")
    sp.set_defaults(target="sim_devices.ehr_cli:run")


def _add_replay_parser(jsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``infusiond journal replay`` (daemon/ui/replay.py)."""
    sp = jsub.add_parser("replay", help="publish a recorded session's events again, at their pace")
    _add_data_dir(sp)
    sp.add_argument("--from", dest="from_file", metavar="FILE", help="a `journal export` file")
    sp.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        metavar="mqtt://HOST:PORT",
        help="broker to publish to (default: mqtt://127.0.0.1:1883)",
    )
    sp.add_argument("--gateway", default="replay", metavar="ID", help="gateway id to publish as")
    sp.add_argument("--speed", type=float, default=1.0, metavar="X", help="time compression")
    sp.add_argument(
        "--max-gap", type=float, default=5.0, metavar="S", help="longest pause between events"
    )
    sp.set_defaults(target="daemon.ui.replay:run")


def _add_pharmacy_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    libsub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """``library sign|verify|diff`` and ``report`` (daemon/pharmacy/)."""
    sp = libsub.add_parser("sign", help="sign a library file (Ed25519): writes LIB.sig")
    sp.add_argument("key", metavar="KEY", help="private key, PKCS#8 PEM")
    sp.add_argument("path", metavar="LIB", help="library file")
    sp.add_argument("--out", metavar="PATH", help="signature file (default: LIB.sig)")
    sp.set_defaults(target="daemon.cli.library_cmd:sign")
    sp = libsub.add_parser("verify", help="check a library's signature (exit 1 if it fails)")
    sp.add_argument("pubkey", metavar="PUBKEY", help="public key, SubjectPublicKeyInfo PEM")
    sp.add_argument("path", metavar="LIB", help="library file")
    sp.add_argument("signature", metavar="SIG", help="signature file (base64)")
    sp.set_defaults(target="daemon.cli.library_cmd:verify")
    sp = libsub.add_parser("diff", help="every limit, concentration... that changed, OLD -> NEW")
    sp.add_argument("old", metavar="OLD", help="the library in use (TOML file)")
    sp.add_argument("new", metavar="NEW", help="the library proposed (TOML file)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(target="daemon.pharmacy.diff:run")

    p = sub.add_parser(
        "report", help="the pharmacy CQI report, from the journal or the fleet store (read-only)"
    )
    _add_data_dir(p)
    p.add_argument(
        "--postgres",
        metavar="DSN",
        help="the whole hospital from the fleet store (`fleet collect`) instead of one journal",
    )
    p.add_argument(
        "--gateway",
        action="append",
        metavar="G",
        help="with --postgres: only this gateway (repeat for several)",
    )
    p.add_argument("--from", dest="start", metavar="T", help="RFC 3339 or YYYY-MM-DD (inclusive)")
    p.add_argument("--to", dest="end", metavar="T", help="RFC 3339 or YYYY-MM-DD (exclusive)")
    p.add_argument(
        "--format", choices=("html", "json", "csv"), default="html", help="default: html"
    )
    p.add_argument("--out", metavar="PATH", help="output file (default: stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(target="daemon.cli.report_cmd:run")


def _add_watch_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``infusiond watch``: the live terminal view."""
    p = sub.add_parser("watch", help="live terminal view of every pump and bed")
    p.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        metavar="URL",
        help="broker to read from (default: mqtt://127.0.0.1:1883)",
    )
    p.add_argument("--gateway", default="+", metavar="ID", help="gateway id (default: all)")
    p.add_argument(
        "--once",
        action="store_true",
        help="print one frame of retained state and exit (1 when the broker cannot be reached "
        "or no pump state arrived)",
    )
    p.add_argument(
        "--http",
        metavar="URL",
        help="the daemon's HTTP server (e.g. http://127.0.0.1:8080): recent events are loaded "
        "from its history API at start",
    )
    p.set_defaults(target="daemon.ui.watch:run")


def _add_check_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``check`` (daemon/cli/check_cmd.py)."""
    p = sub.add_parser("check", help="check a request (JSON on stdin) -> verdict JSON on stdout")
    p.add_argument("--library", metavar="PATH", help="drug library (default: shipped example)")
    p.set_defaults(target="daemon.cli.check_cmd:run")


def _add_operator_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``config check`` (daemon/cli/config_cmd.py) and ``doctor`` (daemon/cli/doctor.py)."""
    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    sp = csub.add_parser("check", help="list every problem of a configuration (exit 1 if any)")
    sp.add_argument("--config", required=True, metavar="PATH", help="TOML configuration file")
    sp.set_defaults(target="daemon.cli.config_cmd:run")

    p = sub.add_parser(
        "doctor", help="check config, library, data dir, broker, pumps and vitals sources in turn"
    )
    p.add_argument("--config", required=True, metavar="PATH", help="TOML configuration file")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds allowed for each network or device check (default: 5)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per check, one per line")
    p.set_defaults(target="daemon.cli.doctor:run")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; subcommands set ``args.target`` to 'module:function'."""
    parser = argparse.ArgumentParser(
        prog="infusiond",
        description=(
            "Bedside gateway between infusion pumps and the hospital network. "
            "Not a medical device; not cleared for clinical use."
        ),
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway service")
    p.add_argument("--config", required=True, metavar="PATH", help="TOML configuration file")
    p.set_defaults(target="daemon.cli.service:run")

    p = sub.add_parser("demo", help="simulated bedside + daemon + its own broker, in one command")
    _add_demo_options(p)
    p.set_defaults(target="daemon.demo.bedside:run")

    p = sub.add_parser("sim", help="run a device simulator (pumps, patient monitor)")
    simsub = p.add_subparsers(dest="sim_kind", metavar="KIND", required=True)
    for kind, target, helptext in (
        ("modbus", "sim_devices.modbus_cli:run", "Modbus TCP/RTU pump (generic-pump-v1 map)"),
        ("newera", "sim_devices.newera_cli:run", "New Era NE-500 family serial syringe pump"),
        ("phd", "sim_devices.phd_cli:run", "Harvard Apparatus PHD ULTRA pump chain (serial)"),
        ("monitor", "sim_devices.monitor_cli:run", "patient monitor sending HL7 ORU^R01 (MLLP)"),
    ):
        sp = simsub.add_parser(kind, help=helptext)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--listen", metavar="URL", help="e.g. tcp://127.0.0.1:5020")
        where.add_argument("--serial", metavar="PATH", help="serial device or pty path")
        sp.add_argument("--faults", nargs="*", default=[], metavar="FAULT", help="faults at start")
        sp.add_argument("--scenario", metavar="PATH", help="scenario TOML file")
        sp.add_argument("--speed", type=float, default=1.0, metavar="X", help="clock speed")
        if kind == "newera":
            _add_newera_options(sp)
        elif kind == "phd":
            _add_phd_options(sp)
        elif kind == "monitor":
            _add_monitor_options(sp, where)
        sp.set_defaults(target=target)
        if kind == "modbus":
            _add_modbus_sim_options(sp)

    _add_sim_tool_parsers(simsub)

    _add_check_parser(sub)

    p = sub.add_parser("library", help="drug library tools")
    libsub = p.add_subparsers(dest="library_cmd", metavar="ACTION", required=True)
    sp = libsub.add_parser("check", help="validate a library file and its [[examples]]")
    sp.add_argument("path", nargs="?", metavar="PATH", help="default: the shipped example")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(target="daemon.cli.library_cmd:run")
    _add_pharmacy_parsers(sub, libsub)

    p = sub.add_parser("journal", help="journal tools (safe while the daemon runs)")
    jsub = p.add_subparsers(dest="journal_cmd", metavar="ACTION", required=True)
    for action, helptext in (
        ("verify", "check the hash chain; exit 1 naming the first broken row"),
        ("export", "print every row as JSON lines"),
    ):
        sp = jsub.add_parser(action, help=helptext)
        _add_data_dir(sp)
        sp.set_defaults(target="daemon.cli.journal_cmd:run")
    _add_replay_parser(jsub)

    _add_operator_parsers(sub)
    _add_fleet_parsers(sub)
    _add_watch_parser(sub)
    return parser


def _add_fleet_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fleet collect`` and ``fleet serve`` (daemon/fleet/)."""
    p = sub.add_parser("fleet", help="many gateways, one PostgreSQL store (docs/fleet.md)")
    fleet_sub = p.add_subparsers(dest="fleet_cmd", metavar="ACTION", required=True)
    sp = fleet_sub.add_parser(
        "collect",
        help="store every gateway's events, results and states in PostgreSQL",
        description="A flag overrides the same key of --config. The MQTT password is never "
        "a flag: [broker] password_file in the config file, or INFUSIOND_FLEET_MQTT_PASSWORD.",
    )
    sp.add_argument(
        "--config",
        metavar="FILE",
        help="TOML: postgres, group, batch, log_level and a [broker] table like infusiond's "
        "(url, username, password_file, client_id, keepalive_s, [broker.tls] ca_file, "
        "cert_file, key_file); see docs/fleet.md",
    )
    sp.add_argument(
        "--broker",
        metavar="URL",
        help="central broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS: [broker.tls] "
        "in --config); required here or in --config",
    )
    sp.add_argument(
        "--postgres", metavar="DSN", help="libpq DSN or URL; required here or in --config"
    )
    sp.add_argument("--group", metavar="NAME", help="MQTT v5 shared-subscription group")
    sp.add_argument(
        "--client-id",
        metavar="ID",
        help="fixed MQTT client id of this collector's persistent session (default: "
        "infusiond-collector-<host>[-<group>]); unique per collector",
    )
    sp.add_argument(
        "--username",
        metavar="USER",
        help="MQTT user (password from INFUSIOND_FLEET_MQTT_PASSWORD or [broker] password_file)",
    )
    sp.add_argument("--batch", type=int, metavar="N", help="rows per transaction (default: 500)")
    sp.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="debug, info, warning or error (default: info)",
    )
    sp.set_defaults(target="daemon.cli.collect_cmd:run")
    sp = fleet_sub.add_parser("serve", help="the fleet page: every gateway, its gaps and alarms")
    sp.add_argument("--postgres", required=True, metavar="DSN", help="the fleet store")
    sp.add_argument(
        "--listen",
        default="127.0.0.1:8470",
        metavar="HOST:PORT",
        help="where to serve the page (default: 127.0.0.1:8470; port 0: any free port)",
    )
    sp.set_defaults(target="daemon.fleet.serve:run")


def _resolve(target: str) -> _Runner:
    module_name, _, func_name = target.partition(":")
    runner: _Runner = getattr(importlib.import_module(module_name), func_name)
    return runner


def _reader_went_away() -> int:
    """stdout's reader closed the pipe (``infusiond journal export | head``): stop quietly,
    like a Unix tool killed by SIGPIPE, exit 128 + SIGPIPE.

    stdout is pointed at /dev/null so that flushing it at interpreter exit cannot raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version  # noqa: PLC0415 - only needed here

        print(f"infusiond {version('infusiond')}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    runner = _resolve(args.target)
    try:
        return runner(args)
    except BrokenPipeError:
        return _reader_went_away()
    except KeyboardInterrupt:
        return 130
    except InfusiondError as exc:
        print(f"infusiond: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
