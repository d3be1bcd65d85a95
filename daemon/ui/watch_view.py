"""What ``infusiond watch`` draws: one frame of a :class:`~daemon.ui.watch.WatchModel` at a width.

Pure (model, ``now`` and the terminal width in; a rich renderable out). Rules a bedside display
must keep at every width:

- a dose is shown with its full unit or not at all; a pump id is never shortened. At a narrow
  width whole columns are left out (drug first, then conn, then rate); pump, state, dose and
  alarms always stay, and when even they do not fit each pump becomes a block of lines;
- while a gateway is not ``online`` its pumps are what it last said, not live: their state reads
  ``(stale)``, dimmed, and a line says when that was (``last known 12:01:03Z, 3 min ago``);
- numbers are rounded for people (:mod:`daemon.ui.display`), units as on a drug label.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from daemon.base.quantities import Quantity
from daemon.base.timefmt import human_age, parse_ts
from daemon.ui.display import human_quantity, quantity_text
from daemon.ui.watch_state import BedView, PumpView, Reading

if TYPE_CHECKING:
    from daemon.ui.watch import WatchModel

MAP_RANGE = (65.0, 85.0)
GAP = 2  # spaces between columns
#: optional pump columns, the first left out first when the terminal is narrow
DROP_ORDER = ("drug", "conn", "rate")
PUMP_COLUMNS = ("pump", "conn", "state", "drug", "dose", "rate", "alarms")


def _qty(value: Quantity | None, decimals: int | None = None) -> str:
    return "-" if value is None else quantity_text(value, decimals=decimals)


def event_line(gateway: str, pump: str, data: Mapping[str, object], ts: str) -> str:
    """``12:00:09 demo/pump-1 rate_changed 52.5 mL/h -> 63 mL/h (0.06 ug/kg/min)``: a line
    made once from the event's ``data`` as received (the recent lines keep only text)."""
    kind = str(data.get("type", "?"))
    detail = ""
    if kind == "rate_changed":
        old, new = data.get("from"), data.get("to")
        if isinstance(old, dict) and isinstance(new, dict):
            before, after = human_quantity(old.get("rate")), human_quantity(new.get("rate"))
            detail = f"{before or '-'} -> {after or '-'}"
            dose = human_quantity(new.get("dose"))
            detail += f" ({dose})" if dose else ""
    elif kind.startswith("alarm"):
        alarm = data.get("alarm")
        code = alarm.get("code") if isinstance(alarm, dict) else data.get("code")
        detail = str(code or "")
    elif kind == "connection_changed":
        detail = str(data.get("connection", ""))
    elif kind == "command_rejected":
        detail = str(data.get("command_id", ""))
    return f"{ts} {gateway}/{pump} {kind} {detail}".rstrip()


def result_line(gateway: str, pump: str, data: Mapping[str, object], ts: str) -> str:
    """``12:00:09 demo/pump-1 command c-2 rejected HARD_MAX``, from a result's ``data``."""
    phase = str(data.get("phase", "?"))
    error = data.get("error")
    why = f" {error.get('code', '')}" if isinstance(error, dict) else ""
    verdict = data.get("verdict")
    if isinstance(verdict, dict) and phase == "rejected":
        findings = verdict.get("findings", [])
        listed = findings if isinstance(findings, list) else []
        rules = [f.get("rule", "?") for f in listed if isinstance(f, dict)]
        why += " " + ",".join(str(r) for r in rules[:3])
    return f"{ts} {gateway}/{pump} command {data.get('id')} {phase}{why}".rstrip()


def _age(bed: BedView, now: datetime) -> str:
    newest = bed.newest()
    if newest is None:
        return "-"
    seconds = max(0, int((now - newest).total_seconds()))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _vital(reading: Reading | None, *, is_map: bool = False) -> Text:
    if reading is None or reading.value is None:
        return Text("-", style="dim")
    text = Text(f"{reading.value:g}")
    if reading.stale:
        text.stylize("red")
        text.append("!", style="bold red")
    elif is_map and not MAP_RANGE[0] <= reading.value <= MAP_RANGE[1]:
        text.stylize("bold yellow")
    return text


def _name(model: WatchModel, gateway: str, ident: str) -> str:
    return ident if len(model.gateways) <= 1 else f"{gateway}/{ident}"


def _live(model: WatchModel, gateway: str) -> bool:
    view = model.gateways.get(gateway)
    return view is not None and view.state == "online"


def _pump_cells(model: WatchModel, gateway: str, pump: str, view: PumpView) -> dict[str, Text]:
    codes = view.alarms
    conn, status = view.connection, view.status
    # the state column says what is known even when the conn column is left out
    if not _live(model, gateway):
        state = Text(f"{status} (stale)", style="dim")
        conn_cell = Text("?", style="dim")
    elif conn != "online":
        state = Text(f"{conn}, was {status}", style="red")
        conn_cell = Text(conn, style="red")
    else:
        state = Text(status)
        conn_cell = Text(conn, style="green")
    return {
        "pump": Text(_name(model, gateway, pump)),
        "conn": conn_cell,
        "state": state,
        "drug": Text(view.drug or "-"),
        "dose": Text(_qty(view.dose)),
        "rate": Text(_qty(view.rate, 2)),
        "alarms": Text(", ".join(codes) or "-", style="bold red" if codes else "dim"),
    }


