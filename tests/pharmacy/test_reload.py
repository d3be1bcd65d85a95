"""Hot reload of the drug library: MQTT push and SIGHUP, against a real mosquitto, the real
gateway, simulators and journal. A library that fails any step changes nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from daemon.journal import Journal, JournalKind
from daemon.pharmacy.signing import load_public_key
from tests.e2e.harness import command, dose, validate
from tests.pharmacy.harness import SHIPPED, Keys, Ward, running_ward, variant
from tests.support.procs import Mosquitto

pytestmark = pytest.mark.asyncio


def push_body(lib: bytes, keys: Keys | None, *, req: str, user: str = "pharm-1") -> dict[str, Any]:
    body: dict[str, Any] = {"id": req, "by": {"user": user}, "library": lib.decode()}
    if keys is not None:
        body["signature"] = keys.sign(lib)
    return body


async def titrate(ward: Ward, value: float) -> dict[str, Any]:
    """Send set_dose to pump-1; its first answer (accepted, needs_confirmation or rejected)."""
    cmd = command(dose=dose(value))
    start = len(ward.watch.messages)
    await ward.watch.send("pump-1", cmd)
    msg = await ward.watch.wait_for(
        lambda m: (
            m.topic.endswith("pump-1/command/result")
            and m.json()["data"].get("id") == cmd["id"]
            and m.json()["data"]["phase"] in ("accepted", "needs_confirmation", "rejected")
        ),
        after=start,
    )
    payload = msg.json()
    validate(payload)
    data: dict[str, Any] = payload["data"]
    return data


def info_versions(ward: Ward) -> list[str]:
    return [m["data"]["library"]["version"] for m in ward.watch.on("bridge/info")]


def library_events(ward: Ward) -> list[dict[str, Any]]:
    return [
        m["data"]
        for m in ward.watch.on("pump/pump-1/event")
        if m["data"]["type"] == "library_changed"
    ]


def signed_config(tmp_path: Path, keys: Keys, lib: bytes = SHIPPED) -> dict[str, Any]:
    path = tmp_path / "library.toml"
    path.write_bytes(lib)
    path.with_name("library.toml.sig").write_text(keys.sign(lib) + "\n")
    return {
        "path": path,
        "require_signature": True,
        "trusted_keys": [keys.public_path],
        "push_allowlist": ["pharm-1"],
    }


async def test_signed_push_changes_the_next_verdict_bridge_info_and_is_journaled(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """0.06 ug/kg/min is accepted under the shipped library; after a signed push lowering the
    soft max to 0.055 the same titration asks for confirmation (SOFT_MAX), bridge/info names
    the new version, and a library_changed event with old and new identity is journaled."""
    keys = Keys.make(tmp_path / "keys")
    async with running_ward(tmp_path, mosquitto, signed_config(tmp_path, keys)) as ward:
        assert (await titrate(ward, 0.06))["phase"] == "accepted"
        new = variant(version="2027.1.1", soft_max="0.055")
        answer = await ward.push(push_body(new, keys, req="push-1"), correlation=b"c-42")
        validate({k: v for k, v in answer.items() if k != "_correlation"})
        assert answer["data"]["status"] == "ok", answer
        assert answer["data"]["id"] == "push-1"
        assert answer["data"]["library"]["version"] == "2027.1.1"
        assert answer["_correlation"] == b"c-42"
        event = await ward.watch.event("pump-1", "library_changed")
        assert event["from"]["version"] == "2026.12.1"
        assert event["to"]["version"] == "2027.1.1"
        assert event["via"] == "mqtt"
        assert event["by"] == "pharm-1"
        assert event["signed_by"] == load_public_key(keys.public_path).fingerprint
        await ward.watch.wait_for(
            lambda m: (
                m.topic.endswith("bridge/info")
                and m.json()["data"]["library"]["version"] == "2027.1.1"
            )
        )
        second = await titrate(ward, 0.065)
        assert second["phase"] == "needs_confirmation"
        assert "SOFT_MAX" in {f["rule"] for f in second["verdict"]["findings"]}
        assert second["verdict"]["library"]["version"] == "2027.1.1"
        journal_path = ward.gateway.journal.path
    journal = Journal.open_readonly(journal_path)
    try:
        changed = [
            r.payload["event"]
            for r in journal.rows(kinds=[JournalKind.EVENT])
            if r.payload["event"]["type"] == "library_changed"
        ]
    finally:
        journal.close()
    assert {e["pump_id"] for e in changed} == {"pump-1", "pump-2"}
    assert all(e["to"]["sha256"] == answer["data"]["library"]["sha256"] for e in changed)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda keys: (
                push_body(variant(version="x", soft_max="0.055"), keys, req="p")
                | {"signature": keys.sign(SHIPPED)}
            ),
            "does not verify",
            id="tampered",
        ),
        pytest.param(
            lambda keys: push_body(variant(version="x", soft_max="0.055"), None, req="p"),
            "signature: required",
            id="unsigned",
        ),
        pytest.param(
            lambda keys: push_body(variant(version="x", soft_max="4.0"), keys, req="p"),
            "LIB_",
            id="inconsistent-soft-above-hard",
        ),
        pytest.param(
            lambda keys: push_body(b'name = "x"\nversion = "1"\n', keys, req="p"),
            "LIB_LOAD",
            id="not-a-library",
        ),
        pytest.param(
            lambda keys: push_body(
                SHIPPED.replace(b'version = "2026.12.1"', b'version = "9"', 1).replace(
                    b'drug = "vasopressin"', b'drug = "vasopressin-x"', 1
                ),
                keys,
                req="p",
            ),
            "vasopressin",
            id="drops-a-running-drug",
        ),
    ],
)
async def test_a_bad_push_is_refused_with_its_reasons_and_nothing_changes(
    tmp_path: Path, mosquitto: Mosquitto, make: Any, reason: str
) -> None:
    """Tampered, unsigned, inconsistent, unparsable or pump-breaking libraries are refused;
    the answer lists why and names the running library; no event, no new bridge/info, and the
    next titration is judged as before."""
    keys = Keys.make(tmp_path / "keys")
    async with running_ward(tmp_path, mosquitto, signed_config(tmp_path, keys)) as ward:
        answer = await ward.push(make(keys))
        validate({k: v for k, v in answer.items() if k != "_correlation"})
        data = answer["data"]
        assert data["status"] == "error"
        assert data["error"]["code"] == "refused"
        assert any(reason in r for r in data["error"]["reasons"]), data["error"]
        assert data["library"]["version"] == "2026.12.1"
        assert (await titrate(ward, 0.06))["phase"] == "accepted"
        assert library_events(ward) == []
        assert set(info_versions(ward)) == {"2026.12.1"}
        journal_path = ward.gateway.journal.path
    journal = Journal.open_readonly(journal_path)
    try:
        refusals = [
            r.payload["library_refused"]
            for r in journal.rows(pump_id="@library", kinds=[JournalKind.STATE])
        ]
    finally:
        journal.close()
    assert [r["reasons"] for r in refusals] == [data["error"]["reasons"]]


async def test_push_refusals_before_the_library_is_read(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A user not in library.push_allowlist, a retained request, bad JSON and an oversize
    payload are each answered with their own error code; the library stays."""
    keys = Keys.make(tmp_path / "keys")
    lib = variant(version="2027.1.1", soft_max="0.055")
    async with running_ward(tmp_path, mosquitto, signed_config(tmp_path, keys)) as ward:
        intruder = await ward.push(push_body(lib, keys, req="p1", user="someone"))
        assert intruder["data"]["error"]["code"] == "not_authorized"
        assert "by.user" in intruder["data"]["error"]["message"]
        garbage = await ward.push(b"{nope")
        assert garbage["data"]["error"]["code"] == "bad_json"
        assert garbage["data"]["id"] is None
        huge = await ward.push(b" " * (200 * 1024))
        assert huge["data"]["error"]["code"] == "too_large"
        retained = await ward.push(push_body(lib, keys, req="p2"), retain=True)
        assert retained["data"]["error"]["code"] == "retained"
        await ward.client.publish(f"{ward.root}/bridge/request/library", b"", retain=True)
        assert library_events(ward) == []
        assert (await titrate(ward, 0.06))["phase"] == "accepted"


