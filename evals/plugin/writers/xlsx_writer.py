"""summary.xlsx: a workbook that reads well when opened.

- sheet ``run``: the header (model, sha256, status, dates, commit, machine, command, gates) and
  every option;
- sheet ``summary``: one row per benchmark, case (and pooled row ``all``) and metric: value,
  stderr, n, 95% interval, chance level;
- one sheet per benchmark: a row per case (and ``all``), a value / interval / chance column group
  per metric, the counts and rates, the test outcome; beside it a native bar chart of the
  benchmark's first metric per case with its 95% interval as error bars and the chance level as
  a line.

Headers are bold on a dark fill, panes frozen below them, columns sized to their content. Numbers
keep full precision; only their display is set (:func:`number_format`): percentages for values
in [0, 1], three to four significant digits otherwise, scientific for large perplexities, counts
as integers.
"""
from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evals.plugin import display
from evals.plugin.writers.atomic import atomic_path

SUMMARY_HEADER = ["benchmark", "case", "metric", "value", "stderr", "n", "ci95_low", "ci95_high", "chance"]
COUNT_COLUMNS = (("wall_s", "0.0"), ("documents_per_s", "0.00"), ("prompt_tokens_per_s", "#,##0.0"),
                 ("generated_tokens_per_s", "#,##0.0"))
HEADER_FILL = "1B3A5C"
MAX_WIDTH = 60


def number_format(value: Any, kind: str) -> str:
    """The display format of a value of this kind (:func:`evals.plugin.display.metric_kind`)."""
    if kind == "count":
        return "0"
    if kind == "proportion":
        return "0.0%"
    if not isinstance(value, (int, float)) or value != value:
        return "General"
    magnitude = abs(value)
    if kind == "perplexity" and magnitude >= 1e4 or magnitude >= 1e6 or 0 < magnitude < 1e-3:
        return "0.000E+00"
    if magnitude >= 1000:
        return "#,##0"
    if magnitude >= 100:
        return "0.0"
    if magnitude >= 10:
        return "0.00"
    return "0.000"


def _sheet_title(name: str, taken: set[str]) -> str:
    # Excel: at most 31 characters, none of []:*?/\ , unique
    title = "".join("_" if c in "[]:*?/\\" else c for c in name)[:31] or "sheet"
    base, k = title, 2
    while title.lower() in taken:
        title = f"{base[:28]}~{k}"
        k += 1
    taken.add(title.lower())
    return title


def _style_header(sheet, row: int = 1) -> None:
    from openpyxl.styles import Alignment, Font, PatternFill

    for cell in sheet[row]:
        if cell.value is None:
            continue
        cell.font = Font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor=HEADER_FILL)
        cell.alignment = Alignment(vertical="center")


def _fit_widths(sheet) -> None:
    from openpyxl.utils import get_column_letter

    widths: dict[int, int] = {}
    for row in sheet.iter_rows():
        for cell in row:
            if cell.value is None:
                continue
            text = f"{cell.value:.4g}" if isinstance(cell.value, float) else str(cell.value)
            widths[cell.column] = max(widths.get(cell.column, 0), len(text))
    for column, width in widths.items():
        sheet.column_dimensions[get_column_letter(column)].width = min(MAX_WIDTH, width + 2)


def style_sheet(sheet, freeze: str) -> None:
    """A table sheet's finish: the header row styled, panes frozen at ``freeze``, widths fitted."""
    _style_header(sheet)
    sheet.freeze_panes = freeze
    _fit_widths(sheet)


def _text(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False)


def header_sheet(sheet, results: Mapping[str, Any]) -> None:
    from openpyxl.styles import Font

    model, commit = results.get("model") or {}, results.get("commit") or {}
    when, machine = results.get("datetime") or {}, results.get("machine") or {}
    gates = results.get("gates") or {}
    adapters = ", ".join(f"{a.get('path')} ({a.get('kind')})" for a in model.get("adapters") or []) or "none"
    rows = [
        ("model", model.get("name") or model.get("spec")), ("path", model.get("path") or model.get("endpoint")),
        ("sha256", model.get("sha256")), ("adapters", adapters),
        ("backend", f"{model.get('backend')}, {model.get('dtype')} on {model.get('device')}"),
        ("status", results.get("status")), ("date", when.get("start")), ("ended", when.get("end") or when.get("updated")),
        ("commit", commit.get("commit")), ("branch", commit.get("branch")), ("uncommitted changes", commit.get("dirty")),
        ("machine", f"{machine.get('node')}, {machine.get('cpu_count')} CPUs" + (
            f", {', '.join(machine['gpus'])}" if machine.get("gpus") else "")),
        ("command", "pytest " + " ".join(results.get("command") or [])),
        ("gates", f"{gates.get('passed', 0)} passed, {gates.get('failed', 0)} failed, "
                  f"{gates.get('undecided', 0)} undecided"),
    ]
    sheet.append(["rwkveval run", None])
    _style_header(sheet)
    for key, value in rows:
        sheet.append([key, _text(value)])
    sheet.append([])
    sheet.append(["option", "value"])
    _style_header(sheet, sheet.max_row)
    for key, value in sorted((results.get("options") or {}).items()):
        sheet.append([key, _text(value)])
    for cell in sheet["A"]:
        if cell.value is not None and cell.fill.fgColor.rgb != "00" + HEADER_FILL:  # the headers keep their style
            cell.font = Font(bold=True)
    sheet.freeze_panes = "A2"
    _fit_widths(sheet)


