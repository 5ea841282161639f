"""summary.xlsx: an aggregate sheet (benchmark, case, metric, value, stderr, n, 95% CI) and one
sheet per benchmark with a row per case and a column per metric."""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evals.plugin.writers.atomic import atomic_path

SUMMARY_HEADER = ["benchmark", "case", "metric", "value", "stderr", "n", "ci95_low", "ci95_high"]


def _sheet_title(name: str, taken: set[str]) -> str:
    # Excel: at most 31 characters, none of []:*?/\ , unique
    title = "".join("_" if c in "[]:*?/\\" else c for c in name)[:31] or "sheet"
    base, k = title, 2
    while title.lower() in taken:
        title = f"{base[:28]}~{k}"
        k += 1
    taken.add(title.lower())
    return title


def write_xlsx(path: Path, benchmarks: Mapping[str, Mapping[str, Any]]) -> Path:
    """``benchmarks``: name -> {"cases": {case: {"metrics": {...}, ...}}, "overall": {...}}."""
    from openpyxl import Workbook

    book = Workbook()
    summary = book.active
    summary.title = "summary"
    summary.append(SUMMARY_HEADER)
    taken = {"summary"}
    for bench, data in benchmarks.items():
        sections = list(data["cases"].items())
        if data.get("overall"):
            sections.append(("all", data["overall"]))
        for case, entry in sections:
            for metric, m in entry["metrics"].items():
                ci = m.get("ci95") or [None, None]
                summary.append([bench, case, metric, m["value"], m["stderr"], m["n"], ci[0], ci[1]])
        sheet = book.create_sheet(_sheet_title(bench, taken))
        metrics = list(next(iter(data["cases"].values()))["metrics"]) if data["cases"] else []
        sheet.append(["case", "n"] + [c for m in metrics for c in (m, f"{m}_stderr")]
                     + ["wall_s", "samples_per_s", "tokens_per_s", "outcome"])
        for case, entry in data["cases"].items():
            values = [v for m in metrics for v in (entry["metrics"][m]["value"], entry["metrics"][m]["stderr"])]
            sheet.append([case, entry["n"]] + values + [entry.get("wall_s"), entry.get("samples_per_s"),
                                                         entry.get("tokens_per_s"), entry.get("outcome")])
    save(book, path)
    return path


def save(book, path: Path) -> None:
    """Save an openpyxl workbook atomically. It is built in memory first, so a full disk fails in
    our own write (and is reported as such) rather than inside openpyxl's zip file."""
    buffer = io.BytesIO()
    book.save(buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
