"""report.html and comparison.html in headless Chromium: the pages load without console errors,
every chart has the marks its numbers call for, and the numbers on the page are those of
results.json / comparison.json.

The browser is Debian's ``chromium`` (``apt-get install chromium``; .ci/run installs it) driven by
the ``playwright`` package with ``executable_path`` (never ``playwright install``: no browser is
downloaded). Outside CI a missing browser or package skips with the reason; under ``CI=true`` it
is an error. One screenshot of each page is kept under ``$RWKVEVAL_ARTIFACTS`` (default
``artifacts/`` in the checkout, git-ignored) and its path printed.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from benchmarkdata import in_ci
from evals.cli import main as cli_main
from evals.plugin.report import Judged, build, samples_file
from evals.plugin.result import CaseResult, judge
from evals.plugin.writers import write_json, write_jsonl
from evals.plugin.writers.html_writer import write_report_html
from evals.thresholds import Gate
from test_compare import make_run

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("RWKVEVAL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SPEC = {"acc": ("mean", "acc"), "ppl": ("perplexity", "logprob"), "guessed": ("sum", "guessed")}


def _missing(reason: str):
    if in_ci():
        pytest.fail(f"{reason} [CI=true: the report pages must be checked in a browser]", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set RWKVEVAL_CHROMIUM)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def open_page(browser, path: Path, screenshot: Path):
    """The page at ``path``, its console errors, and a full-page screenshot kept as an artifact."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: errors.append(f"network request: {request.url}")
            if not request.url.startswith(("file:", "data:", "about:")) else None)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(screenshot), full_page=True)
    keep = Path(os.environ.get("RWKVEVAL_ARTIFACTS", REPO / "artifacts")) / "report-pages"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, keep / screenshot.name)
    print(f"screenshot artifact: {keep / screenshot.name}")
    return page, errors


def number(text: str) -> float:
    return float(text.replace(",", "").replace("+", ""))


def close(text: str, value: float, digits: int = 4) -> bool:
    """The page shows ``value`` rounded to ``digits`` significant digits (or decimals): values
    four, interval bounds and chance levels three."""
    return number(text) == pytest.approx(value, rel=0.6 * 10.0 ** (1 - digits), abs=0.6 * 10.0 ** -digits)


# ---------------------------------------------------------------- a constructed run

def rows(case: str, right: int, n: int, options: int, logprob: float) -> list[dict]:
    return [{"doc_id": f"{case}-{i}", "prompt": f"Question {i} about {case}?\n" + "context " * (80 if i == 0 else 3),
             "target": "A", "output": f"The answer is {'A' if i < right else 'B'}.", "extracted": "A" if i < right else "B",
             "n_options": options, "scores": {"acc": float(i < right), "logprob": logprob - (i % 3), "guessed": float(i == n - 1)}}
            for i in range(n)]


def constructed_run(folder: Path) -> dict:
    """quiz: three cases of a multiple-choice benchmark, one of them gated; lm: a single case with a
    huge perplexity; written as the plugin writes them (results.json, samples, report.html)."""
    gates = [Gate.parse("quiz/physics.acc>=0.5"), Gate.parse("quiz.acc>=0.9"),
             Gate.parse("lm.ppl<=1e12")]
    cases = {("quiz", "history"): rows("history", 7, 12, 4, -2.0), ("quiz", "law"): rows("law", 2, 9, 10, -2.5),
             ("quiz", "physics"): rows("physics", 5, 8, 5, -1.5), ("lm", "openai"): rows("openai", 3, 10, 1, -24.0)}
    judged = {}
    for (bench, case), case_rows in cases.items():
        single = bench == "lm"
        spec = {"acc": SPEC["acc"], "ppl": SPEC["ppl"]} if single else SPEC
        result = CaseResult(bench, case, f"evals/test_{bench}.py::test[{case}]", tuple(case_rows), spec,
                            {"name": f"{bench} protocol", "num_fewshot": 0 if single else 5},
                            model={"name": "demo-model", "sha256": "ab" * 32, "backend": "local", "dtype": "float32",
                                   "device": "cpu"},
                            single_case=single, expected_cases=("openai",) if single else ("history", "law", "physics"),
                            chance=() if single else ("acc",))
        judged[(bench, case)] = Judged(result, judge(result, gates))
    envelope = {"command": ["evals", "-k", "quiz or lm"], "options": {"limit": None, "num_fewshot": None},
                "model": {"path": "/models/demo.pth"}, "commit": {"commit": "0123456789abcdef", "branch": "main"},
                "machine": {"node": "ci", "cpu_count": 2}, "versions": {"python": "3.11"},
                "datetime": {"start": "2026-12-01T10:00:00+00:00", "end": "2026-12-01T10:05:00+00:00"}}
    results, _ = build(envelope, judged, gates, "complete", {j.result.nodeid: "passed" for j in judged.values()})
    write_json(folder / "results.json", results)
    for (bench, case), j in judged.items():
        write_jsonl(folder / samples_file(bench, case), list(j.result.rows))
    write_report_html(folder / "report.html", results, {k: list(j.result.rows) for k, j in judged.items()})
    return results


