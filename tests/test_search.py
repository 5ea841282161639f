"""Step-level search over RWKV states (engine/search.py) on the tiny real model: beam search of
width 1 with greedy expansion is greedy decoding split at the delimiter, the question's prompt is
run once however wide the beam, and MCTS is reproducible across runs and batch sizes."""
from __future__ import annotations

import pytest

import engine
from engine.search import SearchSettings, beam_search, mcts
from evals.rewards.steps import split_steps


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return engine.load_model(tiny_model_path)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # one decoding row of a tiny model is all overhead: two threads that contend on a busy
    # 2-core machine make each step 10x slower
    from engine.server.background import torch_threads

    with torch_threads(1):
        yield


def _prompt(model, text):
    return [0] + list(model.tokenizer.encode(text))


def _length_reward(items):
    """A deterministic stand-in reward: varies with the answer so the search has choices to make."""
    return [(len("".join(steps)) * 37 % 11) / 10 for _, steps in items]


@pytest.mark.parametrize("delimiter", [" ", "e"])
def test_beam_width_one_greedy_is_greedy_decoding_split_at_the_delimiter(tiny, delimiter):
    prompts = [_prompt(tiny, "Q: What is 2 + 3?\nA:"), _prompt(tiny, "Once upon a time")]
    settings = SearchSettings("beam", 30, stop=("Q:",), delimiter=delimiter, max_steps=100, expand=1,
                              beam_width=1, temperature=0.0)
    results = beam_search(tiny, prompts, settings, _length_reward)
    greedy = tiny.generate(prompts, 30, stop=["Q:"])
    for result, want in zip(results, greedy):
        (candidate,) = result.candidates
        assert candidate.tokens == want.tokens and candidate.text == want.text
        # the engine splits where the suite splits a sampled answer into steps (evals/rewards/steps.py)
        assert candidate.steps == split_steps(want.text, delimiter) and len(candidate.steps) > 2
        assert candidate.finish_reason == want.finish_reason


def test_beam_runs_the_question_prefix_once(tiny):
    prompt = _prompt(tiny, "Q: Name a colour.\nA:")
    settings = SearchSettings("beam", 24, delimiter=" ", max_steps=4, expand=3, beam_width=3,
                              temperature=0.8, top_k=20, seed=5)
    counted = {"prompt": 0, "generated": 0}

    def on_tokens(prompt_tokens, generated):
        counted["prompt"] += prompt_tokens
        counted["generated"] += generated

    (forked,) = beam_search(tiny, [prompt], settings, _length_reward, on_tokens=on_tokens)
    assert counted["prompt"] == len(prompt) == forked.prefill_tokens  # K steps of B x 3 children: one prefill
    assert counted["generated"] == forked.generated_tokens > 3 * len(prompt)
    steps = max(len(c.steps) for c in forked.candidates)
    assert steps >= 3 and len(forked.tree) > 9
    counted["prompt"] = 0
    (rerun,) = beam_search(tiny, [prompt], settings, _length_reward, fork=False, on_tokens=on_tokens)
    # without forking every child re-runs the prompt and its whole path
    assert counted["prompt"] == rerun.prefill_tokens > 9 * len(prompt)
    assert [c.tokens for c in rerun.candidates] == [c.tokens for c in forked.candidates]


def test_mcts_is_reproducible_across_runs_and_batch_sizes(tiny):
    prompts = [_prompt(tiny, "Q: What is 2 + 3?\nA:"), _prompt(tiny, "The weather today")]
    settings = SearchSettings("mcts", 24, stop=("Q:",), delimiter=" ", max_steps=3, expand=3, simulations=8,
                              temperature=0.8, top_k=20, seed=11)
    a = mcts(tiny, prompts, settings, _length_reward, batch_size=16)
    b = mcts(tiny, prompts, settings, _length_reward, batch_size=16)
    c = mcts(tiny, prompts, settings, _length_reward, batch_size=2)
    for x, y, z in zip(a, b, c):
        assert x.tree == y.tree == z.tree
        assert [k.to_json() for k in x.candidates] == [k.to_json() for k in y.candidates] == \
            [k.to_json() for k in z.candidates]
    tree = a[0].tree
    assert len(tree) > 1 + 3 * 3
    assert sum(n["visits"] for n in tree if n["parent"] == 0) == tree[0]["visits"]  # visits add up at the root
    other = mcts(tiny, prompts, SearchSettings(**{**settings.__dict__, "seed": 12}), _length_reward)
    assert other[0].tree != a[0].tree


def test_mcts_with_rollouts_scores_complete_answers(tiny):
    prompt = _prompt(tiny, "Once upon a time")
    seen = []

    def reward(items):
        seen.extend(items)
        return _length_reward(items)

    settings = SearchSettings("mcts", 20, delimiter=" ", max_steps=3, expand=2, simulations=3,
                              temperature=0.8, top_k=20, seed=2, rollout=True)
    (result,) = mcts(tiny, [prompt], settings, reward)
    rollouts = [c for c in result.candidates if c.node == -1]
    assert rollouts and all(c.step_scores is None for c in result.candidates)
    for candidate in rollouts:  # a rollout's answer is complete: it ran to a stop or the budget
        assert candidate.finish_reason in ("stop", "length") and candidate.text == "".join(candidate.steps)
        assert (0, candidate.steps) in seen
    assert result.reward_calls == len(seen)


def test_only_finished_steps_pay_for_a_kept_state():
    # a child that ends on the budget, a stop string or token 0 is never expanded: its last token
    # is not fed and no state is copied for it; a finished step's is (its children start there)
    from helpers import SMALL

    model = engine.random_model(SMALL, seed=3)
    fed = []

    class Counting:
        config, tokenizer, device = model.config, model.tokenizer, model.device

        def zero_state(self, batch_size):
            return model.zero_state(batch_size)

        def forward(self, tokens, state=None, logits="all", **kwargs):
            if tokens.shape[1] == 1:
                fed.append(tokens.shape[0])
            return model.forward(tokens, state, logits, **kwargs)

    settings = SearchSettings("beam", 8, stop=("b",), delimiter="a", max_steps=3, expand=4, beam_width=2,
                              temperature=1.0, seed=1)
    token_bytes = [bytes([97 + t % 3]) for t in range(256)]  # three letters: delimiters and stops happen
    Counting.tokenizer = type("Letters", (), {"token_bytes": staticmethod(token_bytes.__getitem__)})()
    (result,) = beam_search(Counting(), [[0, 5, 9]], settings, _length_reward)
    children = [n for n in result.tree if n["parent"] is not None]
    ended = sum(1 for n in children if n["finish"] != "step")
    assert {n["finish"] for n in children} >= {"step", "stop"} and ended
    assert sum(fed) == result.generated_tokens - ended


def test_cut_steps_drops_everything_from_the_cut_on():
    from engine.search import cut_steps

    assert cut_steps([b"ab", b"cd", b"ef"], 3) == ["ab", "c"]
    assert cut_steps([b"ab", b"cd"], 4) == ["ab", "cd"] == cut_steps([b"ab", b"cd"], 9)
    assert cut_steps([b"ab", b"cd"], 0) == [""] == cut_steps([b"ab"], -2)
