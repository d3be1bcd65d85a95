"""The CQI report as one self-contained HTML page: tables for the pharmacist and PNG charts
embedded as ``data:`` URIs (matplotlib, Agg backend). Nothing is fetched from a network: no
scripts, no fonts, no stylesheets from elsewhere.

The page is drawn from the report's JSON document (what ``--format json`` prints, journal or
hospital): an output edge, so that the page and the JSON always show the same values, formatted
the same way."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from html import escape

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from daemon.base.payload import JsonObject

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 75em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th { background: #eef; } td.text, th.text { text-align: left; }
tr.total td { font-weight: bold; background: #f6f6f6; }
p.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""

_COLUMNS = (
    ("programmings", "Programmings"),
    ("accepted_outright", "Accepted outright"),
    ("confirmations_asked", "Confirmations asked"),
    ("overrides", "Overrides"),
    ("hard_rejections", "Hard rejections"),
    ("catches", "Catches"),
    ("observed_outside_library", "Changed at pump outside library"),
    ("library_compliance", "Library compliance"),
    ("alerts_per_100", "Alerts per 100 programmings"),
    ("library_versions", "Library versions"),
)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _label(row: JsonObject) -> str:
    return f"{row['drug']}\n{row['profile']}"


def _outcomes_chart(rows: list[JsonObject]) -> str:
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    labels = [_label(r) for r in rows]
    left = [0.0] * len(rows)
    for key, name, colour in (
        ("accepted_outright", "accepted outright", "#4c9f70"),
        ("confirmations_asked", "confirmation asked", "#e0a030"),
        ("hard_rejections", "hard rejection", "#c8453a"),
    ):
        values = [float(r[key]) for r in rows]
        ax.barh(labels, values, left=left, label=name, color=colour)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("programmings")
    ax.set_title("Verdicts per drug and profile")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    return _png(fig)


def _compliance_chart(rows: list[JsonObject]) -> str:
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    labels = [_label(r) for r in rows]
    values = [100 * (r["library_compliance"] or 0.0) for r in rows]
    ax.barh(labels, values, color="#3d6fb6")
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of rate changes made through the drug library")
    ax.set_title("Library compliance")
    ax.invert_yaxis()
    return _png(fig)


def _daily_chart(daily: list[JsonObject]) -> str:
    fig, ax = plt.subplots(figsize=(8, 3))
    days = [d["date"] for d in daily]
    ax.plot(days, [d.get("programmings", 0) for d in daily], marker="o", label="programmings")
    ax.plot(days, [d.get("alerts", 0) for d in daily], marker="o", label="alerts")
    ax.plot(
        days,
        [d.get("rate_changes_at_pump", 0) for d in daily],
        marker="o",
        label="changes at the pump",
    )
    ax.set_title("Per day")
    ax.legend()
    if len(days) > 10:
        ax.set_xticks(days[:: max(1, len(days) // 10)])
    fig.autofmt_xdate()
    return _png(fig)


def _cell(value: object, key: str) -> str:
    if value is None:
        return "—"
    if key == "library_compliance" and isinstance(value, int | float):
        return f"{100 * value:.1f} %"
    if key == "library_versions" and isinstance(value, list):
        return escape(", ".join(value))
    return escape(str(value))


def _summary_table(summary: list[JsonObject], table_id: str = "summary") -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in _COLUMNS)
    first = (
        f'<table id="{escape(table_id)}"><tr><th class="text">Drug</th>'
        '<th class="text">Profile</th>'
    )
    lines = [f"{first}{head}</tr>"]
    for row in summary:
        total = ' class="total"' if row["drug"] == "(all)" else ""
        cells = "".join(f"<td>{_cell(row[key], key)}</td>" for key, _ in _COLUMNS)
        lines.append(
            f'<tr{total}><td class="text">{escape(row["drug"])}</td>'
            f'<td class="text">{escape(row["profile"])}</td>{cells}</tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)


def _list_table(items: list[JsonObject], columns: list[tuple[str, str]], empty: str) -> str:
    if not items:
        return f'<p class="note">{escape(empty)}</p>'
    head = "".join(f'<th class="text">{escape(t)}</th>' for _, t in columns)
    rows = []
    for item in items:
        cells = []
        for key, _ in columns:
            value = item.get(key)
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            elif isinstance(value, dict):  # a rate or dose {"unit", "value"}: "45.0 mL/h"
                value = f"{value.get('value')} {value.get('unit')}"
            cells.append(f'<td class="text">{escape("" if value is None else str(value))}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _gateways(report: JsonObject) -> list[str]:
    """Per gateway (a hospital report): its period, rows read and summary table."""
    parts = []
    for gw in report.get("gateways") or ():
        period = f"{gw['first_row'] or '—'} to {gw['last_row'] or '—'}"
        parts.append(f"<h3>Gateway {escape(gw['gateway'])}</h3>")
        parts.append(f'<p class="note">{escape(period)} ({gw["rows_read"]} rows read).</p>')
        parts.append(_summary_table(gw["summary"], table_id=f"summary-{gw['gateway']}"))
    return ["<h2>Per gateway</h2>", *parts] if parts else []


def _with_gateway(report: JsonObject, columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("gateway", "Gateway"), *columns] if "gateways" in report else columns


def render_html(report: JsonObject) -> str:
    """The whole page for a report document (:meth:`Report.to_json`, or a hospital's with
    ``gateways``: then a table per gateway and a gateway column in every list)."""
    summary: list[JsonObject] = report["summary"]
    per_key = [r for r in summary if r["drug"] != "(all)"]
    charts = []
    if per_key:
        charts.append(_img(_outcomes_chart(per_key), "Verdicts per drug and profile"))
        charts.append(_img(_compliance_chart(per_key), "Library compliance per drug and profile"))
    if report["daily"]:
        charts.append(_img(_daily_chart(report["daily"]), "Programmings and alerts per day"))
    start = report["from"] or report["first_row"] or "—"
    period = f"{start} to {report['to'] or report['last_row'] or '—'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>infusiond CQI report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Drug library CQI report</h1>",
        (
            f"<p>Period: {escape(period)}. Generated {escape(report['generated_at'])} from "
            f"{escape(report['journal'])} ({report['rows_read']} rows read).</p>"
        ),
        (
            '<p class="note">A programming is a command the drug library judged. A catch is a '
            "hard rejection followed within "
            f"{report['catch_window_min']:g} minutes by an accepted programming of the same "
            "pump. Library compliance is the share of rate changes made through the gateway "
            "rather than at the pump. Alerts are confirmations asked plus hard rejections.</p>"
        ),
        "<h2>Summary per drug and profile</h2>",
        _summary_table(summary),
        *_gateways(report),
        "<h2>Charts</h2>",
        *charts,
        "<h2>Overrides</h2>",
        _list_table(
            report["overrides"],
            _with_gateway(
                report,
                [
                    ("ts", "Time"),
                    ("pump_id", "Pump"),
                    ("drug", "Drug"),
                    ("profile", "Profile"),
                    ("clinician", "Clinician"),
                    ("rules", "Rules"),
                    ("reason", "Reason given"),
                ],
            ),
            "No overrides in this period.",
        ),
        "<h2>Catches</h2>",
        _list_table(
            report["catches"],
            _with_gateway(
                report,
                [
                    ("pump_id", "Pump"),
                    ("drug", "Drug"),
                    ("rejected_at", "Rejected at"),
                    ("accepted_at", "Accepted at"),
                    ("minutes", "Minutes"),
                ],
            ),
            "No catches in this period.",
        ),
        "<h2>Changes at the pump outside the library</h2>",
        _list_table(
            report["observed_outside_library"],
            _with_gateway(
                report,
                [
                    ("ts", "Time"),
                    ("pump_id", "Pump"),
                    ("drug", "Drug"),
                    ("profile", "Profile"),
                    ("rules", "Rules"),
                    ("rate", "Rate"),
                    ("dose", "Dose"),
                ],
            ),
            "None in this period.",
        ),
        "<h2>Library changes</h2>",
        _list_table(
            [
                {**c, "from": _ident(c.get("from")), "to": _ident(c.get("to"))}
                for c in report["library_changes"]
            ],
            [("ts", "Time"), ("from", "From"), ("to", "To"), ("via", "Via"), ("by", "By")],
            "The library did not change in this period.",
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _ident(lib: object) -> str:
    if not isinstance(lib, Mapping):
        return ""
    return f"{lib.get('name')} {lib.get('version')} ({str(lib.get('sha256'))[:12]})"
