"""``--baseline RUN_DIR``: fail a case that is significantly worse than a earlier run on the
documents both runs scored.

For each metric with a per-document score (``mean`` and ``perplexity`` aggregations; a ``sum``
is a count and is not judged), higher per-document scores are better (accuracy, log-likelihood).
A case fails on a metric when both hold:

- the one-sided paired test says "worse" at level ``alpha`` (``--baseline-alpha``, 0.05):
  McNemar's exact test for 0/1 scores (``P(X >= b)``, ``X ~ Binomial(b + c, 1/2)``, ``b`` = right in
  the baseline and wrong now), otherwise the paired z test on the per-document differences;
- the mean drop on the shared documents exceeds ``min_effect`` (``--baseline-min-effect``, 0, in
  score units: 0.01 is one accuracy point).

The verdict also lists ``data_warnings``: data files the two runs read at different revisions
(sha256), whose comparison mixes model and data (see :mod:`benchmarkdata.revisions`).

Documents in only one of the runs are counted and listed in the verdict (and in the message when
a case fails); a case the baseline does not have is reported, never failed; so is a metric only
one of the runs reports (another ``--cot``, another version), listed under ``not_compared``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarkdata.revisions import data_revision_warnings
from evals.compare import Run, compare_rows, load_run, shared_spec


@dataclass
class Baseline:
    run: Run
    alpha: float = 0.05
    min_effect: float = 0.0

    @classmethod
    def load(cls, path: Path, alpha: float = 0.05, min_effect: float = 0.0) -> Baseline:
        return cls(load_run(path), alpha, min_effect)

    def data_warnings(self, benchmark: str, data: Sequence[Mapping[str, Any]]) -> list[str]:
        """Data files this run (``data``: the ``describe()`` dicts it records) and the baseline
        read at different revisions."""
        base = self.run.results.get("benchmarks", {}).get(benchmark, {}).get("data") or []
        return data_revision_warnings(base, data, "the baseline", "this run", benchmark)

    def judge(self, benchmark: str, case: str, rows: Sequence[Mapping[str, Any]],
              spec: Mapping[str, tuple[str, str]], data: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """The verdict for this run's ``rows`` of one case: per metric the paired statistics and
        whether it is significantly worse; ``failures`` holds a message per failing metric;
        ``data_warnings`` one per data file read at another revision than the baseline's."""
        base = self.run.cases.get((benchmark, case))
        verdict: dict[str, Any] = {"run": str(self.run.path), "alpha": self.alpha, "min_effect": self.min_effect,
                                   "failures": [], "data_warnings": self.data_warnings(benchmark, data)}
        if base is None:
            verdict["missing"] = f"the baseline has no case {benchmark}/{case}"
            return verdict
        current = {row.get("doc_id"): row for row in rows}
        compared, other = shared_spec(base.spec, spec)  # A = baseline, B = this run
        stats = compare_rows(base.rows, current, compared)
        verdict.update({"shared": stats["shared"], "only_current": stats["only_b"], "only_baseline": stats["only_a"],
                        "metrics": {}})
        if other:  # reported, never judged: a metric the baseline lacks cannot be worse than it
            verdict["not_compared"] = other
        unshared = (f"{len(stats['only_b'])} documents only in this run, "
                    f"{len(stats['only_a'])} only in the baseline")
        for name, entry in stats["metrics"].items():
            paired = entry.get("paired")
            if paired is None:
                continue
            if "mcnemar" in entry:
                p, test = entry["mcnemar"]["p_worse"], "McNemar exact one-sided"
                detail = (f", {entry['mcnemar']['a_only']} right only in the baseline, "
                          f"{entry['mcnemar']['b_only']} right only now")
            else:
                p, test, detail = paired["p_worse"], "paired z one-sided", ""
            drop = -paired["diff"]
            worse = p is not None and p < self.alpha and drop > self.min_effect
            verdict["metrics"][name] = {"score": entry["score"], "baseline": paired["mean_a"], "current": paired["mean_b"],
                                        "diff": paired["diff"], "ci95": paired["ci95"], "p_worse": p, "test": test,
                                        "worse": worse}
            if worse:
                ci = paired["ci95"]
                ci_text = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "undefined"
                verdict["failures"].append(
                    f"{benchmark}/{case}.{name} is worse than the baseline by {drop:.4f} in per-document "
                    f"{entry['score']} ({paired['mean_b']:.4f} now vs {paired['mean_a']:.4f} on {stats['shared']} "
                    f"shared documents, difference 95% CI {ci_text}; {test} p = {p:.4g} < {self.alpha:g}, "
                    f"minimum effect {self.min_effect:g}{detail}; {unshared}; baseline {self.run.path})")
        return verdict