def summary_sheet(sheet, benchmarks: Mapping[str, Any]) -> None:
    sheet.append(SUMMARY_HEADER)
    for bench, data in benchmarks.items():
        for case, entry in display.sections(data):
            for metric, m in entry["metrics"].items():
                ci = m.get("ci95") or [None, None]
                sheet.append([bench, case, metric, m["value"], m["stderr"], m["n"], ci[0], ci[1], m.get("chance")])
                kind = display.metric_kind(m)
                row = sheet.max_row
                for column, value in zip("DEGHI", (m["value"], m["stderr"], ci[0], ci[1], m.get("chance"))):
                    sheet[f"{column}{row}"].number_format = number_format(value, kind)
                sheet[f"F{row}"].number_format = "0"
    style_sheet(sheet, "D2")


def benchmark_sheet(sheet, bench: str, data: Mapping[str, Any]) -> None:
    from openpyxl.utils import get_column_letter

    parts = display.sections(data)
    first = next(iter(data["cases"].values()), data["overall"])
    metrics = list(first["metrics"])
    header = ["case", "n"]
    for m in metrics:
        header += [m, f"{m} 95% low", f"{m} 95% high", f"{m} chance"]
    header += [name for name, _ in COUNT_COLUMNS] + ["outcome"]
    sheet.append(header)
    for label, entry in parts:
        row: list[Any] = [label, entry["n"]]
        formats = [None, "0"]
        for name in metrics:
            m = entry["metrics"].get(name) or {}
            ci = m.get("ci95") or [None, None]
            kind = display.metric_kind(m) if m else "number"
            row += [m.get("value"), ci[0], ci[1], m.get("chance")]
            formats += [number_format(v, kind) for v in (m.get("value"), ci[0], ci[1], m.get("chance"))]
        row += [entry.get(name) for name, _ in COUNT_COLUMNS] + [entry.get("outcome")]
        formats += [fmt for _, fmt in COUNT_COLUMNS] + [None]
        sheet.append(row)
        for column, fmt in enumerate(formats, 1):
            if fmt:
                sheet.cell(sheet.max_row, column).number_format = fmt
    style_sheet(sheet, "B2")
    metric = display.primary_metric(first["metrics"])
    if metric is not None:
        chart_column = len(header) + 2
        _chart(sheet, bench, metric, metrics.index(metric), len(parts), display.metric_kind(first["metrics"][metric]),
               f"{get_column_letter(chart_column)}2")


def _chart(sheet, bench: str, metric: str, index: int, rows: int, kind: str, anchor: str) -> None:
    """A horizontal bar per case of ``metric`` (column group ``index``), its interval as error
    bars (distances kept in two hidden columns) and the chance level as a line."""
    from openpyxl.chart import BarChart, LineChart, Reference
    from openpyxl.chart.data_source import NumDataSource, NumRef
    from openpyxl.chart.error_bar import ErrorBars
    from openpyxl.utils import get_column_letter

    value_col = 3 + 4 * index
    last = rows + 1
    plus_col, minus_col = sheet.max_column + 1, sheet.max_column + 2
    for r in range(2, last + 1):
        value, low, high = (sheet.cell(r, value_col + k).value for k in range(3))
        complete = all(isinstance(v, (int, float)) for v in (value, low, high))
        sheet.cell(r, plus_col, high - value if complete else None)
        sheet.cell(r, minus_col, value - low if complete else None)
    for column in (plus_col, minus_col):
        sheet.column_dimensions[get_column_letter(column)].hidden = True

    def ref(column: int) -> str:
        letter = get_column_letter(column)
        return f"'{sheet.title}'!${letter}$2:${letter}${last}"

    bars = BarChart()
    bars.type, bars.style = "bar", 10
    bars.title = f"{bench}: {metric} per case (95% interval)"
    bars.add_data(Reference(sheet, min_col=value_col, min_row=1, max_row=last), titles_from_data=True)
    bars.set_categories(Reference(sheet, min_col=1, min_row=2, max_row=last))
    bars.series[0].errBars = ErrorBars(errBarType="both", errValType="cust", noEndCap=False,
                                       plus=NumDataSource(numRef=NumRef(f=ref(plus_col))),
                                       minus=NumDataSource(numRef=NumRef(f=ref(minus_col))))
    chance = [sheet.cell(r, value_col + 3).value for r in range(2, last + 1)]
    if any(c is not None for c in chance):
        line = LineChart()
        line.add_data(Reference(sheet, min_col=value_col + 3, min_row=1, max_row=last), titles_from_data=True)
        bars += line
    if kind == "proportion":
        bars.y_axis.scaling.min, bars.y_axis.scaling.max = 0, 1
        bars.y_axis.number_format = "0%"
    bars.x_axis.title, bars.y_axis.title = "case", metric
    bars.height = max(7.5, 0.55 * rows + 3)
    bars.width = 18
    sheet.add_chart(bars, anchor)


def write_xlsx(path: Path, results: Mapping[str, Any]) -> Path:
    """``results``: the content of results.json."""
    from openpyxl import Workbook

    book = Workbook()
    header_sheet(book.active, results)
    book.active.title = "run"
    taken = {"run", "summary"}
    summary_sheet(book.create_sheet("summary"), results["benchmarks"])
    for bench, data in results["benchmarks"].items():
        benchmark_sheet(book.create_sheet(_sheet_title(bench, taken)), bench, data)
    save(book, path)
    return path


def save(book, path: Path) -> None:
    """Save an openpyxl workbook atomically. It is built in memory first, so a full disk fails in
    our own write (and is reported as such) rather than inside openpyxl's zip file."""
    buffer = io.BytesIO()
    book.save(buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
