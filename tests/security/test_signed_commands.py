"""Signed commands (daemon/mqtt/signing.py): HMAC-SHA256 over the canonical command with a key id.
With ``control.require_signature`` a stolen broker account cannot program a pump: unsigned,
tampered or wrongly keyed commands are answered ``bad_signature`` and never reach the device;
keys never appear in logs, answers or the journal."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.base.config import load_config
from daemon.base.errors import ConfigError
from daemon.base.results import ErrorCode
from daemon.mqtt.command_parse import Command, Rejection, parse_command
from daemon.mqtt.signing import SignaturePolicy, canonical_bytes, sign
from tests.reliability.harness import (
    CLINICIAN,
    NE_RATE,
    NE_RATE_UP,
    bedside,
    command,
    probe,
    running_gateway,
    simulators,
    write_toml,
)
from tests.support.procs import Mosquitto

KEY = "k1-secret-0123456789abcdef"
OTHER_KEY = "another-secret-0123456789"


def policy(require: bool = True) -> SignaturePolicy:
    return SignaturePolicy.from_config(
        {"k1": "env:REL_KEY"}, require=require, environ={"REL_KEY": KEY}
    )


def test_canonical_form_is_sorted_compact_utf8_without_sig() -> None:
    """The documented canonical bytes, byte for byte."""
    cmd = {"b": 1, "a": {"z": "é", "y": 0.06}, "sig": {"kid": "x", "hmac": "0" * 64}}
    assert canonical_bytes(cmd) == '{"a":{"y":0.06,"z":"é"},"b":1}'.encode()
    expected = hmac.new(KEY.encode(), canonical_bytes(cmd), hashlib.sha256).hexdigest()
    assert sign(cmd, kid="k1", key=KEY.encode())["sig"] == {"kid": "k1", "hmac": expected}


def test_a_validly_signed_command_parses_and_key_order_does_not_matter() -> None:
    """Signed by a client that orders keys differently: the canonical form makes it verify."""
    body = sign(command(), kid="k1", key=KEY.encode())
    shuffled = dict(reversed(list(body.items())))
    parsed = parse_command(
        json.dumps(shuffled).encode(), now=datetime.now(UTC), signatures=policy()
    )
    assert isinstance(parsed, Command)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: {k: v for k, v in c.items() if k != "sig"}, "sig: required"),
        (lambda c: {**c, "rate": {"value": 999.0, "unit": "mL/h"}}, "sig.hmac: does not match"),
        (
            lambda c: sign(
                {k: v for k, v in c.items() if k != "sig"}, kid="k1", key=OTHER_KEY.encode()
            ),
            "sig.hmac: does not match",
        ),
        (lambda c: {**c, "sig": {**c["sig"], "kid": "k9"}}, "sig.kid: unknown key id 'k9'"),
    ],
    ids=["unsigned", "tampered", "wrong_key", "unknown_kid"],
)
def test_bad_signatures_are_rejected_with_a_specific_message(mutate: Any, message: str) -> None:
    body = mutate(sign(command(), kid="k1", key=KEY.encode()))
    parsed = parse_command(json.dumps(body).encode(), now=datetime.now(UTC), signatures=policy())
    assert isinstance(parsed, Rejection)
    assert parsed.code is ErrorCode.BAD_SIGNATURE
    assert message in parsed.message
    assert KEY not in parsed.message


def test_without_require_signature_unsigned_commands_pass_but_a_bad_sig_does_not() -> None:
    lax = policy(require=False)
    assert isinstance(
        parse_command(json.dumps(command()).encode(), now=datetime.now(UTC), signatures=lax),
        Command,
    )
    forged = {**command(), "sig": {"kid": "k1", "hmac": "a" * 64}}
    parsed = parse_command(json.dumps(forged).encode(), now=datetime.now(UTC), signatures=lax)
    assert isinstance(parsed, Rejection)
    assert parsed.code is ErrorCode.BAD_SIGNATURE


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(min_value=0, max_value=999, allow_nan=False), flip=st.integers(0, 63))
def test_any_single_hex_digit_change_of_the_mac_is_rejected(rate: float, flip: int) -> None:
    """A MAC that differs in any one digit never verifies (property)."""
    body = sign(command(rate={"value": rate, "unit": "mL/h"}), kid="k1", key=KEY.encode())
    mac = body["sig"]["hmac"]
    digit = "0" if mac[flip] != "0" else "1"
    body["sig"]["hmac"] = mac[:flip] + digit + mac[flip + 1 :]
    parsed = parse_command(json.dumps(body).encode(), now=datetime.now(UTC), signatures=policy())
    assert isinstance(parsed, Rejection)
    assert parsed.code is ErrorCode.BAD_SIGNATURE


def test_keys_are_references_resolved_at_start_and_never_shown(tmp_path: Path) -> None:
    """env: and file references resolve; a missing one names the key id, not a value; the
    resolved policy's repr hides the key."""
    key_file = tmp_path / "k2.key"
    key_file.write_text(OTHER_KEY + "\n")
    pol = SignaturePolicy.from_config(
        {"k1": "env:REL_KEY", "k2": str(key_file)}, require=True, environ={"REL_KEY": KEY}
    )
    assert KEY not in repr(pol)
    assert OTHER_KEY not in repr(pol)
    with pytest.raises(ConfigError, match=r"control\.keys\.k1: environment variable NOPE"):
        SignaturePolicy.from_config({"k1": "env:NOPE"}, require=True, environ={})
    with pytest.raises(ConfigError, match=r"control\.keys\.k3: key file .* not found"):
        SignaturePolicy.from_config({"k3": str(tmp_path / "missing")}, require=False)
    with pytest.raises(ConfigError, match=r"control\.keys\.k1: key must be 16"):
        SignaturePolicy.from_config({"k1": "env:S"}, require=False, environ={"S": "short"})