def _fit(rows: list[dict[str, Text]], width: int) -> list[str] | None:
    """The pump columns that fit ``width`` whole (pump, state, dose, alarms always); None
    when even those do not fit (each pump is then drawn as a block of lines)."""
    chosen = list(PUMP_COLUMNS)

    def need(columns: list[str]) -> int:
        widths = [max([len(name)] + [r[name].cell_len for r in rows]) for name in columns]
        return sum(widths) + GAP * len(columns)  # the table pads after each column

    for optional in DROP_ORDER:
        if need(chosen) <= width:
            break
        chosen.remove(optional)
    return chosen if need(chosen) <= width else None


def _pump_blocks(rows: list[dict[str, Text]]) -> Group:
    """Narrow terminals: ``id  state`` then indented ``dose  rate`` and ``alarms: ...``, each
    line wrapping at spaces (a quantity keeps its unit on its line)."""
    lines: list[RenderableType] = []
    for row in rows:
        lines.append(Text.assemble(row["pump"], "  ", row["state"], overflow="fold"))
        lines.append(Text.assemble("  ", row["dose"], "  ", row["rate"], overflow="fold"))
        if row["alarms"].plain != "-":
            lines.append(Text.assemble("  alarms: ", row["alarms"], overflow="fold"))
    return Group(*lines)


def _pump_table(model: WatchModel, width: int) -> RenderableType:
    rows = [
        _pump_cells(model, gateway, pump, view)
        for (gateway, pump), view in sorted(model.pumps.items())
    ]
    columns = _fit(rows, width)
    if columns is None:
        return _pump_blocks(rows)
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, GAP, 0, 0))
    for name in columns:
        table.add_column(name, no_wrap=True)  # fits: _fit measured every cell
    for row in rows:
        table.add_row(*(row[name] for name in columns))
    return table


def _stale_note(model: WatchModel, now: datetime) -> Text | None:
    """``last known 12:01:03Z (3 min ago): gateway demo is offline`` for non-live gateways."""
    notes: list[str] = []
    for gateway, view in sorted(model.gateways.items()):
        times = [ts for (gw, _), ts in model.seen_at.items() if gw == gateway]
        if view.state == "online" or not times:
            continue
        newest = max(times)
        try:
            ago = human_age((now - parse_ts(newest)).total_seconds())
        except ValueError:
            ago = "time unknown"
        notes.append(
            f"gateway {gateway} is {view.state}: pumps show the last known state, "
            f"{newest[11:19]}Z ({ago})"
        )
    return Text("\n".join(notes), style="bold yellow") if notes else None


def render(model: WatchModel, now: datetime, broker: str = "", width: int = 80) -> RenderableType:
    """One frame: header, pumps, beds, recent events, for a terminal ``width`` columns wide."""
    header = Text("infusiond watch", style="bold")
    for name, gw in sorted(model.gateways.items()):
        style = "green" if gw.state == "online" else "red"
        header.append(f"  {name} ")
        header.append(gw.state, style=style)
        if gw.seq is not None:
            header.append(f" seq {gw.seq}", style="dim")
    if not model.gateways:
        header.append(f"  waiting for infusiond/... on {broker or 'the broker'}", style="dim")
    header.append(f"  {now.astimezone(UTC):%H:%M:%S}Z", style="dim")

    beds = Table(box=None, pad_edge=False, header_style="bold")
    source_width = max(6, min(24, width - 48))
    for column, col_width in (
        ("bed", None), ("MAP", 5), ("SBP", 5), ("DBP", 5), ("HR", 5), ("SpO2", 5), ("age", 5),
        ("source", source_width),
    ):  # fmt: skip
        beds.add_column(column, max_width=col_width, no_wrap=True, overflow="ellipsis")
    for (gateway, bed), view in sorted(model.beds.items()):
        beds.add_row(
            _name(model, gateway, bed),
            _vital(view.map, is_map=True),
            _vital(view.sbp),
            _vital(view.dbp),
            _vital(view.hr),
            _vital(view.spo2),
            _age(view, now),
            view.source or "-",
        )

    parts: list[RenderableType] = [header, Text("")]
    parts += [_pump_table(model, width)] if model.pumps else [Text("no pumps yet", style="dim")]
    note = _stale_note(model, now)
    if note is not None:
        parts.append(note)
    parts += [Text("")]
    parts += [beds] if model.beds else [Text("no beds yet", style="dim")]
    if model.events:
        parts += [Text(""), Text("recent", style="bold")]
        # the whole terminal width; a longer line wraps (at spaces) rather than cut a unit
        parts += [Text(line, overflow="fold") for line in model.events]
    if model.problems:
        problem = f"{model.problems} bad message(s); last: {model.last_problem}"
        parts.append(Text(problem[: width - 1], style="yellow"))
    return Group(*parts)