async def test_sighup_rereads_the_file_and_refuses_a_tampered_one(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """SIGHUP re-reads library.path and its .sig: a file edited after signing is refused (the
    running library stays and still judges); re-signed, the next SIGHUP installs it."""
    keys = Keys.make(tmp_path / "keys")
    cfg = signed_config(tmp_path, keys)
    path: Path = cfg["path"]
    new = variant(version="2026.12.2", soft_max="0.055")
    async with running_ward(tmp_path, mosquitto, cfg) as ward:
        path.write_bytes(new)  # the old signature stays: tampered
        os.kill(os.getpid(), signal.SIGHUP)
        refused = await ward.gateway.reloader.wait_outcomes(1)
        assert refused[0] is not None
        assert any("does not verify" in r for r in refused[0].reasons)
        assert library_events(ward) == []
        assert ward.gateway.gate.library.version == "2026.12.1"
        assert (await titrate(ward, 0.06))["phase"] == "accepted"
        path.with_name("library.toml.sig").write_text(keys.sign(new))
        os.kill(os.getpid(), signal.SIGHUP)
        event = await ward.watch.event("pump-1", "library_changed")
        assert (event["from"]["version"], event["to"]["version"]) == ("2026.12.1", "2026.12.2")
        assert event["via"] == "sighup"
        await ward.watch.wait_for(
            lambda m: (
                m.topic.endswith("bridge/info")
                and m.json()["data"]["library"]["version"] == "2026.12.2"
            )
        )
        second = await titrate(ward, 0.065)
        assert second["phase"] == "needs_confirmation"
