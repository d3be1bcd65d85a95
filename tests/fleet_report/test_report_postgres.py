"""``infusiond report --postgres``: two real gateways run the pharmacy's scripted session
(simulators, journals) on a ward mosquitto bridged to a central one, where the real collector
(``infusiond fleet collect``) stores what they publish in a real PostgreSQL; the hospital
report then counts, per gateway, exactly what each gateway's own journal report counts, and
their sum in total."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from daemon.base.paths import journal_path
from daemon.base.timefmt import format_ts
from daemon.cli import main
from daemon.fleet.migrate import migrate
from daemon.fleet.records import (
    BadMessage,
    Batch,
    parse_message,
)
from daemon.fleet.store import NOTIFY_CHANNEL, connect, store_batch
from daemon.journal import Journal
from tests.e2e.harness import command, dose
from tests.fleet.topology import WAIT_S, CollectorProcess, bridged_brokers, collectors
from tests.pharmacy.harness import running_ward
from tests.pharmacy.test_reload import titrate
from tests.pharmacy.test_report import REASON, scripted_session
from tests.support.postgres import PostgresServer
from tests.support.procs import Mosquitto

GATEWAYS = ("icu-bed-1", "icu-bed-2")
COUNTS = (
    "programmings",
    "accepted_outright",
    "confirmations_asked",
    "overrides",
    "hard_rejections",
    "catches",
    "observed_outside_library",
    "rate_changes_gated",
    "rate_changes_at_pump",
    "library_compliance",
    "alerts_per_100",
    "library_versions",
)


def batch_of(messages: list[Any]) -> Batch:
    """What the collector stores of these messages (the watcher's own commands and the
    vitals are not fleet topics)."""
    batch = Batch()
    for message in messages:
        try:
            record = parse_message(message.topic, message.payload)
        except BadMessage:
            continue
        batch.add(record)
    return batch


async def run_gateway(
    tmp_path: Path, broker: Mosquitto, gateway: str, *, extra: bool
) -> tuple[Path, Batch]:
    """The scripted session on ``gateway`` (plus, with ``extra``, a second caught rejection
    on pump-1 and a vasopressin confirmation asked and never given); its data dir and what it
    published."""
    async with running_ward(
        tmp_path / gateway, broker, {"push_allowlist": []}, gateway_id=gateway
    ) as ward:
        await scripted_session(ward)
        if extra:
            assert (await titrate(ward, 4.0))["phase"] == "rejected"
            fixed = await titrate(ward, 0.05)
            assert fixed["phase"] == "accepted"
            await ward.watch.result(fixed["id"], "applied")
            ask = command(dose=dose(0.001, "[USP'U]/min"))
            await ward.watch.send("pump-2", ask)
            await ward.watch.result(ask["id"], "needs_confirmation")
        return ward.gateway.config.data_dir, batch_of(ward.watch.messages)


def journaled_events(data_dir: Path) -> int:
    """How many events a (stopped) gateway's journal holds: every one it published."""
    journal = Journal.open_readonly(journal_path(data_dir))
    try:
        return journal.current_seq()
    finally:
        journal.close()


async def wait_stored(dsn: str, stored: dict[str, tuple[Path, Batch]]) -> None:
    """Until the store holds every event each gateway journaled and every command result it
    was seen to publish (woken by the collector's NOTIFY after each commit)."""
    want = {
        gw: (journaled_events(data_dir), len({r.digest for r in batch.command_results}))
        for gw, (data_dir, batch) in stored.items()
    }
    held: dict[str, tuple[int, int]] = {}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    cur = await conn.execute(
                        "SELECT g, (SELECT count(*) FROM events e WHERE e.gateway = g), "
                        "(SELECT count(*) FROM command_results r WHERE r.gateway = g) "
                        "FROM unnest(%s::text[]) AS g",
                        (list(want),),
                    )
                    held = {g: (int(e), int(r)) for g, e, r in await cur.fetchall()}
                    if held == want:
                        return
                    async for _ in conn.notifies(timeout=1.0, stop_after=1):
                        pass
        except TimeoutError:
            raise AssertionError(f"stored (events, results) {held} != published {want}") from None


async def store(dsn: str, batches: list[Batch]) -> None:
    conn = await connect(dsn)
    try:
        await migrate(conn)
        for batch in batches:
            await store_batch(conn, batch)
    finally:
        await conn.close()


