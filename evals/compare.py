"""``rwkveval compare RUN_A RUN_B [RUN_C ...]``: report folders compared case by case on shared
documents, every later run against the first.

For every benchmark and case in both runs of a pair and every metric: both scores as reported and
on the shared documents, the paired difference ``B - A`` of the per-document scores on the
documents both runs scored, its 95% interval and p-value (:mod:`evals.paired`), and for 0/1 scores
McNemar's exact test with the documents right in one run only and those wrong in both. Each
benchmark also gets an overall row (``all``): the same statistics over the shared documents of all
its cases pooled. The documents A got right and B got wrong (and the reverse) go to
``discordant/<bench>-<case>.jsonl``, those both got wrong to ``both_wrong/<bench>-<case>.jsonl``,
with both runs' prompts, targets and outputs (with more than two runs, one folder per later run
inside each). Documents present in only one run are counted and listed. Output: a terminal table,
``comparison.json``, ``comparison.xlsx`` and ``comparison.html`` (forest plots, the documents side
by side; :mod:`evals.compare_page`) in ``--out``, by default ``compare-<A>-vs-<B>`` beside run A in
its report folder.

When two runs read a data file at different revisions (sha256), or scored a benchmark under a
different protocol (``num_fewshot`` 5 against 0, another prompt or template), the comparison says
so (``data_warnings``, ``protocol_warnings``, printed before the table and boxed on the page):
their difference then mixes model with data or protocol.

Documents are matched by ``doc_id``. A perplexity is compared through its per-document score (the
continuation log-likelihood); a ``sum`` (a count such as ``guessed``) only by its two totals.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarkdata.revisions import data_revision_warnings
from evals.metrics import aggregate_one
from evals.paired import is_binary, mcnemar_exact, paired_difference
from evals.plugin.writers import write_json, write_jsonl
from evals.plugin.writers.xlsx_writer import save

ROW_FIELDS = ("prompt", "prompt_sha256", "target", "output", "extracted", "extracted_by", "choice_logprobs",
              "logprob", "is_greedy", "scores")


class RunError(ValueError):
    """A report folder that cannot be read as a run."""


@dataclass
class CaseData:
    metrics: dict[str, Any]
    spec: dict[str, tuple[str, str]]
    rows: dict[Any, dict[str, Any]]  # doc_id -> sample row, in file order


@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    cases: dict[tuple[str, str], CaseData] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.path.name


def _spec(case: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """{metric: (aggregation, score key)}; reports written before the key was recorded fall back
    to the metric name (or ``logprob`` for a perplexity)."""
    if case.get("spec"):
        return {name: tuple(pair) for name, pair in case["spec"].items()}
    scores = rows[0]["scores"] if rows else {}
    spec = {}
    for name, m in case["metrics"].items():
        key = name if name in scores or m["aggregation"] != "perplexity" else "logprob"
        spec[name] = (m["aggregation"], key)
    return spec


def load_run(path: Path) -> Run:
    """``results.json`` and every case's ``samples/*.jsonl`` of a report folder (or ``latest``).
    Anything that cannot be read as such (a missing or unreadable file, bytes that are not UTF-8,
    JSON of another shape) is a :class:`RunError` naming the file."""
    path = Path(path)
    results_file = path / "results.json"
    if not results_file.is_file():
        raise RunError(f"{path}: no results.json (expected a report folder such as reports/latest)")
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{results_file}: cannot be read as JSON ({type(error).__name__}: {error})") from None
    if not isinstance(results, dict) or not isinstance(results.get("benchmarks", {}), dict):
        raise RunError(f"{results_file}: not an rwkveval results.json (expected an object with a 'benchmarks' object)")
    run = Run(path.resolve(), results)
    for bench, data in results.get("benchmarks", {}).items():
        try:
            cases = list(data["cases"].items())
            for case, entry in cases:
                run.cases[(bench, case)] = _case(path, bench, case, entry)
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            if isinstance(error, RunError):
                raise
            raise RunError(f"{results_file}: benchmark {bench!r} is not as rwkveval writes it "
                           f"({type(error).__name__}: {error})") from None
    return run


def _case(path: Path, bench: str, case: str, entry: Mapping[str, Any]) -> CaseData:
    """One case of a run: its metrics, spec and sample rows by doc_id."""
    samples = path / entry["samples"]
    if not samples.is_file():
        raise RunError(f"{samples}: missing (results.json lists it for {bench}/{case})")
    try:
        lines = samples.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"{samples}: cannot be read ({type(error).__name__}: {error})") from None
    rows: dict[Any, dict[str, Any]] = {}
    for line_no, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunError(f"{samples}:{line_no}: not JSON ({error})") from None
        if not isinstance(row, dict):
            raise RunError(f"{samples}:{line_no}: expected a JSON object, found {type(row).__name__}")
        if row.get("doc_id") in rows:
            raise RunError(f"{samples}:{line_no}: doc_id {row.get('doc_id')!r} appears twice")
        rows[row.get("doc_id")] = row
    return CaseData(entry["metrics"], _spec(entry, list(rows.values())), rows)


def shared_spec(a: Mapping[str, Sequence[str]], b: Mapping[str, Sequence[str]]
                ) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, Any]]]:
    """(the metrics both specs define alike, in A's order; the others, each as the entry that
    stands in its comparison: ``{"only_in": "a"}`` or ``"b"`` for a metric one run does not
    report (runs of other options or versions: ``--cot`` adds metrics), ``{"differs": ...}`` for
    one both report from different scores, which cannot be paired)."""
    shared = {name: (pair[0], pair[1]) for name, pair in a.items() if tuple(b.get(name) or ()) == tuple(pair)}
    other: dict[str, dict[str, Any]] = {}
    for name in [*a, *(n for n in b if n not in a)]:
        if name in shared:
            continue
        if name not in b or name not in a:
            side, pair = ("a", a[name]) if name in a else ("b", b[name])
            other[name] = {"aggregation": pair[0], "score": pair[1], "only_in": side}
        else:
            other[name] = {"aggregation": a[name][0], "score": a[name][1], "differs": {"a": list(a[name]), "b": list(b[name])}}
    return shared, other


def compare_rows(rows_a: Mapping[Any, Mapping[str, Any]], rows_b: Mapping[Any, Mapping[str, Any]],
                 spec: Mapping[str, tuple[str, str]], documents: bool = True) -> dict[str, Any]:
    """Paired statistics per metric on the shared documents, plus the unshared ones.

    Per metric: ``shared_a``/``shared_b`` (the metric over the shared documents only, what the
    difference is about), ``paired`` (B - A of the per-document scores), and for 0/1 scores the
    McNemar test with the documents right in one run only and wrong in both (their ids, or only
    their counts with ``documents=False``)."""
    shared = [d for d in rows_a if d in rows_b]
    out: dict[str, Any] = {"shared": len(shared), "only_a": [d for d in rows_a if d not in rows_b],
                           "only_b": [d for d in rows_b if d not in rows_a], "metrics": {}}
    for name, (aggregation, key) in spec.items():
        entry: dict[str, Any] = {"aggregation": aggregation, "score": key}
        if not shared:
            out["metrics"][name] = entry
            continue
        a = [float(rows_a[d]["scores"][key]) for d in shared]
        b = [float(rows_b[d]["scores"][key]) for d in shared]
        entry["shared_a"] = aggregate_one(a, aggregation).value
        entry["shared_b"] = aggregate_one(b, aggregation).value
        if aggregation == "sum":
            entry.update({"total_a": sum(a), "total_b": sum(b)})
        else:
            entry["paired"] = paired_difference(a, b).to_dict()
            if is_binary(a) and is_binary(b):
                a_only = [d for d, x, y in zip(shared, a, b) if x == 1.0 and y == 0.0]
                b_only = [d for d, x, y in zip(shared, a, b) if x == 0.0 and y == 1.0]
                both = [d for d, x, y in zip(shared, a, b) if x == 0.0 and y == 0.0]
                entry["test"] = "mcnemar_exact"
                entry["mcnemar"] = mcnemar_exact(len(a_only), len(b_only)).to_dict()
                entry["both_wrong_count"] = len(both)
                if documents:
                    entry["a_right_b_wrong"], entry["b_right_a_wrong"], entry["both_wrong"] = a_only, b_only, both
            else:
                entry["test"] = "paired_z"
        out["metrics"][name] = entry
    return out


def p_value(entry: Mapping[str, Any]) -> float | None:
    if "mcnemar" in entry:
        return entry["mcnemar"]["p_value"]
    return entry.get("paired", {}).get("p_value")


def data_warnings(a: Run, b: Run) -> list[str]:
    """One message per data file both runs' reports list at different sha256s (revisions)."""
    bench_a, bench_b = a.results.get("benchmarks", {}), b.results.get("benchmarks", {})
    return [w for bench in sorted(set(bench_a) & set(bench_b))
            for w in data_revision_warnings(bench_a[bench].get("data") or [], bench_b[bench].get("data") or [],
                                            "A", "B", bench)]


