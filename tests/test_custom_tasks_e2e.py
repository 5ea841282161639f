"""A folder of three task files, each with its own checker (exact_match, a sidecar's ``contains``,
a user function from a temporary module that raises on some rows), run on the tiny model locally
and through ``--endpoint`` against ``rwkveval serve`` in both API modes: the same rows and scores,
the raising rows reported with the message. Sampled main answers repeat with a seed and are cached
under their settings.

Each run is a real ``pytest evals`` subprocess (the command a user types), without a model in the
environment. The same prompt text reaches the model in all three ways: ``--template rwkv`` renders
``User: ...\\n\\nAssistant:`` locally and for ``/v1/completions``; in chat mode the server renders
the same turns itself (``--no-bos`` throughout: chat messages cannot start with token 0).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads

REPO = Path(__file__).resolve().parent.parent
FIELDS = "prompt=input,answer=target,id=index"
VERIFIERS = '''
def judge(output, row):
    if row["index"] % 3 == 0:
        raise ValueError(f"cannot judge row {row['index']}")
    words = output.split()
    return len(words) / 10, (words[0] if words else None)
'''
QUESTIONS = ["What is the capital of France?", "Name a large animal.", "What colour is the sky?", "Say hello.",
             "Count to three.", "Who wrote Hamlet?"]


def write_tasks(root: Path) -> tuple[Path, Path]:
    tasks, checkers = root / "tasks", root / "checkers"
    tasks.mkdir()
    checkers.mkdir()
    (checkers / "verifiers.py").write_text(VERIFIERS)
    for name, target in (("qa", "the the"), ("words", "the"), ("judged", {"any": "json"})):
        with open(tasks / f"{name}.jsonl", "w") as handle:
            for i, question in enumerate(QUESTIONS):
                handle.write(json.dumps({"index": i, "input": question, "target": target}) + "\n")
    (tasks / "words.task.toml").write_text('checker = "contains"\n')
    (tasks / "judged.task.toml").write_text('checker = "verifiers:judge"\n')
    return tasks, checkers


def run_evals(report_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "evals", "-k", "custom", "--report-dir", str(report_dir),
               "-p", "no:cacheprovider", "-q", "--max-new-tokens", "16", "--no-bos", "--sample-prompts", "-1",
               "--field-map", FIELDS, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RWKV_MODEL", None)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def report(report_dir: Path) -> tuple[dict, dict[str, dict]]:
    run = report_dir / "latest"
    results = json.loads((run / "results.json").read_text())
    rows = {}
    for path in sorted((run / "samples").glob("*.jsonl")):
        rows[path.stem] = [json.loads(line) for line in path.read_text().splitlines()]
    return results, rows


def comparable(rows: dict[str, list[dict]]) -> dict:
    """What must agree across backends: per row the answer (stripped: a chat server drops the reply's
    leading space), its length, what the checker made of it, and the scores."""
    keep = ("doc_id", "output_len", "checker", "extracted", "checker_error", "scores", "target")
    return {case: [{**{k: r[k] for k in keep}, "output": r["output"].strip()} for r in case_rows]
            for case, case_rows in rows.items()}


@pytest.fixture(scope="module")
def setup(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    tasks, checkers = write_tasks(root)
    model = engine.load_model(tiny_model_path)
    config = ServerConfig(model_name=Path(tiny_model_path).stem)
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        yield root, tasks, checkers, url


@pytest.mark.slow
def test_three_checkers_locally_and_through_both_api_modes(setup, tiny_model_path):
    root, tasks, checkers, url = setup
    common = ("--data-file", str(tasks), "--checker-path", str(checkers), "--no-cache")
    runs = {"local": ("--model", str(tiny_model_path), "--template", "rwkv"),
            "completion": ("--endpoint", url, "--template", "rwkv"),
            "chat": ("--endpoint", url, "--api-mode", "chat")}
    reports = {}
    for name, args in runs.items():
        done = run_evals(root / name, *common, *args)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        reports[name] = report(root / name)
    local_results, local_rows = reports["local"]
    assert sorted(local_rows) == ["custom_contains-words", "custom_exact_match-qa", "custom_fn_judge-judged"]
    assert all(len(rows) == len(QUESTIONS) for rows in local_rows.values())
    for name in ("completion", "chat"):
        results, rows = reports[name]
        assert comparable(rows) == comparable(local_rows), name
        for bench, entry in local_results["benchmarks"].items():
            assert results["benchmarks"][bench]["overall"]["metrics"] == entry["overall"]["metrics"], (name, bench)
    # the prompt each row records is what reached the model: turns as text, or the chat messages
    assert local_rows["custom_exact_match-qa"][0]["prompt"] == f"User: {QUESTIONS[0]}\n\nAssistant:"
    assert reports["completion"][1]["custom_exact_match-qa"][0]["prompt"] == f"User: {QUESTIONS[0]}\n\nAssistant:"
    assert json.loads(reports["chat"][1]["custom_exact_match-qa"][0]["prompt"]) == [
        {"role": "user", "content": QUESTIONS[0]}]
    # the user function: rows 0 and 3 raise, reported with the message; the rest are scored
    judged = local_rows["custom_fn_judge-judged"]
    assert [r["checker_error"] for r in judged] == [
        "ValueError: cannot judge row 0", None, None, "ValueError: cannot judge row 3", None, None]
    for row in judged:
        expected = 0.0 if row["checker_error"] else len(row["output"].split()) / 10
        assert row["scores"] == {"score": expected, "checker_error": float(row["checker_error"] is not None)}
    metrics = local_results["benchmarks"]["custom_fn_judge"]["cases"]["judged"]["metrics"]
    assert metrics["checker_errors"]["value"] == 2
    # the others: each row as its checker says, and the lengths the engine counted
    for row in local_rows["custom_contains-words"]:
        assert row["scores"]["contains"] == float(" the " in f" {row['output'].strip()} ")
    for row in local_rows["custom_exact_match-qa"]:
        assert row["scores"]["exact_match"] == float(row["output"].strip() == "the the")
        assert 0 < row["output_len"] <= 16
    protocol = local_results["benchmarks"]["custom_fn_judge"]["protocol"]
    assert protocol["task_files"]["judged"]["checker"] == "verifiers:judge" and protocol["greedy"] is True


@pytest.mark.slow
def test_sampled_answers_repeat_with_a_seed_and_are_cached_by_their_settings(setup, tiny_model_path):
    root, tasks, checkers, url = setup
    local = ("--model", str(tiny_model_path), "--data-file", str(tasks / "qa.jsonl"))
    sampled = ("--answer-temperature", "1.0", "--answer-top-p", "0.9")
    cache = ("--cache-dir", str(root / "sampling-cache"))

    def outputs(name: str, *args: str) -> tuple[list[str], dict]:
        done = run_evals(root / name, *args)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        results, rows = report(root / name)
        return [r["output"] for r in rows["custom_exact_match-qa"]], results

    first, results = outputs("seed5", *local, *sampled, "--answer-seed", "5", *cache)
    assert results["cache"]["computed"] == len(QUESTIONS)
    protocol = results["benchmarks"]["custom_exact_match"]["protocol"]
    assert protocol["greedy"] is False and protocol["answer_sampling"] == {"temperature": 1.0, "top_p": 0.9, "seed": 5}
    again, _ = outputs("seed5-again", *local, *sampled, "--answer-seed", "5", "--no-cache")
    assert again == first  # computed afresh: the same samples
    cached, results = outputs("seed5-cached", *local, *sampled, "--answer-seed", "5", *cache)
    assert cached == first and results["cache"]["reused"] == len(QUESTIONS)
    other, results = outputs("seed6", *local, *sampled, "--answer-seed", "6", *cache)
    assert results["cache"]["computed"] == len(QUESTIONS)  # another seed is another request
    assert other != first
    greedy, results = outputs("greedy", *local, *cache)
    assert greedy != first and results["cache"]["computed"] == len(QUESTIONS)
    # a sampled answer depends on its request alone, so the server samples the same
    remote, _ = outputs("seed5-remote", "--endpoint", url, "--data-file", str(tasks / "qa.jsonl"), *sampled,
                        "--answer-seed", "5", "--no-cache")
    assert remote == first


def test_a_sampled_request_does_not_depend_on_the_requests_beside_it(tiny_model_path):
    """The local backend seeds each request as a server seeds a one-prompt request, so a cached or
    resumed run, a --limit sample and an endpoint all give a request the same answer."""
    from engine.decoding import row_seed
    from engine.errors import InputError
    from evals.backend import GenerateRequest, LocalBackend

    model = engine.load_model(tiny_model_path)
    backend = LocalBackend(model)
    a, b = (GenerateRequest(text, (), 12, temperature=1.0, seed=9) for text in ("Hello", "World"))
    together, alone = backend.generate([a, b]), backend.generate([b])
    assert together[1] == alone[0]
    ids = [0] + list(model.tokenizer.encode("World"))
    own = model.generate([ids, ids], 12, temperature=1.0, seed=[row_seed(9, 0), row_seed(9, 0)])
    assert own[0].tokens == own[1].tokens == model.generate([ids], 12, temperature=1.0, seed=9)[0].tokens
    with pytest.raises(InputError, match="one int per prompt"):
        model.generate([ids, ids], 4, temperature=1.0, seed=[1])
