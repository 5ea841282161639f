"""Test-time compute in the suite (evals/ttc): votes against hand-computed examples; through the
plugin (pytester, in process) on the fake backend best_of_n with the verifier equals pass@N and
majority equals maj@k on the same samples, a Hugging Face reward ranks candidates and its scores
are stored, usage errors; on the tiny real model a beam search is stored per question, resumed
and rescored without the model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import evals.plugin  # noqa: F401  (imported once here: in-process runs must not re-import its C extensions)
import evals.test_custom  # noqa: F401
from evals.fakes import PLUGIN_CONFTEST
from evals.ttc.votes import choose, vote_best, vote_majority, vote_weighted

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- votes

def test_votes_hand_computed():
    answers = ["4", "5", "4", None, "5"]
    rewards = [0.2, 0.9, 0.3, 1.0, 0.1]
    steps = [[0.9, 0.8], [0.2, 0.95], [0.7, 0.6], [0.99], [0.5, 0.5]]
    chosen = choose(answers, rewards, steps)
    # majority: "4" and "5" twice each -> the first seen, "4" (candidate 0)
    # weighted: "4" 0.2 + 0.3 = 0.5, "5" 0.9 + 0.1 = 1.0 -> candidate 1
    # best: candidate 3 has the highest reward but no answer -> None (wrong)
    # min_vote: "4" 0.8 + 0.6 = 1.4, "5" 0.2 + 0.5 = 0.7 -> candidate 0
    # last_vote: "4" 0.8 + 0.6 = 1.4, "5" 0.95 + 0.5 = 1.45 -> candidate 1
    assert chosen == {"majority": 0, "weighted": 1, "best": None, "min_vote": 0, "last_vote": 1}
    assert choose(answers, None, None) == {"majority": 0}


def test_votes_group_by_the_benchmark_equivalence_and_weights():
    same = lambda a, b: float(a) == float(b)  # noqa: E731
    answers = ["0.5", "1", ".50", "1.0", "1"]
    assert vote_majority(answers, same) == 1  # "1" three times
    assert vote_weighted(answers, [0.9, 0.1, 0.9, 0.1, 0.1], same) == 0  # 1.8 against 0.3
    assert vote_best(["a", "b"], [0.5, 0.5]) == 0 and vote_best([], []) is None
    assert vote_majority([None, None]) is None and vote_weighted([None], [1.0]) is None
    # weights go through the reward's weight (a logit's sigmoid): min of logits -> min of weights
    import math
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    chosen = choose(["a", "b"], [2.0, -1.0], [[3.0, -4.0], [0.0, 0.0]], weight=sigmoid)
    assert chosen["weighted"] == 0 and chosen["min_vote"] == 1 and chosen["last_vote"] == 1


# ---------------------------------------------------------------- through the plugin, fake backend

QUESTIONS = [("capital of France?", "Paris"), ("capital of Norway?", "Oslo"), ("capital of Spain?", "Madrid"),
             ("capital of Germany?", "Berlin")]
# generated texts cycle through these per call: question q's samples are answers[3q .. 3q+2]
FAKE = PLUGIN_CONFTEST.replace("FakeBackend()", "FakeBackend(answers=('Paris', 'Berlin', 'Paris', 'Rome', 'Oslo'))")


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(FAKE)
    pytester.makepyfile(test_custom_suite="from evals.test_custom import custom_selection, pytest_generate_tests, "
                                          "test_custom\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    lines = [json.dumps({"id": f"q{i}", "prompt": q, "answer": a}) for i, (q, a) in enumerate(QUESTIONS)]
    (pytester.path / "capitals.jsonl").write_text("\n".join(lines) + "\n")
    return pytester


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", "--data-file", "capitals.jsonl", *args)


def untimed(scores: dict) -> dict:
    """Scores without the strategy's wall time (the only one that differs between runs)."""
    return {k: v for k, v in scores.items() if not k.endswith("_wall_s")}


def rows_of(suite: pytest.Pytester) -> list[dict]:
    path = suite.path / "reports" / "latest" / "samples" / "custom_exact_match-capitals.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def results_of(suite: pytest.Pytester) -> dict:
    return json.loads((suite.path / "reports" / "latest" / "results.json").read_text())


