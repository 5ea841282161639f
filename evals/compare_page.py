"""comparison.html: what ``rwkveval compare`` found, as one self-contained page.

- the runs (the first is the reference every later run is compared with) and a warning block
  when two runs scored a benchmark under different protocols or data revisions;
- per benchmark, a forest plot of its first metric: per case and for the pooled row, the paired
  difference (later run - first run) on the shared documents with its 95% interval, one colour
  per later run; then the table of every metric (both runs' values on the shared documents, B-A
  with its interval, the p-value and test, the McNemar counts, shared and unshared documents);
- per case, the documents right in one run only and those wrong in both, the two runs' answers
  side by side (the first ``SHOWN_DOCUMENTS`` of each list; the JSONL files hold them all).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evals.plugin.display import primary_metric
from evals.plugin.writers.html_writer import dom_id, text_block, write_html

SHOWN_DOCUMENTS = 10
SIDE_FIELDS = ("extracted", "extracted_by", "target", "scores")
DIRECTION_TITLES = {"a_right_b_wrong": "right in A only", "b_right_a_wrong": "right in B only",
                    "both_wrong": "wrong in both"}


def _rows(pair: Mapping[str, Any], bench: str) -> list[tuple[Mapping[str, Any], bool]]:
    from evals.compare import pair_rows

    return [(c, pooled) for c, pooled in pair_rows(pair) if c["benchmark"] == bench]


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in value.items())
    return str(value)


def _side(side: Mapping[str, Any]) -> dict[str, Any]:
    return {"fields": {k: _shown(side[k]) for k in SIDE_FIELDS if k in side},
            "output": text_block(side["output"]) if "output" in side else None}


def _documents(pair_docs: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]], bench: str, case: str,
               metric: str) -> list[dict[str, Any]]:
    docs = [d for d in pair_docs.get((bench, case), []) if d["metric"] == metric]
    out = []
    for direction, title in DIRECTION_TITLES.items():
        mine = [d for d in docs if d["direction"] == direction]
        out.append({"direction": direction, "title": title, "count": len(mine),
                    "docs": [{"doc_id": d["doc_id"], "prompt": text_block(d["prompt"]) if d.get("prompt") else None,
                              "a": _side(d["a"]), "b": _side(d["b"])} for d in mine[:SHOWN_DOCUMENTS]]})
    return out


def benchmark_view(bench: str, comparison: Mapping[str, Any],
                   documents: Sequence[Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    from evals.compare import not_compared, p_value, score_kind
    from evals.plugin.writers.charts import Difference, forest_plot

    pairs = comparison["comparisons"]
    first_case = next(c for pair in pairs for c, _ in _rows(pair, bench) if "metrics" in c)
    metric = primary_metric({n: e for n, e in first_case["metrics"].items() if not not_compared(e)}
                            or first_case["metrics"])
    labels: list[str] = []
    points: list[Difference] = []
    tables = []
    for k, pair in enumerate(pairs):
        rows = []
        for case, pooled in _rows(pair, bench):
            if case["case"] not in labels and "metrics" in case:
                labels.append(case["case"])
            for name, e in case.get("metrics", {}).items():
                if not_compared(e):
                    rows.append({"case": case["case"], "metric": name, "note": not_compared(e)})
                    continue
                paired = e.get("paired")
                if name == metric and paired is not None:
                    points.append(Difference(case["case"], k, paired["diff"],
                                             tuple(paired["ci95"]) if paired.get("ci95") else None))
                rows.append({"case": case["case"], "metric": name, "pooled": pooled, "e": e, "kind": score_kind(e),
                             "paired": paired, "p": p_value(e), "shared": case["shared"],
                             "only": (case["only_a"], case["only_b"]) if pooled
                             else (len(case["only_a"]), len(case["only_b"]))})
            if "metrics" not in case:
                rows.append({"case": case["case"], "only_in": case["only_in"].upper()})
        docs = [{"case": c["case"], "lists": _documents(documents[k], bench, c["case"], metric)}
                for c, pooled in _rows(pair, bench) if not pooled and "metrics" in c and metric in c["metrics"]]
        tables.append({"a": pair["a"]["label"], "b": pair["b"]["label"], "rows": rows, "documents": docs})
    if "all" in labels:  # the pooled row last, as in the tables
        labels = [label for label in labels if label != "all"] + ["all"]
    chart_id = dom_id("forest", bench)
    names = [f"{p['b']['label']} - {p['a']['label']}" for p in pairs]
    chart = forest_plot(chart_id, metric, labels, points, names) if points else None
    return {"name": bench, "id": dom_id("bench", bench), "metric": metric, "chart": chart, "chart_id": chart_id,
            "points": len(points), "tables": tables}


def comparison_context(comparison: Mapping[str, Any],
                       documents: Sequence[Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    benches = list(dict.fromkeys(c["benchmark"] for pair in comparison["comparisons"] for c in pair["cases"]
                                 if "metrics" in c))
    warnings = []
    for pair in comparison["comparisons"]:
        where = f"{pair['b']['label']} vs {pair['a']['label']}"
        warnings += [{"pair": where, "kind": "data revision", "text": w} for w in pair["data_warnings"]]
        warnings += [{"pair": where, "kind": "protocol", "text": w} for w in pair.get("protocol_warnings", [])]
    runs = comparison["runs"]
    return {"title": "rwkveval comparison: " + " vs ".join(r["label"] for r in runs), "runs": runs,
            "letters": [chr(65 + k) for k in range(len(runs))], "warnings": warnings,
            "benchmarks": [benchmark_view(b, comparison, documents) for b in benches]}


def write_comparison_html(path: Path, comparison: Mapping[str, Any],
                          documents: Sequence[Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]]) -> Path:
    """``documents[k]``: pair k's rows from :func:`evals.compare.document_rows`."""
    return write_html(path, "comparison.html.j2", comparison_context(comparison, documents))
