"""report.html (and the pages of ``rwkveval compare``): Jinja2 templates rendered into one
self-contained HTML file, written atomically.

The templates live in ``evals/plugin/writers/templates/`` (package data); the charts are inline
SVG from :mod:`evals.plugin.writers.charts`, so a page needs no script and no network when it is
viewed. Numbers are formatted by :mod:`evals.plugin.display`, the same rules as the terminal's.

``report.html`` shows the run's header (model, sha256, adapters, options, commit, machine,
status), then per benchmark: a chart of each case's score with its 95% interval and chance level,
the gates and their outcomes, the table of every metric, and the first sample rows of each case
(prompts and outputs folded when long) with a link to its ``samples/*.jsonl``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evals.plugin import display
from evals.plugin.writers.atomic import atomic_path

SHOWN_ROWS = 3  # sample rows rendered per case (the rest are in samples/*.jsonl)
FOLD_CHARS = 400  # longer texts are folded into a <details>
ROW_FIELDS = ("doc_id", "target", "extracted", "extracted_by", "output", "finish_reason", "n_options")


def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("evals.plugin.writers", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(value=display.fmt_value, interval=display.fmt_interval, chance=display.fmt_chance,
                       p=display.fmt_p, short=lambda text, n=12: str(text)[:n] if text else display.NONE)
    env.globals.update(fmt=display.fmt_number, diff=display.fmt_diff)
    return env


def render(template: str, context: Mapping[str, Any]) -> str:
    return environment().get_template(template).render(**context)


def write_html(path: Path, template: str, context: Mapping[str, Any]) -> Path:
    text = render(template, context)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def dom_id(*parts: str) -> str:
    """An id usable in HTML and SVG (and CSS selectors) from names such as ``mmlu_pro``."""
    from evals.plugin.report import safe_name

    return "-".join(safe_name(p) for p in parts)


def text_block(text: Any) -> dict[str, Any]:
    """A text to show: folded when long."""
    text = text if isinstance(text, str) else repr(text)
    return {"text": text, "folded": len(text) > FOLD_CHARS, "chars": len(text)}


def sample_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """One sample row as the page shows it: the short fields, the scores, the prompt and output."""
    import json

    fields = {k: row[k] for k in ROW_FIELDS if k in row and k != "output"}
    other = {k: v for k, v in row.items() if k not in (*ROW_FIELDS, "prompt", "prompt_sha256", "scores")}
    return {"fields": {k: json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v for k, v in fields.items()},
            "scores": row.get("scores", {}),
            "prompt": text_block(row["prompt"]) if "prompt" in row else None,
            "prompt_sha256": row.get("prompt_sha256"),
            "output": text_block(row["output"]) if "output" in row else None,
            "other": json.dumps(other, ensure_ascii=False, indent=1) if other else None}


def benchmark_view(name: str, data: Mapping[str, Any], outcomes: Sequence[Mapping[str, Any]],
                   samples: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    from evals.plugin.writers.charts import Bar, case_chart

    parts = display.sections(data)
    first = next(iter(data["cases"].values()), data["overall"])
    metric = display.primary_metric(first["metrics"])
    chart_id = dom_id("chart", name)
    bars = []
    for label, entry in parts:
        m = entry["metrics"].get(metric)
        if m is not None:
            bars.append(Bar(label, m["value"], tuple(m["ci95"]) if m.get("ci95") else None, m.get("chance"),
                            pooled=entry is data["overall"]))
    kind = display.metric_kind(first["metrics"][metric]) if metric else "number"
    chart = case_chart(chart_id, metric, bars, kind == "proportion") if bars else None
    rows = []
    for label, entry in parts:
        for metric_name, m in entry["metrics"].items():
            rows.append({"case": label, "metric": metric_name, "m": m, "n": int(m["n"]),
                         "gate": display.gate_status(data, entry, metric_name), "pooled": entry is data["overall"]})
    protocol = data.get("protocol") or {}
    return {
        "name": name, "id": dom_id("bench", name), "chart_id": chart_id, "chart": chart, "metric": metric,
        "bars": len(bars), "rows": rows,
        "protocol": {k: protocol[k] for k in ("name", "num_fewshot", "context_starts_with_token0", "template")
                     if k in protocol},
        "data": data.get("data") or [],
        "gates": [g for g in outcomes if g["benchmark"] == name],
        "undecided": data["overall"].get("undecided", []),
        "missing": data["overall"].get("missing", []),
        "cases": [{"case": case, "href": entry["samples"], "outcome": entry.get("outcome"),
                   "rows": [sample_view(r) for r in samples.get((name, case), [])[:SHOWN_ROWS]]}
                  for case, entry in data["cases"].items()],
    }


def report_context(results: Mapping[str, Any],
                   samples: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    outcomes = results.get("gates", {}).get("outcomes", [])
    model = results.get("model") or {}
    return {
        "results": results, "status": results["status"], "model": model,
        "title": f"rwkveval: {model.get('name') or model.get('spec') or 'run'}",
        "options": sorted((results.get("options") or {}).items()),
        "benchmarks": [benchmark_view(name, data, outcomes, samples) for name, data in results["benchmarks"].items()],
    }


def write_report_html(path: Path, results: Mapping[str, Any],
                      samples: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> Path:
    """``samples``: (benchmark, case) -> its sample rows as written (the first are shown)."""
    return write_html(path, "report.html.j2", report_context(results, samples))