def test_report_page(browser, tmp_path):
    results = constructed_run(tmp_path)
    page, errors = open_page(browser, tmp_path / "report.html", tmp_path / "report.png")
    assert errors == []
    assert page.inner_text("#status") == results["status"] == "complete"
    assert page.inner_text("#model-sha256") == results["model"]["sha256"]
    assert page.inner_text("#gate-counts").split()[::2] == [str(results["gates"][k])
                                                            for k in ("passed", "failed", "undecided")]
    for bench, data in results["benchmarks"].items():
        sections = list(data["cases"].values()) + ([data["overall"]] if len(data["cases"]) > 1 else [])
        metric = next(iter(next(iter(data["cases"].values()))["metrics"]))  # acc: the first mean metric
        chart = f"figure#chart-{bench}"
        assert page.locator(f"{chart} svg").count() == 1
        assert page.locator(f"{chart} g[id^='chart-{bench}-bar-']").count() == len(sections)
        assert page.locator(f"{chart} g#chart-{bench}-ci path").count() == sum(
            s["metrics"][metric]["ci95"] is not None for s in sections)
        assert page.locator(f"{chart} g#chart-{bench}-chance path").count() == sum(
            s["metrics"][metric]["chance"] is not None for s in sections)
        shown = page.locator(f"table.metrics[data-benchmark='{bench}'] tr.metric")
        expected = [(case, name, m) for case, entry in [*data["cases"].items(), ("all", data["overall"])]
                    if entry in sections for name, m in entry["metrics"].items()]
        assert shown.count() == len(expected)
        for k, (case, name, m) in enumerate(expected):
            row = shown.nth(k)
            assert (row.get_attribute("data-case"), row.get_attribute("data-metric")) == (case, name)
            assert close(row.locator("td.value").inner_text(), m["value"]), (bench, case, name)
            assert int(row.locator("td.n").inner_text()) == m["n"]
            chance = row.locator("td.chance").inner_text()
            assert (chance == "-") if m["chance"] is None else close(chance, m["chance"], 3)
            interval = row.locator("td.ci").inner_text()
            if m["ci95"] is None:  # a count
                assert interval == "-" and row.locator("td.value").inner_text() == f"{m['value']:.0f}"
                continue
            low, high = interval.strip("[]").split(", ")
            assert close(low, m["ci95"][0], 3) and close(high, m["ci95"][1], 3)
    gates = page.locator("tr.gate")
    assert gates.count() == len(results["gates"]["outcomes"]) == 3
    assert page.locator("tr.gate td.fail").count() == results["gates"]["failed"] == 1
    first = page.locator("details.samples[data-case='history'] .sample").first
    assert "Question 0 about history?" in first.text_content()
    assert page.locator("details.samples[data-case='history'] .sample details pre").count() >= 1  # the long prompt folded


def test_comparison_page(browser, tmp_path):
    a = {**{d: float(d < 8) for d in range(10)}, 100: 1.0}
    runs = [make_run(tmp_path, "first", a, more={"extra": {d: float(d < 3) for d in range(6)}},
                     protocol={"name": "toy", "num_fewshot": 5}),
            make_run(tmp_path, "second", {d: float(d < 4 or d >= 8) for d in range(10)},
                     more={"extra": {d: float(d in (0, 3)) for d in range(6)}}, protocol={"name": "toy", "num_fewshot": 0}),
            make_run(tmp_path, "third", {d: float(d < 9) for d in range(10)}, protocol={"name": "toy", "num_fewshot": 5})]
    out = tmp_path / "cmp"
    assert cli_main(["compare", *map(str, runs), "--out", str(out)]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    page, errors = open_page(browser, out / "comparison.html", tmp_path / "comparison.png")
    assert errors == []
    warnings = page.locator("#warnings li")
    assert warnings.count() == sum(len(p["protocol_warnings"]) + len(p["data_warnings"])
                                   for p in comparison["comparisons"]) == 1
    assert "num_fewshot: A 5, B 0" in warnings.first.inner_text()
    for k, pair in enumerate(comparison["comparisons"]):
        pooled = [o for o in pair["overall"] if len(o["cases"]) > 1]
        expected = [c for c in pair["cases"] if "metrics" in c] + pooled
        points = page.locator(f"figure#forest-toy g#forest-toy-run{k}-points use")
        assert points.count() == len(expected)  # one marker per case (and pooled row) with a difference
        assert page.locator(f"figure#forest-toy g#forest-toy-run{k}-ci path").count() == len(expected)
        shown = page.locator(f"table.comparison[data-b='{pair['b']['label']}'] tr.row")
        listed = [(c, name, e) for c in expected for name, e in c["metrics"].items()]
        assert shown.count() == len(listed)
        for j, (case, name, e) in enumerate(listed):
            row = shown.nth(j)
            assert (row.get_attribute("data-case"), row.get_attribute("data-metric")) == (case["case"], name)
            assert close(row.locator("td.shared-a").inner_text(), e["shared_a"])
            assert close(row.locator("td.diff").inner_text(), e["paired"]["diff"])
            p = e["mcnemar"]["p_value"] if "mcnemar" in e else e["paired"]["p_value"]
            assert close(row.locator("td.p").inner_text(), p)
            if "mcnemar" in e:
                assert int(row.locator("td.a-only").inner_text()) == e["mcnemar"]["a_only"]
                assert int(row.locator("td.b-only").inner_text()) == e["mcnemar"]["b_only"]
                assert int(row.locator("td.both-wrong").inner_text()) == e["both_wrong_count"]
    # the documents side by side: first vs second, case extra, wrong in both (docs 4 and 5)
    both = page.locator("div.pair[data-b='second'] details.documents[data-case='extra'] .sample.both_wrong")
    assert both.count() == 2 and both.first.locator(".sides > div").count() == 2
