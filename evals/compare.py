"""``rwkveval compare RUN_A RUN_B``: two report folders compared case by case on shared documents.

For every benchmark and case in both runs and every metric: the two scores (as reported), the
paired difference ``B - A`` of the per-document scores on the documents both runs scored, its 95%
interval and p-value (:mod:`evals.paired`), and for 0/1 scores McNemar's exact test. The
documents A got right and B got wrong (and the reverse) go to ``discordant/<bench>-<case>.jsonl``
with both runs' prompts, targets and outputs. Documents present in only one run are counted and
listed. Output: a terminal table, ``comparison.json`` and ``comparison.xlsx`` in ``--out``.

When the two runs read a data file at different revisions (sha256), the comparison says so
(``data_warnings``, printed before the table): their difference then mixes model and data.

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
    """``results.json`` and every case's ``samples/*.jsonl`` of a report folder (or ``latest``)."""
    path = Path(path)
    results_file = path / "results.json"
    if not results_file.is_file():
        raise RunError(f"{path}: no results.json (expected a report folder such as reports/latest)")
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunError(f"{results_file}: not JSON ({error})") from None
    run = Run(path.resolve(), results)
    for bench, data in results.get("benchmarks", {}).items():
        for case, entry in data["cases"].items():
            samples = path / entry["samples"]
            rows: dict[Any, dict[str, Any]] = {}
            if not samples.is_file():
                raise RunError(f"{samples}: missing (results.json lists it for {bench}/{case})")
            for line_no, line in enumerate(samples.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise RunError(f"{samples}:{line_no}: not JSON ({error})") from None
                if row.get("doc_id") in rows:
                    raise RunError(f"{samples}:{line_no}: doc_id {row.get('doc_id')!r} appears twice")
                rows[row.get("doc_id")] = row
            run.cases[(bench, case)] = CaseData(entry["metrics"], _spec(entry, list(rows.values())), rows)
    return run


def compare_rows(rows_a: Mapping[Any, Mapping[str, Any]], rows_b: Mapping[Any, Mapping[str, Any]],
                 spec: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """Paired statistics per metric on the shared documents, plus the unshared ones."""
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
        if aggregation == "sum":
            entry.update({"total_a": sum(a), "total_b": sum(b)})
        else:
            entry["paired"] = paired_difference(a, b).to_dict()
            if is_binary(a) and is_binary(b):
                a_only = [d for d, x, y in zip(shared, a, b) if x == 1.0 and y == 0.0]
                b_only = [d for d, x, y in zip(shared, a, b) if x == 0.0 and y == 1.0]
                entry["test"] = "mcnemar_exact"
                entry["mcnemar"] = mcnemar_exact(len(a_only), len(b_only)).to_dict()
                entry["a_right_b_wrong"], entry["b_right_a_wrong"] = a_only, b_only
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


def compare_runs(a: Run, b: Run) -> dict[str, Any]:
    cases = []
    for key in sorted(set(a.cases) | set(b.cases)):
        bench, case = key
        if key not in a.cases or key not in b.cases:
            cases.append({"benchmark": bench, "case": case, "only_in": "a" if key in a.cases else "b"})
            continue
        ca, cb = a.cases[key], b.cases[key]
        stats = compare_rows(ca.rows, cb.rows, ca.spec)
        for name, entry in stats["metrics"].items():
            entry["value_a"] = ca.metrics.get(name, {}).get("value")
            entry["value_b"] = cb.metrics.get(name, {}).get("value")
        cases.append({"benchmark": bench, "case": case, **stats})
    return {"a": {"path": str(a.path), "model": a.results.get("model", {}).get("name")},
            "b": {"path": str(b.path), "model": b.results.get("model", {}).get("name")},
            "data_warnings": data_warnings(a, b), "cases": cases}


def _side(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ROW_FIELDS if k in row}


def discordant_rows(a: Run, b: Run, comparison: Mapping[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for case in comparison["cases"]:
        if "metrics" not in case:
            continue
        key = (case["benchmark"], case["case"])
        rows = []
        for metric, entry in case["metrics"].items():
            for direction, ids in (("a_right_b_wrong", entry.get("a_right_b_wrong", [])),
                                   ("b_right_a_wrong", entry.get("b_right_a_wrong", []))):
                for doc_id in ids:
                    ra, rb = a.cases[key].rows[doc_id], b.cases[key].rows[doc_id]
                    prompt = ra.get("prompt", rb.get("prompt"))
                    rows.append({"metric": metric, "direction": direction, "doc_id": doc_id, "prompt": prompt,
                                 "a": _side(ra), "b": _side(rb)})
        if rows:
            out[key] = rows
    return out


def table(comparison: Mapping[str, Any]) -> list[tuple[str, ...]]:
    lines = [("benchmark", "case", "metric", "A", "B", "B-A [95% CI]", "p", "test", "A>B", "B>A", "shared", "only A/B")]
    for case in comparison["cases"]:
        if "metrics" not in case:
            lines.append((case["benchmark"], case["case"], "-", "", "", f"only in run {case['only_in'].upper()}",
                          "", "", "", "", "", ""))
            continue
        for name, e in case["metrics"].items():
            paired, fmt = e.get("paired"), (lambda v: "" if v is None else f"{v:.4g}")
            diff = ""
            if paired:
                ci = paired["ci95"]
                diff = f"{paired['diff']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            lines.append((case["benchmark"], case["case"], name, fmt(e.get("value_a")), fmt(e.get("value_b")), diff,
                          fmt(p_value(e)), e.get("test", "totals" if "total_a" in e else ""),
                          str(len(e.get("a_right_b_wrong", []))) if "mcnemar" in e else "",
                          str(len(e.get("b_right_a_wrong", []))) if "mcnemar" in e else "",
                          str(case["shared"]), f"{len(case['only_a'])}/{len(case['only_b'])}"))
    return lines


def write_xlsx(path: Path, comparison: Mapping[str, Any]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "comparison"
    sheet.append(["benchmark", "case", "metric", "value_a", "value_b", "diff", "ci95_low", "ci95_high", "p_value",
                  "test", "a_right_b_wrong", "b_right_a_wrong", "shared", "only_a", "only_b"])
    for case in comparison["cases"]:
        for name, e in case.get("metrics", {}).items():
            paired = e.get("paired") or {}
            ci = paired.get("ci95") or [None, None]
            sheet.append([case["benchmark"], case["case"], name, e.get("value_a"), e.get("value_b"),
                          paired.get("diff"), ci[0], ci[1], p_value(e), e.get("test"),
                          len(e.get("a_right_b_wrong", [])), len(e.get("b_right_a_wrong", [])),
                          case["shared"], len(case["only_a"]), len(case["only_b"])])
    save(book, path)
    return path


def write_outputs(out_dir: Path, a: Run, b: Run, comparison: dict[str, Any]) -> dict[str, Path]:
    from evals.plugin.report import safe_name

    written = {"json": write_json(out_dir / "comparison.json", comparison),
               "xlsx": write_xlsx(out_dir / "comparison.xlsx", comparison)}
    for (bench, case), rows in discordant_rows(a, b, comparison).items():
        written[f"{bench}/{case}"] = write_jsonl(out_dir / "discordant" / f"{safe_name(bench)}-{safe_name(case)}.jsonl",
                                                 rows)
    return written


# ---------------------------------------------------------------------- `rwkveval compare`

def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="compare two report folders with paired statistics",
        description="Per benchmark and case: both scores, the paired difference B-A with its 95%% CI, McNemar's "
                    "exact test for 0/1 scores, and the discordant documents (to --out/discordant/).")
    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="report folder, e.g. reports/20250101-120000-x")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="report folder to compare against RUN_A")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for comparison.json, comparison.xlsx and discordant/ "
                             "(default: compare-<A>-vs-<B> in the current folder)")
    parser.set_defaults(run=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    try:
        a, b = load_run(args.run_a), load_run(args.run_b)
    except RunError as error:
        print(f"rwkveval compare: {error}", file=sys.stderr)
        return 2
    comparison = compare_runs(a, b)
    out = args.out or Path(f"compare-{a.label}-vs-{b.label}")
    written = write_outputs(out, a, b, comparison)
    lines = table(comparison)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print(f"A = {a.path}\nB = {b.path}")
    for warning in comparison["data_warnings"]:
        print(f"warning: data revision differs: {warning}")
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    print(f"written: {out}/ ({', '.join(p.name for p in list(written.values())[:2])}"
          f"{', discordant/' if len(written) > 2 else ''})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.compare")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["compare", *(argv if argv is not None else sys.argv[1:])])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