def _flat(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _shown(protocol: Mapping[str, Any], knob: str) -> str:
    if knob not in protocol:
        return "(not set)"
    text = _flat(protocol[knob])
    return text if len(text) <= 60 else text[:57] + "..."


def protocol_warnings(a: Run, b: Run) -> list[str]:
    """One message per benchmark both runs scored under protocols that differ, naming each knob
    (``num_fewshot``: A 5, B 0)."""
    bench_a, bench_b = a.results.get("benchmarks", {}), b.results.get("benchmarks", {})
    warnings = []
    for bench in sorted(set(bench_a) & set(bench_b)):
        pa, pb = bench_a[bench].get("protocol") or {}, bench_b[bench].get("protocol") or {}
        knobs = [k for k in sorted(set(pa) | set(pb)) if _flat(pa.get(k)) != _flat(pb.get(k))]
        if knobs:
            shown = "; ".join(f"{k}: A {_shown(pa, k)}, B {_shown(pb, k)}" for k in knobs)
            warnings.append(f"{bench}: the protocols differ ({shown}); the difference mixes model and protocol")
    return warnings


def _run_info(run: Run) -> dict[str, Any]:
    model = run.results.get("model", {})
    return {"label": run.label, "path": str(run.path), "model": model.get("name"), "sha256": model.get("sha256"),
            "status": run.results.get("status"), "start": (run.results.get("datetime") or {}).get("start")}


def overall_rows(a: Run, b: Run) -> list[dict[str, Any]]:
    """Per benchmark with cases in both runs: every shared document of its cases pooled (keyed by
    case and doc_id, as doc ids repeat across some benchmarks' cases)."""
    out = []
    for bench in sorted({k[0] for k in a.cases} & {k[0] for k in b.cases}):
        keys = [k for k in sorted(a.cases) if k[0] == bench and k in b.cases]
        if not keys:
            continue
        rows_a = {(k[1], d): row for k in keys for d, row in a.cases[k].rows.items()}
        rows_b = {(k[1], d): row for k in keys for d, row in b.cases[k].rows.items()}
        shared, other = shared_spec(a.cases[keys[0]].spec, b.cases[keys[0]].spec)
        spec = {}
        for m, pair in shared.items():  # pooled only when every case scores it alike; else listed
            odd = next((k for k in keys if a.cases[k].spec.get(m) != pair or b.cases[k].spec.get(m) != pair), None)
            if odd is None:
                spec[m] = pair
            else:
                other[m] = {"aggregation": pair[0], "score": pair[1], "differs": {
                    side: list(run.cases[odd].spec.get(m) or ("", "nothing")) for side, run in (("a", a), ("b", b))}}
        stats = compare_rows(rows_a, rows_b, spec, documents=False)
        stats["metrics"].update(other)
        only = {"only_a": len(stats.pop("only_a")), "only_b": len(stats.pop("only_b"))}
        reported = [run.results["benchmarks"].get(bench, {}).get("overall", {}).get("metrics", {}) for run in (a, b)]
        for name, entry in stats["metrics"].items():
            entry["value_a"] = reported[0].get(name, {}).get("value")
            entry["value_b"] = reported[1].get(name, {}).get("value")
        out.append({"benchmark": bench, "case": "all", "cases": [k[1] for k in keys], **stats, **only})
    return out


def compare_runs(a: Run, b: Run) -> dict[str, Any]:
    """Run B against run A: every case, the overall rows, the warnings."""
    cases = []
    for key in sorted(set(a.cases) | set(b.cases)):
        bench, case = key
        if key not in a.cases or key not in b.cases:
            cases.append({"benchmark": bench, "case": case, "only_in": "a" if key in a.cases else "b"})
            continue
        ca, cb = a.cases[key], b.cases[key]
        spec, other = shared_spec(ca.spec, cb.spec)
        stats = compare_rows(ca.rows, cb.rows, spec)
        stats["metrics"].update(other)  # not compared, but listed: a metric never vanishes silently
        for name, entry in stats["metrics"].items():
            entry["value_a"] = ca.metrics.get(name, {}).get("value")
            entry["value_b"] = cb.metrics.get(name, {}).get("value")
        cases.append({"benchmark": bench, "case": case, **stats})
    return {"a": _run_info(a), "b": _run_info(b), "data_warnings": data_warnings(a, b),
            "protocol_warnings": protocol_warnings(a, b), "cases": cases, "overall": overall_rows(a, b)}


def compare_many(runs: Sequence[Run]) -> dict[str, Any]:
    """Every later run against the first: ``comparisons[k]`` is run k+1 against run 0."""
    if len(runs) < 2:
        raise RunError(f"compare needs at least two runs, found {len(runs)}")
    return {"runs": [_run_info(r) for r in runs], "comparisons": [compare_runs(runs[0], r) for r in runs[1:]]}


def _side(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ROW_FIELDS if k in row}


DIRECTIONS = ("a_right_b_wrong", "b_right_a_wrong", "both_wrong")


def document_rows(a: Run, b: Run, comparison: Mapping[str, Any], directions: Sequence[str] = DIRECTIONS
                  ) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per case, the documents listed under ``directions`` (per metric), with both runs' sides."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for case in comparison["cases"]:
        if "metrics" not in case:
            continue
        key = (case["benchmark"], case["case"])
        rows = []
        for metric, entry in case["metrics"].items():
            for direction in directions:
                for doc_id in entry.get(direction, []):
                    ra, rb = a.cases[key].rows[doc_id], b.cases[key].rows[doc_id]
                    prompt = ra.get("prompt", rb.get("prompt"))
                    rows.append({"metric": metric, "direction": direction, "doc_id": doc_id, "prompt": prompt,
                                 "a": _side(ra), "b": _side(rb)})
        if rows:
            out[key] = rows
    return out


def discordant_rows(a: Run, b: Run, comparison: Mapping[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return document_rows(a, b, comparison, DIRECTIONS[:2])


def pair_rows(pair: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], bool]]:
    """(case entry, is an overall row) in table order: a benchmark's cases, then its overall row
    when it has more than one case."""
    overall = {o["benchmark"]: o for o in pair.get("overall", [])}
    out: list[tuple[Mapping[str, Any], bool]] = []
    benches = list(dict.fromkeys(c["benchmark"] for c in pair["cases"]))
    for bench in benches:
        mine = [c for c in pair["cases"] if c["benchmark"] == bench]
        out += [(c, False) for c in mine]
        if bench in overall and len(overall[bench]["cases"]) > 1:
            out.append((overall[bench], True))
    return out


def score_kind(entry: Mapping[str, Any]) -> str:
    from evals.plugin.display import metric_kind

    if entry.get("aggregation") == "mean" and "mcnemar" in entry:
        return "proportion"
    return metric_kind({"aggregation": entry.get("aggregation"), "value": entry.get("shared_a")})


def _counts(entry: Mapping[str, Any], name: str) -> str:
    if "mcnemar" not in entry:
        return ""
    if name == "both_wrong":
        return str(entry.get("both_wrong_count", ""))
    return str(entry["mcnemar"]["a_only" if name == "a" else "b_only"])


def not_compared(entry: Mapping[str, Any]) -> str:
    """Why a metric has no comparison (:func:`shared_spec`), or ``""``."""
    if "only_in" in entry:
        return f"only in run {entry['only_in'].upper()}"
    if "differs" in entry:
        return f"not compared: A scores {entry['differs']['a'][1]!r}, B {entry['differs']['b'][1]!r}"
    return ""


def table(pair: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The terminal table of one pair (B against A)."""
    from evals.plugin.display import fmt_diff, fmt_number, fmt_p

    lines = [("benchmark", "case", "metric", "A", "B", "B-A [95% CI]", "p", "test", "A>B", "B>A", "both wrong",
              "shared", "only A/B")]
    for case, pooled in pair_rows(pair):
        if "metrics" not in case:
            lines.append((case["benchmark"], case["case"], "-", "", "", f"only in run {case['only_in'].upper()}",
                          "", "", "", "", "", "", ""))
            continue
        only = (f"{case['only_a']}/{case['only_b']}" if pooled
                else f"{len(case['only_a'])}/{len(case['only_b'])}")
        for name, e in case["metrics"].items():
            if "only_in" in e or "differs" in e:
                lines.append((case["benchmark"], case["case"], name, "", "", not_compared(e),
                              "", "", "", "", "", str(case["shared"]), only))
                continue
            kind, paired = score_kind(e), e.get("paired")
            diff = ""
            if paired:
                ci = paired["ci95"]
                diff = fmt_diff(paired["diff"], kind) + (
                    f" [{fmt_diff(ci[0], kind)}, {fmt_diff(ci[1], kind)}]" if ci else "")
            lines.append((case["benchmark"], case["case"], name, fmt_number(e.get("shared_a"), kind),
                          fmt_number(e.get("shared_b"), kind), diff, fmt_p(p_value(e)) if p_value(e) is not None else "",
                          e.get("test", "totals" if "total_a" in e else ""), _counts(e, "a"), _counts(e, "b"),
                          _counts(e, "both_wrong"), str(case["shared"]), only))
    return lines


RUNS_NOTE = ("first column: the first run's value over all its documents; each later run: A -> B over the "
             "documents both scored (B-A, p)")


def runs_table(comparison: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """More than two runs: one row per benchmark, case and metric. Each pair shares its own
    documents, so the first column is the first run's value as reported and each later run's cell
    gives both values on the documents that pair shares, with B-A and its p-value (RUNS_NOTE)."""
    from evals.plugin.display import fmt_diff, fmt_number, fmt_p

    labels = [r["label"] for r in comparison["runs"]]
    lines = [("benchmark", "case", "metric", labels[0]) + tuple(labels[1:])]
    keyed: dict[tuple[str, str, str], dict[int, Mapping[str, Any]]] = {}
    for k, pair in enumerate(comparison["comparisons"]):
        for case, _ in pair_rows(pair):
            for name, e in case.get("metrics", {}).items():
                keyed.setdefault((case["benchmark"], case["case"], name), {})[k] = e
    for key, cells in keyed.items():
        first = next(iter(cells.values()))
        kind = score_kind(first)
        row = [fmt_number(first.get("value_a"), kind)]
        for k in range(len(comparison["comparisons"])):
            e = cells.get(k)
            if e is None or "shared_a" not in e:
                row.append("-")
                continue
            change = f"{fmt_number(e['shared_a'], kind)} -> {fmt_number(e['shared_b'], kind)}"
            if "paired" in e:
                change += f" ({fmt_diff(e['paired']['diff'], kind)}, p {fmt_p(p_value(e))})"
            row.append(change)
        lines.append(key + tuple(row))
    return lines


XLSX_HEADER = ["benchmark", "case", "metric", "value_a", "value_b", "diff", "ci95_low", "ci95_high", "p_value",
               "test", "a_right_b_wrong", "b_right_a_wrong", "shared", "only_a", "only_b", "both_wrong",
               "shared_a", "shared_b", "run_a", "run_b"]


def write_xlsx(path: Path, comparison: Mapping[str, Any]) -> Path:
    """Sheet ``comparison``: a row per pair, case (and overall row) and metric."""
    from openpyxl import Workbook

    from evals.plugin.writers.xlsx_writer import number_format, style_sheet

    book = Workbook()
    sheet = book.active
    sheet.title = "comparison"
    sheet.append(XLSX_HEADER)
    for pair in comparison["comparisons"]:
        for case, pooled in pair_rows(pair):
            for name, e in case.get("metrics", {}).items():
                paired = e.get("paired") or {}
                ci = paired.get("ci95") or [None, None]
                only = ((case["only_a"], case["only_b"]) if pooled else (len(case["only_a"]), len(case["only_b"])))
                sheet.append([case["benchmark"], case["case"], name, e.get("value_a"), e.get("value_b"),
                              paired.get("diff"), ci[0], ci[1], p_value(e), e.get("test") or not_compared(e) or None,
                              e.get("mcnemar", {}).get("a_only"), e.get("mcnemar", {}).get("b_only"),
                              case["shared"], *only, e.get("both_wrong_count"), e.get("shared_a"), e.get("shared_b"),
                              pair["a"]["label"], pair["b"]["label"]])
                kind, row = score_kind(e), sheet.max_row
                for column in ("D", "E", "F", "G", "H", "Q", "R"):
                    sheet[f"{column}{row}"].number_format = number_format(sheet[f"{column}{row}"].value, kind)
                sheet[f"I{row}"].number_format = "0.0000"
    style_sheet(sheet, "D2")
    save(book, path)
    return path


def default_out(runs: Sequence[Run]) -> Path:
    """``compare-<A>-vs-<B>[-vs-<C>...]`` beside the first run, in its report folder."""
    import hashlib

    name = "compare-" + "-vs-".join(r.label for r in runs)
    if len(name) > 180:  # a file name stays well under the usual 255-byte limit
        name = f"compare-{runs[0].label}-vs-{len(runs) - 1}-runs-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return runs[0].path.parent / name


def write_outputs(out_dir: Path, runs: Sequence[Run], comparison: dict[str, Any]) -> dict[str, Path]:
    from evals.compare_page import write_comparison_html
    from evals.plugin.report import case_stem, safe_name

    written = {"json": write_json(out_dir / "comparison.json", comparison),
               "xlsx": write_xlsx(out_dir / "comparison.xlsx", comparison)}
    documents: list[dict[tuple[str, str], list[dict[str, Any]]]] = []
    for k, pair in enumerate(comparison["comparisons"]):
        rows = document_rows(runs[0], runs[k + 1], pair)
        documents.append(rows)
        below = "" if len(runs) == 2 else f"{safe_name(runs[k + 1].label)}/"
        for (bench, case), docs in rows.items():
            name = f"{below}{case_stem(bench, case)}.jsonl"
            for folder, directions in (("discordant", DIRECTIONS[:2]), ("both_wrong", DIRECTIONS[2:])):
                chosen = [d for d in docs if d["direction"] in directions]
                if chosen:
                    written[f"{folder}/{name}"] = write_jsonl(out_dir / folder / name, chosen)
    written["html"] = write_comparison_html(out_dir / "comparison.html", comparison, documents)
    return written


# ---------------------------------------------------------------------- `rwkveval compare`

def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="compare report folders with paired statistics (each against the first)",
        description="Per benchmark and case: both scores on the shared documents, the paired difference B-A with "
                    "its 95%% CI, McNemar's exact test for 0/1 scores, an overall row per benchmark, the documents "
                    "right in one run only and wrong in both, warnings when protocols or data revisions differ. "
                    "With more than two runs, every run is compared with the first.")
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                        help="report folders, e.g. reports/20250101-120000-x reports/latest (two or more)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for comparison.json, .xlsx, .html, discordant/ and both_wrong/ "
                             "(default: compare-<A>-vs-<B> beside RUN A, in its report folder)")
    parser.set_defaults(run=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        print(f"rwkveval compare: give at least two report folders, found {len(args.runs)}", file=sys.stderr)
        return 2
    try:
        runs = [load_run(path) for path in args.runs]
    except RunError as error:
        print(f"rwkveval compare: {error}", file=sys.stderr)
        return 2
    from evals.plugin.display import aligned

    comparison = compare_many(runs)
    out = args.out or default_out(runs)
    write_outputs(out, runs, comparison)
    for k, run in enumerate(runs):
        print(f"{chr(65 + k) if k < 26 else k} = {run.path}")
    for pair in comparison["comparisons"]:
        prefix = "" if len(runs) == 2 else f"{pair['b']['label']} vs {pair['a']['label']}: "
        for warning in pair["data_warnings"]:
            print(f"warning: {prefix}data revision differs: {warning}")
        for warning in pair["protocol_warnings"]:
            print(f"warning: {prefix}protocol differs: {warning}")
    lines = table(comparison["comparisons"][0]) if len(runs) == 2 else runs_table(comparison)
    if len(runs) > 2:
        print(RUNS_NOTE)
    for line in aligned(lines):
        print(line)
    print(f"written: {out}/ (comparison.json, comparison.xlsx, comparison.html, discordant/, both_wrong/)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.compare")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["compare", *(argv if argv is not None else sys.argv[1:])])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