def report(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["report", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def counts(summary: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["drug"], r["profile"]): {k: r[k] for k in COUNTS} for r in summary}


def undated(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items without their gateway and time (the store has the time an event was published,
    the journal the time its row was written: a millisecond or two earlier)."""
    return [{k: v for k, v in item.items() if k not in ("gateway", "ts")} for item in items]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_hospital_report_equals_each_gateways_journal_report_and_their_sum(
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Per gateway, the counts, overrides (with their reasons), catches and changes at the
        pump read from PostgreSQL equal the journal's; the total is their sum; --gateway keeps
        one; CSV has a gateway column; the HTML stands alone and shows both gateways. Without the
    command results (not backfilled), the events give the same counts but for the library
    versions and a confirmation asked and never given."""
    stored = {}
    with bridged_brokers(tmp_path) as (ward_broker, central):
        collector = CollectorProcess(central, postgres_dsn, client_id="report-test")
        with collectors(collector):
            between = ""
            for gateway in GATEWAYS:
                stored[gateway] = await run_gateway(
                    tmp_path, ward_broker, gateway, extra=gateway == GATEWAYS[1]
                )
                between = between or format_ts(datetime.now(UTC))  # after the first one
            await wait_stored(postgres_dsn, stored)

    fleet = json.loads(report(capsys, "--postgres", postgres_dsn, "--format", "json"))
    assert "password" not in fleet["journal"]
    per_gateway = {g["gateway"]: g for g in fleet["gateways"]}
    assert sorted(per_gateway) == list(GATEWAYS)
    journals = {}
    for gateway, (data_dir, _batch) in stored.items():
        journals[gateway] = own = json.loads(
            report(capsys, "--data-dir", str(data_dir), "--format", "json")
        )
        assert counts(per_gateway[gateway]["summary"]) == counts(own["summary"]), gateway
        mine = [o for o in fleet["overrides"] if o["gateway"] == gateway]
        assert undated(mine) == undated(own["overrides"])
        assert REASON in {o["reason"] for o in mine}
        caught = [c for c in fleet["catches"] if c["gateway"] == gateway]
        assert [(c["rejected_command"], c["accepted_command"]) for c in caught] == [
            (c["rejected_command"], c["accepted_command"]) for c in own["catches"]
        ]
        seen = [o for o in fleet["observed_outside_library"] if o["gateway"] == gateway]
        assert [(o["pump_id"], o["rules"]) for o in seen] == [
            (o["pump_id"], o["rules"]) for o in own["observed_outside_library"]
        ]
    one, two = (counts(journals[g]["summary"]) for g in GATEWAYS)
    assert one != two  # the second gateway did more: the comparison is not trivially equal
    total = counts(fleet["summary"])[("(all)", "(all)")]
    for metric in ("programmings", "hard_rejections", "catches", "overrides"):
        assert total[metric] == one[("(all)", "(all)")][metric] + two[("(all)", "(all)")][metric]
    assert total["catches"] == 3
    assert total["confirmations_asked"] == 3

    only = json.loads(
        report(capsys, "--postgres", postgres_dsn, "--gateway", GATEWAYS[1], "--format", "json")
    )
    assert [g["gateway"] for g in only["gateways"]] == [GATEWAYS[1]]
    assert counts(only["summary"]) == counts(journals[GATEWAYS[1]]["summary"])

    # --from between the two sessions: the first gateway's commands fall outside; --to there:
    # only the first gateway's count (each gateway's rows are windowed on their own)
    later = json.loads(
        report(capsys, "--postgres", postgres_dsn, "--from", between, "--format", "json")
    )
    first, second = (counts(g["summary"])[("(all)", "(all)")] for g in later["gateways"])
    assert first["programmings"] == 0
    assert second == counts(journals[GATEWAYS[1]]["summary"])[("(all)", "(all)")]
    earlier = json.loads(
        report(capsys, "--postgres", postgres_dsn, "--to", between, "--format", "json")
    )
    assert counts(earlier["summary"]) == counts(journals[GATEWAYS[0]]["summary"])

    table = list(
        csv.DictReader(io.StringIO(report(capsys, "--postgres", postgres_dsn, "--format", "csv")))
    )
    assert table[-1]["gateway"] == "(all)"
    assert table[-1]["drug"] == "(all)"
    assert {r["gateway"] for r in table} == {*GATEWAYS, "(all)"}
    assert table[-1]["programmings"] == str(total["programmings"])

    out = tmp_path / "hospital.html"
    report(capsys, "--postgres", postgres_dsn, "--out", str(out))
    html = out.read_text()
    assert "http://" not in html
    assert "https://" not in html
    for gateway in GATEWAYS:
        assert f"Gateway {gateway}" in html
    assert REASON in html

    # Command results are not backfilled: without any, the verdicts come from the events.
    events_only = postgres_server.create_database()
    try:
        await store(events_only, [replace(b, command_results=[]) for _d, b in stored.values()])
        derived = json.loads(report(capsys, "--postgres", events_only, "--format", "json"))
    finally:
        postgres_server.drop_database(events_only)
    for gateway, part in zip(GATEWAYS, derived["gateways"], strict=True):
        assert part["gateway"] == gateway
        got, want = counts(part["summary"]), counts(journals[gateway]["summary"])
        for key, row in want.items():
            unasked = 1 if gateway == GATEWAYS[1] and key[0] in ("vasopressin", "(all)") else 0
            assert got[key]["confirmations_asked"] == row["confirmations_asked"] - unasked
            assert got[key]["programmings"] == row["programmings"] - unasked
            assert set(got[key]["library_versions"]) <= set(row["library_versions"])
            for metric in ("accepted_outright", "hard_rejections", "overrides", "catches"):
                assert got[key][metric] == row[metric], (gateway, key, metric)


def test_report_postgres_refuses_two_sources_a_gateway_without_postgres_and_an_empty_store(
    tmp_path: Path, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data-dir with --postgres, --gateway without --postgres and a database the collector
    never created are each a clear error naming the option (exit 1)."""
    assert main(["report", "--postgres", postgres_dsn, "--data-dir", str(tmp_path)]) == 1
    assert "give one source" in capsys.readouterr().err
    assert main(["report", "--data-dir", str(tmp_path), "--gateway", "g1"]) == 1
    assert "--gateway: only with --postgres" in capsys.readouterr().err
    assert main(["report", "--postgres", postgres_dsn, "--format", "json"]) == 1
    err = capsys.readouterr().err
    assert "--postgres" in err
    assert "fleet collect" in err
    assert main(["report", "--postgres", "host=/nonexistent-dir dbname=x", "--format", "csv"]) == 1
    assert "--postgres: cannot connect" in capsys.readouterr().err
