"""Generate docs/configuration.md from the pydantic models in daemon/config.py.

Usage::

    .venv/bin/python scripts/gen_config_reference.py            # rewrite docs/configuration.md
    .venv/bin/python scripts/gen_config_reference.py --check    # exit 1 if it is out of date
    .venv/bin/python scripts/gen_config_reference.py --missing  # list keys without a description

Types, defaults and declarative constraints (ranges, lengths, patterns, choices) come from the
models themselves (their JSON Schema and field defaults). Descriptions come from each field's
``Field(description=...)``; where daemon/config.py has none yet, :data:`FALLBACK` below supplies
one (``--missing`` lists them, so they can move into the model). Rules enforced by validators
(URL schemes, keys that go together) are not visible in a schema and are written in
:data:`RULES`, next to the validator they describe.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.config import ENV_NESTED, ENV_PREFIX, Config  # noqa: E402 - needs sys.path

OUTPUT = ROOT / "docs" / "configuration.md"

# Descriptions for fields that have no Field(description=...) in daemon/config.py yet.
FALLBACK: dict[str, str] = {
    "gateway_id": "This gateway's id: the second level of every topic (`infusiond/<gateway_id>/`).",
    "data_dir": "Directory of the journal (`journal.sqlite3`: journal, outbox, command ids).",
    "library": "Drug library TOML file; without it the shipped example library is used.",
    "log_level": "Minimum level of the JSON log lines written to stdout.",
    "broker.url": "Broker address: `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883).",
    "broker.username": "MQTT user name.",
    "broker.password": "MQTT password; give it through the environment, not the file.",
    "broker.tls": "TLS files for `mqtts://` (section below); system CAs when absent.",
    "broker.keepalive_s": "MQTT keep-alive, seconds.",
    "broker.client_id": "MQTT client id; default `infusiond-<gateway_id>`.",
    "broker.tls.ca_file": "CA bundle that signed the broker's certificate (existing file).",
    "broker.tls.cert_file": "Client certificate for mutual TLS (existing file).",
    "broker.tls.key_file": "Private key of `cert_file` (existing file).",
    "control.enabled": "Accept remote commands at all; when false every command is refused "
    "with `control_disabled`.",
    "control.allowlist": "Ids allowed to command when control is enabled; commands from "
    "others are refused with `not_authorized`.",
    "vitals[].listen": "MLLP listener the monitor (gateway) connects to: `mllp://host:port` "
    "or `tcp://host:port`.",
    "vitals[].connect": "MLLP server to dial instead: `mllp://host:port` or `tcp://host:port`.",
    "vitals[].bed": "Bed id: the topic level of `vitals/<bed>/state`.",
    "vitals[].stale_after_s": 'A value older than this is published with `"stale": true`.',
    "vitals[].publish_every_s": "Republish `vitals/<bed>/state` at least this often, seconds.",
    "pumps[].id": "Pump id: the topic level of `pump/<id>/...`.",
    "pumps[].driver": "Wire protocol: `modbus` (TCP or RTU), `newera` (RS-232) or `phd` "
    "(Harvard Apparatus PHD ULTRA pump chain, RS-232/USB).",
    "pumps[].url": "Transport: `tcp://host:port` (Modbus TCP), `socket://host:port` (New Era "
    "or PHD ULTRA over TCP), or a serial device path such as `/dev/ttyUSB0`.",
    "pumps[].unit_id": "Modbus unit id (modbus only); default 1.",
    "pumps[].address": "Pump address on the RS-232 chain (newera and phd); default 0.",
    "pumps[].baudrate": "Serial baud rate (serial paths only); default 19200 (newera), "
    "9600 (phd): it must match the pump's setting.",
    "pumps[].syringe_diameter_mm": "Inside diameter of the loaded syringe (phd only, "
    "required): the rate range follows from it, and the gateway refuses a pump whose own "
    "`diameter` differs.",
    "pumps[].map": "Register-map profile (modbus only); default `generic-pump-v1`.",
    "pumps[].poll_period_s": "Seconds between two polls of the pump.",
    "pumps[].publish_every_s": "Republish `pump/<id>/state` at least this often, seconds.",
    "pumps[].bed": "Bed whose vitals feed this pump's rules (MAP/SBP rules need it).",
    "pumps[].drug": "Drug in the syringe or bag, as named in the drug library.",
    "pumps[].concentration": 'Concentration, e.g. `{ value = 4, unit = "ug/mL" }`.',
    "pumps[].diluent": "Diluent, e.g. `D5W` (checked against the library's allowed/forbidden).",
    "pumps[].route": "`central` or `peripheral` (checked against the route's maximum "
    "concentration).",
    "pumps[].line_shares": "Other solutions sharing the line (e.g. `sodium-bicarbonate`), for "
    "`INCOMPATIBLE_LINE`.",
    "pumps[].library_profile": "Library profile (care area), e.g. `adult-icu`.",
    "pumps[].weight_kg": "Patient weight; required for weight-based doses (`ug/kg/min`).",
    "pumps[].baseline_sbp": "Patient's baseline systolic pressure, for `SBP_CEILING`.",
    "pumps[].chronic_hypertension": "Raises the MAP floor of `MAP_BELOW_TARGET` (65 -> 70).",
    "pumps[].watchdog_s": "Arm the pump's own communication watchdog, seconds (Modbus "
    "`comm_timeout_s`, New Era safe mode `SAF<n>`): the pump stops if the gateway falls silent.",
    "pumps[].concentration.value": "Amount per mL.",
    "pumps[].concentration.unit": "UCUM unit or accepted alias, e.g. `ug/mL`, `[USP'U]/mL`.",
}

# Rules checked by model validators in daemon/config.py (not expressible in a JSON Schema).
RULES: dict[str, str] = {
    "broker.url": "scheme `mqtt` or `mqtts`; no path or query",
    "broker.username": "required when `password` is set",
    "broker.tls": "only with an `mqtts://` url",
    "broker.tls.cert_file": "`cert_file` and `key_file` go together",
    "control.allowlist": "must not be empty when `enabled = true`",
    "vitals[].listen": "exactly one of `listen` or `connect`",
    "vitals[].bed": "unique among `[[vitals]]`",
    "pumps[].id": "unique among `[[pumps]]`",
    "pumps[].url": "modbus: `tcp://` or a path; newera, phd: `socket://` or a path",
    "pumps[].unit_id": "modbus only",
    "pumps[].address": "newera and phd only",
    "pumps[].syringe_diameter_mm": "required for phd, only for phd",
    "pumps[].watchdog_s": "not for phd (no device watchdog)",
    "pumps[].map": "modbus only",
}


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return dict(defs[ref.rsplit("/", 1)[1]])
    return schema


def _split_optional(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the non-null alternative, whether null is allowed)."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1 and len(rest) < len(options):
            return rest[0], True
    return schema, False


def _type_name(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return "table"
    if "enum" in schema:
        return "string"
    kind = schema.get("type")
    if kind == "array":
        item = _resolve(schema.get("items", {}), defs)
        return "array of tables" if "properties" in item else f"array of {_type_name(item, defs)}"
    fmt = schema.get("format")
    if fmt == "file-path":
        return "path (existing file)"
    if fmt == "path":
        return "path"
    if fmt == "password":
        return "string (secret)"
    names = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    return names.get(str(kind), str(kind))


def _constraints(schema: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "enum" in schema:
        out.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    low = (">=", schema["minimum"]) if "minimum" in schema else None
    if "exclusiveMinimum" in schema:
        low = (">", schema["exclusiveMinimum"])
    high = ("<=", schema["maximum"]) if "maximum" in schema else None
    if "exclusiveMaximum" in schema:
        high = ("<", schema["exclusiveMaximum"])
    out.extend(f"{b[0]} {_number(b[1])}" for b in (low, high) if b is not None)
    if "minLength" in schema or "maxLength" in schema:
        out.append(f"length {schema.get('minLength', 0)}..{schema.get('maxLength', '')}")
    if "pattern" in schema:
        out.append(f"pattern `{schema['pattern']}`")
    if schema.get("type") == "array":
        item = schema.get("items", {})
        inner = _constraints(item) if isinstance(item, dict) else []
        out.extend(f"items: {c}" for c in inner)
    return out


#: how TOML shows the empty value of a container default (`{}`, not "dict() -> new ...")
_EMPTY: dict[object, str] = {list: "[]", tuple: "[]", set: "[]", frozenset: "[]", dict: "{}"}


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    factory = info.default_factory
    if factory is not None:
        if factory in _EMPTY:
            return f"`{_EMPTY[factory]}`"
        if inspect.isclass(factory) and issubclass(factory, BaseModel):
            return "(section defaults)"
        doc = inspect.getdoc(factory) or factory.__name__
        return _markdown(doc.splitlines()[0].rstrip("."))
    value = info.default
    if value is None:
        return "none"
    return f"`{json.dumps(value)}`"


def _env(path: list[str], in_list: str | None) -> str:
    if in_list is not None:
        return f"inside `{in_list}` (JSON)"
    return "`" + (ENV_PREFIX + ENV_NESTED.join(path)).upper() + "`"


class _Doc:
    """Collects the sections of the reference and the keys that lack a description."""

    def __init__(self) -> None:
        self.sections: list[str] = []
        self.missing: list[str] = []

    def model(
        self,
        model: type[BaseModel],
        path: list[str],
        heading: str,
        in_list: str | None,
        defs: dict[str, Any],
    ) -> None:
        schema = model.model_json_schema()
        props: dict[str, Any] = schema.get("properties", {})
        local_defs = {**defs, **schema.get("$defs", {})}
        lines = [f"## `{heading}`", ""]
        doc = _own_doc(model)
        if doc:
            lines += [doc, ""]
        if in_list is not None and not path:
            lines += [f"Environment: the whole list as JSON in `{in_list}`.", ""]
        lines += [
            "| key | type | default | constraints | environment | description |",
            "|---|---|---|---|---|---|",
        ]
        nested: list[tuple[type[BaseModel], str, bool]] = []
        for name, info in model.model_fields.items():
            field_schema, optional = _split_optional(props[name])
            key = f"{heading}.{name}" if heading != "top level" else name
            target = _resolve(field_schema, local_defs)
            type_name = _type_name(field_schema, local_defs)
            sub = _sub_model(info)
            if sub is not None:
                nested.append((sub, key, type_name == "array of tables"))
            rules = _constraints(target)
            if optional:
                rules.append("may be omitted")
            if key in RULES:
                rules.append(RULES[key])
            description = info.description
            if not description:
                self.missing.append(key)
                description = FALLBACK.get(key, "") or (_own_doc(sub) if sub else "")
            env = _env([*path, name], in_list)
            lines.append(
                f"| `{name}` | {type_name} | {_default(info)} | {'; '.join(rules)} | {env} "
                f"| {_cell(description)} |"
            )
        self.sections.append("\n".join(lines) + "\n")
        for sub, key, is_list in nested:
            if is_list:
                list_env = (ENV_PREFIX + ENV_NESTED.join([*path, key.rsplit(".", 1)[-1]])).upper()
                self.model(sub, [], f"{key}[]", in_list or list_env, local_defs)
            else:
                self.model(sub, [*path, key.rsplit(".", 1)[-1]], key, in_list, local_defs)


def _cell(text: str) -> str:
    return _markdown(" ".join(text.split())).replace("|", "\\|")


def _markdown(text: str) -> str:
    """reST inline literals (double backticks) as Markdown ones."""
    return text.replace("``", "`")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _own_doc(model: type[BaseModel] | None) -> str:
    """The first line of the model's own docstring (not one inherited from BaseModel)."""
    if model is None or not model.__dict__.get("__doc__"):
        return ""
    return _markdown((inspect.getdoc(model) or "").splitlines()[0])