def test_config_requires_keys_when_signatures_are_required(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "c.toml",
        {
            "gateway_id": "gw",
            "control": {"enabled": True, "allowlist": ["a"], "require_signature": True},
        },
    )
    with pytest.raises(ConfigError, match=r"control\.keys: required"):
        load_config(path)


@pytest.mark.asyncio
async def test_gateway_with_required_signatures_obeys_only_validly_signed_commands(
    mosquitto: Mosquitto,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the real gateway: unsigned and tampered commands -> bad_signature, no write;
    a signed one is applied; its replay is a duplicate; the key is nowhere in the output,
    the answers or the journal."""
    monkeypatch.setenv("REL_SIGNING_KEY", KEY)
    async with simulators() as bench:
        cfg = bedside(
            bench,
            broker_url=mosquitto.url,
            data_dir=tmp_path / "data",
            control={
                "enabled": True,
                "allowlist": [CLINICIAN],
                "keys": {"k1": "env:REL_SIGNING_KEY"},
                "require_signature": True,
            },
        )
        async with running_gateway(cfg) as gateway, probe(mosquitto.url) as p:
            unsigned = command()
            await p.send("pump-1", unsigned)
            assert (await p.result(unsigned["id"]))["error"]["code"] == "bad_signature"
            tampered = sign(command(), kid="k1", key=KEY.encode())
            tampered["rate"] = {"value": 500.0, "unit": "mL/h"}
            await p.send("pump-1", tampered)
            assert (await p.result(tampered["id"]))["error"]["code"] == "bad_signature"
            assert bench.modbus.pump(1).writes == 0
            assert bench.rate("pump-1") == NE_RATE

            good = sign(command(), kid="k1", key=KEY.encode())
            await p.send("pump-1", good)
            await p.result(good["id"], "applied")
            assert bench.rate("pump-1") == NE_RATE_UP
            await p.send("pump-1", good)
            assert (await p.result(good["id"], "duplicate"))["first"]["phase"] == "applied"
            journal = json.dumps([r.payload for r in await gateway.journal.rows()])
    captured = capsys.readouterr()
    everything = (
        captured.out + captured.err + journal + b"".join(m.payload for m in p.messages).decode()
    )
    assert KEY not in everything