def test_best_of_n_with_the_verifier_is_pass_at_n_and_majority_is_maj_at_k(suite):
    result = run(suite, "--samples", "3", "--strategy", "best_of_n", "--n", "3", "--reward", "verifier")
    assert result.ret == 0, result.stdout.str()
    rows = rows_of(suite)
    # samples: q0 Paris Berlin Paris; q1 Rome Oslo Paris; q2 Berlin Paris Rome; q3 Oslo Paris Berlin
    assert [r["scores"]["pass@3"] for r in rows] == [1.0, 1.0, 0.0, 1.0]
    assert [r["scores"]["maj@3"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    for row in rows:
        assert row["scores"]["best_of_n_best_oracle"] == row["scores"]["pass@3"] == row["scores"]["best_of_n_coverage"]
        assert row["scores"]["best_of_n_majority"] == row["scores"]["maj@3"]
        assert [c["text"] for c in row["strategy"]["candidates"]] == row["sample_outputs"]
    assert rows[1]["strategy"]["chosen"] == {"best_of_n_majority": 0, "best_of_n_weighted_oracle": 1,
                                             "best_of_n_best_oracle": 1, "best_of_n_min_vote_oracle": 1,
                                             "best_of_n_last_vote_oracle": 1}
    bench = results_of(suite)["benchmarks"]["custom_exact_match"]
    metrics = bench["cases"]["capitals"]["metrics"]
    assert metrics["best_of_n_best_oracle"]["value"] == 0.75 and metrics["best_of_n_best_oracle"]["stderr"]
    assert metrics["best_of_n_reward_calls"]["value"] == 12  # one step per candidate
    strategy = bench["protocol"]["strategy"]
    assert strategy["oracle"] and strategy["n"] == 3 and strategy["reward"]["kind"] == "verifier"


def test_sample_strategy_without_a_reward_votes_by_majority(suite):
    result = run(suite, "--strategy", "sample", "--n", "3", "--samples", "3")
    assert result.ret == 0, result.stdout.str()
    rows = rows_of(suite)
    assert [r["scores"]["sample_majority"] for r in rows] == [r["scores"]["maj@3"] for r in rows] == [1, 0, 0, 0]
    assert "sample_best" not in rows[0]["scores"] and rows[0]["scores"]["sample_reward_calls"] == 0
    assert all(r["scores"]["sample_wall_s"] >= 0 for r in rows)


def _fake_suite(folder: Path) -> Path:
    """The files of ``suite``, written without pytester (see the test below)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conftest.py").write_text(FAKE)
    (folder / "test_custom_suite.py").write_text("from evals.test_custom import custom_selection, "
                                                 "pytest_generate_tests, test_custom\n")
    (folder / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    lines = [json.dumps({"id": f"q{i}", "prompt": q, "answer": a}) for i, (q, a) in enumerate(QUESTIONS)]
    (folder / "capitals.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_hf_reward_ranks_candidates_and_its_scores_are_stored(tmp_path):
    # Without the pytester fixture: it drops every module a test imports when the test ends, and
    # the torch operator libraries that transformers pulls in cannot be registered twice in one
    # process (later tests would fail to load a model).
    pytest.importorskip("transformers")
    import os
    import subprocess
    import sys

    from evals.rewards import RewardInput, load
    from hf_tiny import build_reward_model

    folder = build_reward_model(tmp_path / "rm")
    reward = load(f"hf:{folder}")
    root = _fake_suite(tmp_path / "suite")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model", "fake.pth", "--data-file",
               "capitals.jsonl", "--strategy", "best_of_n", "--n", "3", "--reward", f"hf:{folder}",
               "--step-delimiter", " "]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))},
           "PYTHONPATH": str(REPO)}

    def run_and_read() -> list[dict]:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        path = root / "reports" / "latest" / "samples" / "custom_exact_match-capitals.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    first = run_and_read()
    results = json.loads((root / "reports" / "latest" / "results.json").read_text())
    strategy = results["benchmarks"]["custom_exact_match"]["protocol"]["strategy"]
    assert not strategy["oracle"] and strategy["reward"]["kind"] == "hf"
    computed = sum(r["strategy"]["cache"]["rewards_computed"] for r in first)
    assert computed == sum(r["scores"]["best_of_n_reward_calls"] for r in first) == 12  # one step each
    assert sum(r["strategy"]["cache"]["rewards_reused"] for r in first) == 0
    for row in first:
        assert {"best_of_n_weighted", "best_of_n_best", "best_of_n_min_vote", "best_of_n_last_vote"} <= set(row["scores"])
        texts = [c["text"] for c in row["strategy"]["candidates"]]
        question = QUESTIONS[int(row["doc_id"][1:])][0]
        want = reward.score([RewardInput(question, t.strip()) for t in texts])
        assert [c["reward"] for c in row["strategy"]["candidates"]] == pytest.approx(want, abs=1e-5)
        best = max(range(3), key=lambda i: (want[i], -i))
        assert row["strategy"]["chosen"]["best_of_n_best"] == best
    again = run_and_read()  # every reward comes from the cache
    assert sum(r["strategy"]["cache"]["rewards_computed"] for r in again) == 0
    assert sum(r["strategy"]["cache"]["rewards_reused"] for r in again) == computed
    assert [untimed(r["scores"]) for r in again] == [untimed(r["scores"]) for r in first]


@pytest.mark.parametrize("args, message", [
    (["--strategy", "best_of_n"], "*--strategy best_of_n needs --reward SPEC*verifier*"),
    (["--strategy", "beam"], "*--strategy beam needs --reward SPEC*"),
    (["--reward", "verifier"], "*--reward ranks candidates of a strategy*--strategy sample*"),
    (["--strategy", "beam", "--reward", "verifier", "--endpoint", "http://127.0.0.1:9"],
     "*--strategy beam searches over the local engine's RNN states*--strategy sample or best_of_n*"),
    (["--strategy", "sample", "--reward", "nonsense"], "*--reward 'nonsense': expected 'verifier'*"),
    (["--strategy", "sample", "--reward", "verifier", "--judge-prompt", "x.txt"], "*--judge-prompt*needs --reward rwkv*"),
    (["--strategy", "sample", "--reward", "verifier", "--trust-remote-code"], "*--trust-remote-code*needs --reward hf*"),
    (["--strategy", "sample", "--mcts-rollout"], "*--mcts-rollout*needs --strategy mcts*"),
    (["--strategy", "sample", "--step-delimiter", ""], "*--step-delimiter*non-empty delimiter*"),
    (["--strategy", "sample", "--n", "0"], "*--n*"),
])
def test_usage_errors(suite, args, message):
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_missing_transformers_is_a_usage_error(suite, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    result = run(suite, "--strategy", "best_of_n", "--reward", "hf:some/reward-model")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*needs the transformers package*pip install 'rwkveval?reward?'*"])  # ? for [ ]


# ---------------------------------------------------------------- the tiny real model: search, resume, rescore

@pytest.fixture
def engine_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tiny_model_path) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["evals.plugin"]\n')
    pytester.makepyfile(test_custom_suite="from evals.test_custom import custom_selection, pytest_generate_tests, "
                                          "test_custom\n")
    return pytester


def _questions(path: Path, n: int) -> None:
    lines = [json.dumps({"id": f"q{i}", "prompt": f"Q: what is {i} + 1?\nA:", "answer": str(i + 1)})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def test_beam_search_is_stored_per_question_resumed_and_rescored(engine_suite, tiny_model_path):
    from engine.server.background import torch_threads

    # --rootdir and --report-dir pinned: absolute paths among the arguments would move the rootdir to /
    args = ["-p", "no:cacheprovider", "--rootdir", str(engine_suite.path), "--report-dir",
            str(engine_suite.path / "reports"), "--model", str(tiny_model_path), "--strategy", "beam", "--reward", "verifier",
            "--beam-width", "2", "--expand", "2", "--max-steps", "3", "--max-new-tokens", "12", "--step-delimiter", " ",
            "--temperature", "0.8"]
    data = engine_suite.path / "data"
    data.mkdir()
    _questions(data / "sums.jsonl", 2)
    with torch_threads(1):
        assert engine_suite.runpytest(*args, "--data-file", str(data / "sums.jsonl")).ret == 0
        first = rows_of_case(engine_suite, "sums")
        _questions(data / "sums.jsonl", 3)  # one more question: the first two searches are stored
        assert engine_suite.runpytest(*args, "--data-file", str(data / "sums.jsonl")).ret == 0
        second = rows_of_case(engine_suite, "sums")
        assert [r["strategy"]["cache"]["search_stored"] for r in second] == [True, True, False]
        assert [r["strategy"]["candidates"] for r in second[:2]] == [r["strategy"]["candidates"] for r in first]
        row = second[2]
        assert row["scores"]["beam_prefill_tokens"] == len(("Q: what is 2 + 1?\nA:").encode()) + 1  # once, with token 0
        assert row["scores"]["beam_generated_tokens"] > 0 and len(row["strategy"]["candidates"]) >= 1
        assert engine_suite.runpytest(*args, "--data-file", str(data / "sums.jsonl"), "--rescore").ret == 0
        assert [untimed(r["scores"]) for r in rows_of_case(engine_suite, "sums")] == [untimed(r["scores"]) for r in second]


def rows_of_case(suite: pytest.Pytester, case: str) -> list[dict]:
    path = suite.path / "reports" / "latest" / "samples" / f"custom_exact_match-{case}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]



def test_best_of_n_over_an_endpoint(engine_suite, tiny_model_path):
    """Samples and votes need no RNN state: best_of_n runs against an OpenAI-compatible server."""
    import engine
    from engine.server import ServerConfig, create_app
    from engine.server.background import serve_in_thread, torch_threads

    data = engine_suite.path / "sums.jsonl"
    _questions(data, 2)
    model = engine.load_model(tiny_model_path)
    with torch_threads(1), serve_in_thread(create_app(model, ServerConfig(model_name="tiny"))) as url:
        result = engine_suite.runpytest("-p", "no:cacheprovider", "--rootdir", str(engine_suite.path), "--report-dir",
                                        str(engine_suite.path / "reports"), "--endpoint", url, "--data-file", str(data),
                                        "--strategy", "best_of_n", "--n", "2", "--samples", "2", "--reward", "verifier",
                                        "--max-new-tokens", "8", "--temperature", "0.9")
    assert result.ret == 0, result.stdout.str()
    rows = rows_of_case(engine_suite, "sums")
    for row in rows:
        # the custom benchmark keeps its samples stripped; candidates keep the text as generated
        assert [c["text"].strip() for c in row["strategy"]["candidates"]] == row["sample_outputs"]
        assert row["scores"]["best_of_n_majority"] == row["scores"]["maj@2"]
        assert row["scores"]["best_of_n_best_oracle"] == row["scores"]["pass@2"]
        assert row["scores"]["best_of_n_prefill_tokens"] > 0


def test_step_delimiter_reads_escapes():
    from evals.ttc.config import step_delimiter

    assert step_delimiter("\\n\\n") == "\n\n" and step_delimiter("Step") == "Step" and step_delimiter("\\t") == "\t"


def test_stored_or_computed_is_the_one_reuse_rule_for_rewards(tmp_path):
    """Test-time-compute rewards and plain-text rewards (CharacterEval) both go through
    StrategyStore.stored_or_computed: stored values reused, the rest computed once and stored,
    under the response cache's own request key; a read-only store (--rescore) refuses to compute."""
    from types import SimpleNamespace

    from evals.cache import ResponseCache, request_key
    from evals.cache import CacheError as StoreError
    from evals.rewards import RewardInput
    from evals.rewards.plain import cached_scores
    from evals.ttc.run import CachedReward
    from evals.ttc.store import StrategyStore

    cache = ResponseCache.open(tmp_path)
    store = StrategyStore(cache, "policy")
    asked: list[list[int]] = []

    def compute(todo):
        asked.append(list(todo))
        return [float(k) for k in todo]

    requests = [{"q": "a"}, {"q": "b"}]
    assert store.stored_or_computed("reward", "reward|m", requests, compute) == ([0.0, 1.0], [True, True])
    more = requests + [{"q": "c"}]
    assert store.stored_or_computed("reward", "reward|m", more, compute) == ([0.0, 1.0, 2.0], [False, False, True])
    assert asked == [[0, 1], [2]]
    key, canonical = request_key("reward", {"q": "c"})
    assert canonical == '{"kind":"reward","q":"c"}' and cache.get_many("reward|m", [key]) == {key: ("reward", "2.0")}
    with pytest.raises(StoreError, match="--rescore: 1 of 1 reward values were never stored"):
        StrategyStore(cache, "policy", read_only=True).stored_or_computed("reward", "reward|m", [{"q": "d"}],
                                                                          compute, "reward values")

    class Model:
        oracle, calls = False, []

        def identity(self):
            return "fake"

        def score(self, inputs):
            self.calls.append(len(inputs))
            return [0.5] * len(inputs)

    reward = CachedReward("fake", None, store, questions=2)
    reward._reward = Model()
    inputs = [RewardInput("q", "x"), RewardInput("q", "y")]
    assert reward.score(inputs, [0, 1]) == [0.5, 0.5] and reward.score(inputs, [0, 1]) == [0.5, 0.5]
    assert Model.calls == [2] and reward.computed == [1, 1] and reward.reused == [1, 1]

    hf = SimpleNamespace(identity=lambda: "hf", model=None, tokenizer=None)
    stored = store.get("reward", "reward|hf", [{"text": "t", "max_tokens": 8, "eos": True, "batch": 1}])
    assert stored == [None]
    store.put("reward", "reward|hf", [({"text": "t", "max_tokens": 8, "eos": True, "batch": 1}, 3.0)])
    assert cached_scores(hf, ["t"], store, max_tokens=8) == ([3.0], [False])  # stored: no model needed
    cache.close()