def _sub_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model a field holds (directly, optionally, or as list items), if any."""
    stack: list[Any] = [info.annotation]
    while stack:
        ann = stack.pop()
        if inspect.isclass(ann) and issubclass(ann, BaseModel):
            return ann
        stack.extend(getattr(ann, "__args__", ()))
    return None


def render() -> tuple[str, list[str]]:
    """The Markdown text and the keys whose description came from FALLBACK (or nowhere)."""
    doc = _Doc()
    doc.model(Config, [], "top level", None, {})
    head = (
        "# Configuration reference\n\n"
        "<!-- Generated by scripts/gen_config_reference.py from daemon/config.py; "
        "do not edit by hand. -->\n\n"
        "`infusiond run --config PATH` reads one TOML file (example: "
        "[`systemd/infusiond.example.toml`](../systemd/infusiond.example.toml)). Every key can "
        f"be overridden by an environment variable `{ENV_PREFIX}<KEY>`; nested keys are joined "
        f"by `{ENV_NESTED}` (`{ENV_PREFIX}BROKER{ENV_NESTED}URL=mqtts://broker:8883`), lists "
        f"take JSON (`{ENV_PREFIX}CONTROL{ENV_NESTED}ALLOWLIST='[\"dr-a\"]'`), and the "
        "environment wins over the file. Names are case-insensitive. Unknown keys are errors, "
        "and an invalid value stops the daemon at start with a message that names the key (and "
        "the environment variable, when the value came from one).\n\n"
        "Sections below: the top level, then each table in the order it appears. "
        "`[[vitals]]` and `[[pumps]]` are arrays of tables: repeat them, one per bed or pump.\n\n"
    )
    return head + "\n".join(doc.sections), doc.missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    mode.add_argument("--missing", action="store_true", help="list keys without a description")
    args = parser.parse_args(argv)
    text, missing = render()
    if args.missing:
        sys.stdout.write("".join(f"{key}\n" for key in missing))
        return 0
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT} is out of date: run {Path(__file__).name}\n")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
