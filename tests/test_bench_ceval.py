"""C-Eval (evals/test_ceval.py) on a synthetic stand-in in the official layout (the real zip could
not be fetched here): the prompt of a known stand-in row against the README's answer-only
prompt written out by hand, CSV and zip errors, the subject groups, and an end-to-end ``--limit
20`` run on the tiny model through the plugin with a manifest that knows the stand-in."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

import evals.plugin  # noqa: F401  (imported once here: in-process runs must not re-import its C extensions)
from benchmarkdata import loader
from benchmarkdata.loader import DataError
from evals import test_ceval
from evals.test_ceval import GROUPS, SUBJECT_INFO, SUBJECTS, build_prompt, load, member_name, parse_csv, render

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent
DEV_COLUMNS = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)  # pandas' to_csv layout: minimal quoting, \n
    return out.getvalue()


def standin_zip(path: Path, val_rows: int = 3, top: str = "") -> Path:
    """dev (5 rows with explanations), val (``val_rows``, no explanation column, as the real val
    files) and test (no answers) for all 52 subjects; the first val question of every subject
    holds a comma and quotes, so CSV quoting is exercised."""
    with zipfile.ZipFile(path, "w") as archive:
        for subject in SUBJECTS:
            name = SUBJECT_INFO[subject][0]
            dev = [DEV_COLUMNS] + [[str(i), f"{name}例题{i}：1+{i}=____", str(i + 1), str(i + 2), str(i), "x",
                                    "ABCD"[i % 4], f"1. 解析{i}"] for i in range(5)]
            val = [DEV_COLUMNS[:7], ["0", f'{name}：他说"好"，然后,走了。____', "甲", "乙", "丙", "丁", "B"]]
            val += [[str(i), f"{name}题目{i}____", f"选项{i}A", f"选项{i}B", f"选项{i}C", f"选项{i}D", "ABCD"[i % 4]]
                    for i in range(1, val_rows)]
            test = [DEV_COLUMNS[:6], ["0", f"{name}考题", "a", "b", "c", "d"]]
            for split, rows in (("dev", dev), ("val", val), ("test", test)):
                archive.writestr(f"{top}{split}/{subject}_{split}.csv", _csv(rows))
    return path


def test_prompt_of_a_known_standin_row_is_the_official_answer_only_prompt(tmp_path):
    val, dev = load(standin_zip(tmp_path / "ceval-exam.zip"))
    doc = val["computer_network"][0]
    assert doc == {"doc_id": 0, "question": '计算机网络：他说"好"，然后,走了。____', "options": ["甲", "乙", "丙", "丁"],
                   "answer": "B"}
    expected = ("以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n"
                "计算机网络例题0：1+0=____\nA. 1\nB. 2\nC. 0\nD. x\n答案：A\n\n"
                "计算机网络例题1：1+1=____\nA. 2\nB. 3\nC. 1\nD. x\n答案：B\n\n"
                '计算机网络：他说"好"，然后,走了。____\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：')
    prompt = build_prompt("computer_network", doc, dev["computer_network"], 2)
    assert prompt == expected
    assert [(r.context, r.continuation, r.bos) for r in render(prompt, True)] == [(prompt, c, True) for c in "ABCD"]
    five = build_prompt("computer_network", doc, dev["computer_network"], 5)
    assert five.count("\n答案：") == 6 and five.endswith(expected.split("\n\n")[-1])
    with pytest.raises(ValueError, match="5 dev exemplars.*--num-fewshot 6"):
        build_prompt("computer_network", doc, dev["computer_network"], 6)


def test_scoring_picks_the_letter_of_highest_loglikelihood():
    doc = {"doc_id": 3, "question": "q", "options": ["a", "b", "c", "d"], "answer": "C"}
    row = test_ceval.score(doc, "p", [-3.0, -2.0, -1.0, -4.0])
    assert (row["extracted"], row["target"], row["scores"]) == ("C", "C", {"acc": 1.0})
    assert test_ceval.score(doc, "p", [-1.0, -1.0, -2.0, -3.0])["scores"] == {"acc": 0.0}  # tie: A, the first


def test_subjects_and_groups():
    assert len(SUBJECTS) == 52
    assert {g: len(s) for g, s in GROUPS.items()} == {"stem": 20, "social_science": 10, "humanities": 11,
                                                       "other": 11, "hard": 8}
    assert test_ceval.groups_of("college_physics") == ["stem", "hard"]
    assert test_ceval.groups_of("clinical_medicine") == ["other"]
    declared = {d.benchmark: d for d in test_ceval.declare(None)}
    assert set(declared) == {"ceval", "ceval_stem", "ceval_social_science", "ceval_humanities", "ceval_other",
                             "ceval_hard"}
    assert all(d.data == ("ceval/ceval-exam.zip",) and d.metrics == ("acc",) for d in declared.values())


def test_the_zip_may_hold_one_top_folder_and_bad_files_are_named(tmp_path):
    val, _ = load(standin_zip(tmp_path / "nested.zip", top="ceval-exam/"))
    assert len(val["logic"]) == 3
    assert member_name(["val/logic_val.csv"], "val", "logic") == "val/logic_val.csv"
    with pytest.raises(DataError, match="expected one member val/law_val.csv"):
        member_name(["val/logic_val.csv"], "val", "law")
    with pytest.raises(DataError, match=r"x.csv:1: expected the columns id,question,A,B,C,D,answer\[,explanation\]"):
        parse_csv("id,question,A,B,C,D\n0,q,a,b,c,d\n", "x.csv")
    with pytest.raises(DataError, match="x.csv:3: expected 7 fields, an integer id and an answer A-D"):
        parse_csv("id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,b,c,d,E\n", "x.csv")


# ---------------------------------------------------------------- end to end on the tiny model

@pytest.fixture
def standin_data(tmp_path, monkeypatch):
    """A data root holding the stand-in zip and a manifest that knows its sha256."""
    root = tmp_path / "data"
    (root / "ceval").mkdir(parents=True)
    zip_path = standin_zip(root / "ceval" / "ceval-exam.zip")
    manifest = json.loads(loader.MANIFEST.read_text(encoding="utf-8"))
    for entry in manifest["files"]:
        if entry["file"] == test_ceval.DATA:
            entry.update(sha256=hashlib.sha256(zip_path.read_bytes()).hexdigest(), revision="standin")
    patched = tmp_path / "manifest.json"
    patched.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(loader, "MANIFEST", patched)
    monkeypatch.setenv(loader.DATA_CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loader.manifest.cache_clear()
    yield root
    loader.manifest.cache_clear()


@pytest.mark.slow
def test_limit_20_end_to_end_on_the_standin(pytester, monkeypatch, standin_data, tiny_model_path):
    from engine.server.background import torch_threads

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["evals.plugin"]\n')
    pytester.makepyfile(test_ceval_suite="from evals.test_ceval import ceval_data, test_ceval\n")
    reports = pytester.path / "reports"
    with torch_threads(1):
        # option=value: a bare path among the arguments would be taken for a test path before the plugin loads
        result = pytester.runpytest("-p", "no:cacheprovider", f"--rootdir={pytester.path}", f"--report-dir={reports}",
                                    f"--model={tiny_model_path}", f"--data-dir={standin_data}", "--limit", "20")
    assert result.ret == 0, result.stdout.str()[-3000:]
    run = (reports / "latest").resolve()
    benchmarks = json.loads((run / "results.json").read_text())["benchmarks"]
    ceval = benchmarks["ceval"]
    assert len(ceval["cases"]) == 52 and ceval["overall"]["n"] == 52  # every subject gets at least one question
    assert ceval["protocol"]["num_fewshot"] == 5 and ceval["protocol"]["split"] == "val"
    assert [(d["file"], d["revision"]) for d in ceval["data"]] == [("ceval/ceval-exam.zip", "standin")]
    sizes = {g: benchmarks[f"ceval_{g}"]["overall"]["n"] for g in GROUPS}
    assert sizes == {"stem": 20, "social_science": 10, "humanities": 11, "other": 11, "hard": 8}
    pooled = sum(benchmarks[f"ceval_{g}"]["overall"]["metrics"]["acc"]["value"] * sizes[g]
                 for g in ("stem", "social_science", "humanities", "other"))
    assert pooled / 52 == pytest.approx(ceval["overall"]["metrics"]["acc"]["value"])
    row = json.loads((run / "samples" / "ceval-logic.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("以下是中国关于逻辑学考试的单项选择题，请选出其中的正确答案。\n\n逻辑学例题0")
    assert row["prompt"].endswith("\n答案：") and set(row["choice_logprobs"]) == set("ABCD")


def test_without_its_zip_ceval_is_left_out_of_a_whole_suite_run_and_stops_a_chosen_one(pytester, monkeypatch,
                                                                                       tmp_path, shared_dir):
    from evals.fakes import PLUGIN_CONFTEST

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv(loader.DATA_CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loader.manifest.cache_clear()  # the real manifest: no sha256 pinned for the zip
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_ceval_suite="from evals.test_ceval import ceval_data, test_ceval\n",
                        test_lambada_suite="from evals.test_lambada import lambada_docs, test_lambada\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    args = ["-p", "no:cacheprovider", f"--rootdir={pytester.path}", f"--report-dir={pytester.path / 'r'}",
            "--model=fake.pth", "--limit", "3"]
    result = pytester.runpytest(*args)
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*whole-suite run without ceval: ceval/ceval-exam.zip is not here and the manifest "
                                 "pins no sha256 for it*--accept-new-revision*"])
    chosen = pytester.runpytest(*args, "-k", "ceval")
    assert chosen.ret == pytest.ExitCode.USAGE_ERROR
    chosen.stderr.fnmatch_lines(["*ceval/ceval-exam.zip --accept-new-revision*"])
