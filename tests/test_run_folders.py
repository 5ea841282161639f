"""Runs never overwrite each other, and bad disks and damaged caches are named, not hidden:

- two runs started at once into one ``--report-dir`` get a folder each;
- a report folder on a full disk: every failure's reason is still printed, one line names each file
  that could not be written, and the run's cache stays usable;
- a read-only report or cache folder is a usage error before any work;
- stored answers damaged in the cache fail their cases clearly, and the overall row says it is
  incomplete instead of pooling what remains;
- against an endpoint, the answers that arrived are cached even when others failed, and the
  served model's sha256 picks its gates.

A full or read-only disk is a small tmpfs mounted by the test (as root, as CI runs); elsewhere a
folder without write permission stands in for the read-only one, and the full-disk test skips.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from evals.fakes import PLUGIN_CONFTEST
from evals.plugin.rundir import make_run_dir
from helpers import tmpfs

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` up to ``leave`` bytes."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shared_dir) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_lambada_suite="from evals.test_lambada import lambada_docs, test_lambada\n",
                        test_piqa_suite="from evals.test_piqa import piqa_docs, test_piqa\n",
                        test_mmlu_pro_suite="from evals.test_mmlu_pro import mmlu_pro_data, test_mmlu_pro\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    return pytester


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "--model", "fake.pth", *args]


def test_a_run_folder_is_never_taken_twice(tmp_path):
    from datetime import datetime

    now = datetime(2026, 12, 1, 12, 0, 0)
    first, second = make_run_dir(tmp_path, "m", now), make_run_dir(tmp_path, "m", now)
    assert (first.name, second.name) == ("20261201-120000-m", "20261201-120000-m-2")


def test_two_runs_at_once_into_one_report_folder(suite):
    runs = [subprocess.Popen(command("-k", kind, "--limit", "20"), cwd=suite.path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for kind in ("lambada", "piqa")]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folders = sorted(p for p in (suite.path / "reports").glob("2*") if p.is_dir())
    assert len(folders) == 2
    seen = {}
    for folder in folders:
        results = json.loads((folder / "results.json").read_text())
        (bench,) = results["benchmarks"]
        seen[bench] = folder
        assert [p.name for p in (folder / "samples").iterdir()] == [f"{bench}-{next(iter(results['benchmarks'][bench]['cases']))}.jsonl"]
        log = (folder / "progress.log").read_text()
        assert bench in log and ({"lambada", "piqa"} - {bench}).pop() not in log
    assert set(seen) == {"lambada", "piqa"}
    assert (suite.path / "reports" / "latest").resolve() in folders


def test_a_full_report_disk_names_each_file_and_keeps_the_cache(suite, tmp_path):
    disk = suite.path / "full"
    with tmpfs(disk, "1m"):
        fill(disk, leave=20_000)
        done = subprocess.run(command("-k", "mmlu_pro", "--limit", "28", "--report-dir", "full",
                                      "--cache-dir", "cache", "--threshold", "mmlu_pro/*.acc>=0.99"),
                              cwd=suite.path, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert "INTERNALERROR" not in output and "Traceback" not in output
        # every case's own failure is still reported with its reason ...
        assert output.count("threshold gate failed: mmlu_pro/") >= 14
        # ... and one line per file that could not be written
        lines = [x for x in output.splitlines() if x.startswith("could not write ")]
        assert lines and all("No space left on device" in x for x in lines)
        assert len(lines) == len({x.split(":")[0] for x in lines})
    again = subprocess.run(command("-k", "mmlu_pro", "--limit", "28", "--report-dir", "roomy", "--cache-dir", "cache"),
                           cwd=suite.path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    results = json.loads((suite.path / "roomy" / "latest" / "results.json").read_text())
    assert results["cache"]["computed"] == 0 and results["cache"]["reused"] > 0  # the cache was kept whole


@pytest.mark.parametrize("which", ["--report-dir", "--cache-dir"])
def test_a_read_only_folder_is_a_usage_error_before_any_work(suite, which):
    folder = suite.path / "ro"
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(tmpfs(folder, "1m", read_only=True))
        else:
            folder.mkdir()
            folder.chmod(0o555)
            stack.callback(folder.chmod, 0o755)
        done = subprocess.run(command("-k", "lambada", "--limit", "5", which, "ro"), cwd=suite.path,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "INTERNALERROR" not in done.stderr
    assert "not writable" in done.stderr or "Read-only file system" in done.stderr
    assert done.stderr.count("ERROR:") == 1


def test_damaged_stored_answers_fail_their_cases_and_the_overall_row_says_so(suite):
    args = command("-k", "mmlu_pro", "--limit", "28", "--threshold", "mmlu_pro.acc>=0")
    assert subprocess.run(args, cwd=suite.path, capture_output=True, timeout=300).returncode == 0
    db = sqlite3.connect(suite.path / "reports" / "cache" / "responses.sqlite")
    contexts = {}
    for key, request in db.execute("SELECT key, request FROM responses WHERE kind = 'loglikelihood'"):
        contexts.setdefault(json.loads(request)["context"].split("about ")[1].split(".")[0], []).append(key)
    damaged = sorted(contexts)[:2]  # every answer of two categories' first question
    for category in damaged:
        db.execute("UPDATE responses SET response = '{\"logprob\": \"x' WHERE key = ?", (contexts[category][0],))
    db.commit()
    db.close()
    done = subprocess.run(args, cwd=suite.path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:]
    assert done.stdout.count("cannot be read") >= 2
    run = (suite.path / "reports" / "last-failed").resolve()
    results = json.loads((run / "results.json").read_text())
    overall = results["benchmarks"]["mmlu_pro"]["overall"]
    assert results["status"] == "failed" and overall["complete"] is False and len(overall["missing"]) == 2
    assert overall["gates"] == [] and overall["undecided"][0]["label"] == "mmlu_pro.acc"
    assert "all (partial 12 cases)" in done.stdout
