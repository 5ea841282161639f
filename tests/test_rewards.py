"""Reward models (evals/rewards): a tiny random Hugging Face reward model scores what a direct
transformers forward gives, the RWKV judge what a manual log-probability computation with the
engine gives, the verifier the benchmark's check; specs and their errors; process scores."""
from __future__ import annotations

import math

import pytest
import torch

import engine
from evals.rewards import RewardError, RewardInput, RewardSpec, VerifierReward, check_available, parse_spec
from evals.rewards.steps import prefixes, split_steps, step_scores
from hf_tiny import build_reward_model

INPUTS = [RewardInput("What is 2 + 2?", "4"),
          RewardInput("Name the capital of France.", "Paris is the capital of France, and a long answer pads."),
          RewardInput("Say nothing.", ""),
          RewardInput("And 3 + 3?", "6", history=(("user", "What is 2 + 2?"), ("assistant", "4")))]


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    pytest.importorskip("transformers")
    return build_reward_model(tmp_path_factory.mktemp("llama-rm"))


def _direct(folder, item, template=True):
    """A plain transformers forward of one input, no batching and no padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    if template:
        text = tokenizer.apply_chat_template(item.messages(), tokenize=False)
        encoded = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    else:
        encoded = tokenizer(item.question, item.answer, return_tensors="pt")
    with torch.no_grad():
        return float(model(**encoded).logits[0, 0])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_hf_reward_equals_a_direct_transformers_forward(hf_llama, batch_size):
    from evals.rewards.hf import HFReward

    reward = HFReward(str(hf_llama), batch_size=batch_size)
    got = reward.score(INPUTS)
    want = [_direct(hf_llama, item) for item in INPUTS]
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(v, 4) for v in got)) == len(got)  # the random model does tell the answers apart
    rendered = reward.render(INPUTS[3])
    assert rendered == "<s><|user|>What is 2 + 2?</s><|assistant|>4</s><|user|>And 3 + 3?</s><|assistant|>6</s>"
    assert reward.weight(0.0) == 0.5 and reward.weight(got[0]) == pytest.approx(1 / (1 + math.exp(-got[0])))
    assert not reward.oracle and reward.describe()["class"] == "LlamaForSequenceClassification"


def test_hf_reward_without_a_chat_template_scores_the_pair(tmp_path):
    pytest.importorskip("transformers")
    from evals.rewards.hf import HFReward

    folder = build_reward_model(tmp_path / "gpt2-rm", arch="gpt2", chat_template=False)
    reward = HFReward(str(folder), batch_size=4)
    assert reward.score(INPUTS[:3]) == pytest.approx([_direct(folder, i, template=False) for i in INPUTS[:3]],
                                                     abs=1e-5)


def test_hf_identity_follows_the_weights(tmp_path):
    pytest.importorskip("transformers")
    from evals.rewards.hf import HFReward

    a = HFReward(str(build_reward_model(tmp_path / "a", seed=1)))
    b = HFReward(str(build_reward_model(tmp_path / "b", seed=1)))
    c = HFReward(str(build_reward_model(tmp_path / "c", seed=2)))
    assert a.identity() == b.identity() != c.identity()


def test_judge_equals_a_manual_log_probability_computation(tiny_model_path):
    from evals.rewards.judge import DEFAULT_PROMPT, JudgeReward

    model = engine.load_model(tiny_model_path)
    judge = JudgeReward(model, batch_size=2)
    got = judge.score(INPUTS[:3])
    tok = model.tokenizer
    for item, value in zip(INPUTS[:3], got):
        prompt = DEFAULT_PROMPT.format(question=item.question, answer=item.answer)
        context = [0] + list(tok.encode(prompt))

        def logprob(continuation: str) -> float:
            ids = list(tok.encode(continuation))
            logits, _ = model.forward(torch.tensor([context + ids]))
            lp = torch.log_softmax(logits[0].double(), dim=-1)  # [T, V]
            return sum(float(lp[len(context) - 1 + j, t]) for j, t in enumerate(ids))

        yes, no = logprob(" Yes"), logprob(" No")
        assert value == pytest.approx(math.exp(yes) / (math.exp(yes) + math.exp(no)), abs=1e-6)
    assert judge.identity().startswith("rwkv:6bc13f3f")
    custom = JudgeReward(model, template="Q {question} A {answer} ok?")
    assert custom.identity() != judge.identity()


def test_judge_prompt_needs_both_fields():
    from evals.rewards.judge import check_template

    with pytest.raises(RewardError, match="must hold {answer}"):
        check_template("only {question}")
    with pytest.raises(RewardError, match="placeholder other than"):
        check_template("{question} {answer} {other}")


def test_verifier_uses_the_benchmark_check():
    verifier = VerifierReward()
    items = [RewardInput("q", "the answer is 4", check=lambda t: t.endswith("4")),
             RewardInput("q", "the answer is 5", check=lambda t: t.endswith("4"))]
    assert verifier.score(items) == [1.0, 0.0] and verifier.oracle
    with pytest.raises(RewardError, match="needs the benchmark's answer check"):
        verifier.score([RewardInput("q", "a")])


@pytest.mark.parametrize("text, kind, target", [
    ("verifier", "verifier", ""),
    ("hf:Skywork/Skywork-Reward-Llama-3.1-8B", "hf", "Skywork/Skywork-Reward-Llama-3.1-8B"),
    ("Skywork/Skywork-Reward-Llama-3.1-8B", "hf", "Skywork/Skywork-Reward-Llama-3.1-8B"),
    ("rwkv:judge.pth", "rwkv", "judge.pth"),
    ("judge.safetensors", "rwkv", "judge.safetensors"),
    ("rwkv7-g1-0.1b", "rwkv", "rwkv7-g1-0.1b"),
])
def test_reward_specs(text, kind, target):
    spec = parse_spec(text)
    assert (spec.kind, spec.target) == (kind, target)


@pytest.mark.parametrize("text, message", [
    ("hf:", "found nothing after 'hf:'"),
    ("something-else", "expected 'verifier', hf:NAME_OR_DIR"),
])
def test_bad_reward_specs(text, message):
    with pytest.raises(RewardError, match=message):
        parse_spec(text)


def test_missing_transformers_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(RewardError, match=r"pip install 'rwkveval\[reward\]'"):
        check_available(RewardSpec("hf", "some/model", "hf:some/model"))


def test_steps_split_back_into_the_answer_and_score_each_prefix():
    text = "First, add.\n\nThen carry the one.\n\n\n\nSo 42.\n\n"
    steps = split_steps(text)
    # a blank run right after a step belongs to the next step (a step needs text before its delimiter)
    assert steps == ["First, add.\n\n", "Then carry the one.\n\n", "\n\nSo 42.\n\n"] and "".join(steps) == text
    assert split_steps("\n\nno step before\n\nthis") == ["\n\nno step before\n\n", "this"]
    assert split_steps("") == [""]
    assert prefixes(steps) == ["First, add.", "First, add.\n\nThen carry the one.", text.rstrip()]
    seen = []

    class Recorder:
        def score(self, inputs):
            seen.extend(inputs)
            return [float(len(i.answer)) for i in inputs]

    assert step_scores(Recorder(), "q", steps) == [float(len(p)) for p in prefixes(steps)] == [11.0, 32.0, 42.0]
    assert [i.question for i in seen] == ["q"] * 3
