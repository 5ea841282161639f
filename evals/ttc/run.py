"""Running a strategy for a generation benchmark: candidates, rewards, votes, rows and metrics.

A benchmark hands over its questions as :class:`Task` values (the bare question for reward
models, the rendered prompt for the policy model, and its own answer extraction and check) and
merges what :func:`run_strategy` returns into its rows, metrics and protocol:

    outcome = run_strategy(evaluation, cfg, tasks, stop, budget, same=..., samples=sampled)
    if outcome:
        outcome.merge(rows, metrics, protocol)

Candidates come from the backend's ``generate`` (``sample``, ``best_of_n``: sample i of a
question uses seed ``--sampling-seed + i``, exactly the requests of ``--samples``, so votes and
``maj@k``/``pass@k`` see the same samples and work over ``--endpoint``) or from a search over the
local engine's states (``beam``, ``mcts``). Per question and strategy ``S`` the row gets scores
``S_majority``, ``S_weighted``, ``S_best``, ``S_min_vote``, ``S_last_vote`` (reward votes; named
``..._oracle`` with the verifier reward), ``S_coverage`` (any candidate right), and the cost
``S_generated_tokens``, ``S_prefill_tokens``, ``S_reward_calls`` (summed over questions), plus
``row["strategy"]``: every candidate with its answer, correctness, reward and step rewards, and
each vote's choice.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evals.backend import GenerateResponse
from evals.generation import sample_requests
from evals.rewards import RewardInput
from evals.rewards.steps import prefixes, split_steps
from evals.ttc.store import StrategyStore
from evals.ttc.votes import DEFINITIONS, REWARD_VOTES, VOTES, choose

COSTS = ("generated_tokens", "prefill_tokens", "reward_calls")  # properties of the strategy
TIMES = ("wall_s",)  # of this run (less when candidates, searches or rewards come from the cache)


@dataclass(frozen=True)
class Task:
    """One question as a benchmark hands it over."""

    question: str  # what a reward model is shown as the user's turn
    prompt: str  # what the policy model continues (exemplars, template and all)
    answer: Callable[[str], Any]  # output text -> extracted answer (None: none)
    correct: Callable[[Any], bool]  # extracted answer -> right?

    def check(self, text: str) -> bool:
        answer = self.answer(text)
        return answer is not None and bool(self.correct(answer))


@dataclass
class Candidate:
    text: str
    steps: list[str]
    finish_reason: str
    reward: float | None = None
    step_rewards: list[float] | None = None


@dataclass
class StrategyOutcome:
    """What a benchmark merges: per-row scores and records, metric specs, the protocol entry."""

    scores: list[dict[str, float]]
    records: list[dict[str, Any]]
    metrics: dict[str, tuple[str, str]]
    protocol: dict[str, Any]

    def merge(self, rows: Sequence[dict[str, Any]], metrics: dict[str, tuple[str, str]],
              protocol: dict[str, Any]) -> None:
        if len(rows) != len(self.scores):
            raise ValueError(f"{len(rows)} rows but the strategy scored {len(self.scores)} questions")
        for row, scores, record in zip(rows, self.scores, self.records):
            row["scores"].update(scores)
            row["strategy"] = record
        metrics.update(self.metrics)
        protocol["strategy"] = self.protocol


class CachedReward:
    """The ``--reward`` model, loaded on first use, its scores stored and reused (:mod:`.store`)."""

    def __init__(self, spec: str, options: Any, store: StrategyStore, questions: int):
        self.spec, self.options, self.store = spec, options, store
        self._reward = None
        self.computed, self.reused = [0] * questions, [0] * questions  # per question

    @property
    def reward(self):
        if self._reward is None:
            from evals.rewards import load

            self._reward = load(self.spec, self.options)
        return self._reward

    def score(self, inputs: Sequence[RewardInput], questions: Sequence[int]) -> list[float]:
        """Rewards of ``inputs`` (``questions[k]``: the question input k belongs to, for the counts)."""
        reward = self.reward
        if reward.oracle:  # the benchmark's own check: nothing to store
            for q in questions:
                self.computed[q] += 1
            return reward.score(inputs)
        requests = [{"question": i.question, "answer": i.answer, "history": [list(t) for t in i.history]}
                    for i in inputs]
        values, fresh = self.store.stored_or_computed(
            "reward", f"reward|{reward.identity()}", requests, lambda todo: reward.score([inputs[k] for k in todo]),
            "reward scores")
        for k, q in enumerate(questions):
            (self.computed if fresh[k] else self.reused)[q] += 1
        return [float(v) for v in values]


def local_model(backend: Any):
    """The engine model behind a (cached) local backend, or None (an endpoint, a replay)."""
    for _ in range(4):
        model = getattr(backend, "model", None)
        if model is not None and hasattr(model, "forward"):
            return model
        backend = getattr(backend, "backend", None)
        if backend is None:
            return None
    return None


def run_strategy(evaluation: Any, cfg: Any, tasks: Sequence[Task], stop: Sequence[str], max_new_tokens: int, *,
                 same: Callable[[Any, Any], bool] = lambda a, b: a == b,
                 samples: Sequence[Sequence[GenerateResponse]] | None = None) -> StrategyOutcome | None:
    """Candidates, rewards and votes of ``cfg.ttc.strategy`` for every task (None for greedy)."""
    ttc = cfg.ttc
    if not ttc.active:
        return None
    store = StrategyStore.for_backend(evaluation.backend)
    reward = CachedReward(ttc.reward, ttc.reward_options(), store, len(tasks)) if ttc.reward else None
    started = time.perf_counter()
    own_s = 0.0  # time outside the recorder's own calls (search, reward models)
    if ttc.strategy in ("sample", "best_of_n"):
        candidates, costs = _sampled(evaluation, cfg, tasks, stop, max_new_tokens, samples)
    else:
        t = time.perf_counter()
        candidates, costs = _searched(evaluation, cfg, tasks, stop, max_new_tokens, reward, store)
        own_s += time.perf_counter() - t
    if reward is not None:
        t = time.perf_counter()
        extra = _score_candidates(reward, tasks, candidates, ttc.step_delimiter)
        own_s += time.perf_counter() - t
        for cost, calls in zip(costs, extra):
            cost["reward_calls"] += calls
    evaluation.add_counts(wall_s=own_s)
    # questions run together, so their time is shared equally: the sum over a case is its total
    share = (time.perf_counter() - started) / max(1, len(tasks))
    for cost in costs:
        cost["wall_s"] = share
    return _outcome(cfg, tasks, candidates, costs, reward, same)


def _sampled(evaluation: Any, cfg: Any, tasks: Sequence[Task], stop: Sequence[str], max_new_tokens: int,
             samples: Sequence[Sequence[GenerateResponse]] | None) -> tuple[list[list[Candidate]], list[dict]]:
    n = cfg.ttc.n
    if samples is not None and all(len(s) >= n for s in samples) and len(samples) == len(tasks):
        responses = [list(s[:n]) for s in samples]  # the --samples requests are these, same seeds
    else:
        flat = evaluation.generate([r for t in tasks for r in sample_requests(
            t.prompt, tuple(stop), max_new_tokens, n, cfg.temperature, cfg.top_p, cfg.sampling_seed, cfg.bos)])
        responses = [flat[i * n:(i + 1) * n] for i in range(len(tasks))]
    candidates, costs = [], []
    for group in responses:
        candidates.append([Candidate(r.text, split_steps(r.text, cfg.ttc.step_delimiter), r.finish_reason)
                           for r in group])
        # each sample runs its whole prompt: nothing is shared between samples over the backend
        costs.append({"generated_tokens": sum(r.generated_tokens for r in group),
                      "prefill_tokens": sum(r.prompt_tokens for r in group), "reward_calls": 0})
    return candidates, costs


def search_settings(cfg: Any, stop: Sequence[str], max_new_tokens: int):
    from engine.search import SearchSettings

    ttc = cfg.ttc
    return SearchSettings(ttc.strategy, max_new_tokens, tuple(stop), ttc.step_delimiter, ttc.max_steps, ttc.expand,
                          ttc.beam_width, ttc.simulations, cfg.temperature, cfg.top_p, 0, cfg.sampling_seed,
                          rollout=ttc.mcts_rollout)


def _searched(evaluation: Any, cfg: Any, tasks: Sequence[Task], stop: Sequence[str], max_new_tokens: int,
              reward: CachedReward, store: StrategyStore) -> tuple[list[list[Candidate]], list[dict]]:
    from engine.batching import auto_decode_rows
    from engine.search import beam_search, mcts

    settings = search_settings(cfg, stop, max_new_tokens)
    identity = reward.reward.identity()
    requests = [{"prompt": t.prompt, "bos": cfg.bos, "question": t.question, "reward": identity,
                 "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}}
                for t in tasks]
    found = store.get("search", None, requests)
    todo = [i for i, r in enumerate(found) if r is None]
    for i, r in enumerate(found):
        if r is not None:
            r["stored"] = True
    if todo and store.read_only:
        raise store.missing("searches", len(todo), len(tasks), {"prompt": tasks[todo[0]].prompt[-200:]})
    model = local_model(evaluation.backend) if todo else None
    if todo and model is None:
        raise RuntimeError(f"--strategy {settings.strategy} needs the local engine's states; this backend "
                           f"({evaluation.backend.info().get('backend')}) has none")
    search = beam_search if settings.strategy == "beam" else mcts
    # a few questions at a time, each chunk stored when it finishes: a kill loses one chunk
    batch_size = cfg.batch_size or (auto_decode_rows(model) if model is not None else 16)
    chunk = max(1, batch_size // settings.expand)
    evaluation.progress.start(f"{evaluation.label} {settings.strategy}", len(tasks), len(tasks))
    try:
        evaluation.progress.advance(len(tasks) - len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            tok = model.tokenizer
            prompts = [([0] if cfg.bos else []) + list(tok.encode(tasks[i].prompt)) for i in part]

            def score(items, part=part):
                inputs = [RewardInput(tasks[part[q]].question, prefixes(steps)[-1] if steps else "",
                                      check=tasks[part[q]].check) for q, steps in items]
                return reward.score(inputs, [part[q] for q, _ in items])

            results = search(model, prompts, settings, score, batch_size=batch_size)
            stored = [{"candidates": [c.to_json() for c in r.candidates], "nodes": len(r.tree),
                       "generated_tokens": r.generated_tokens, "prefill_tokens": r.prefill_tokens,
                       "reward_calls": r.reward_calls} for r in results]
            for c in stored:
                for candidate in c["candidates"]:
                    candidate["tokens"] = len(candidate["tokens"])
            store.put("search", None, [(requests[i], s) for i, s in zip(part, stored)])
            for i, s in zip(part, stored):
                found[i] = s
            evaluation.add_counts(prompt_tokens=sum(r.prefill_tokens for r in results),
                                  generated_tokens=sum(r.generated_tokens for r in results))
            evaluation.progress.advance(len(part))
    finally:
        evaluation.progress.finish()
    candidates, costs = [], []
    for result in found:
        candidates.append([Candidate(c["text"], c["steps"], c["finish_reason"], c["score"], c["step_scores"])
                           for c in result["candidates"]])
        costs.append({**{k: result[k] for k in COSTS}, "stored": bool(result.get("stored"))})
    return candidates, costs


def _score_candidates(reward: CachedReward, tasks: Sequence[Task], candidates: list[list[Candidate]],
                      delimiter: str) -> list[int]:
    """Outcome and step rewards of every candidate that lacks them (samples; rollouts), in one
    batch; returns the reward calls made per question."""
    inputs, where = [], []
    for q, (task, group) in enumerate(zip(tasks, candidates)):
        for c, candidate in enumerate(group):
            if candidate.step_rewards is not None:
                continue
            steps = candidate.steps or split_steps(candidate.text, delimiter)
            for p in prefixes(steps):
                inputs.append(RewardInput(task.question, p, check=task.check))
                where.append((q, c))
    values = reward.score(inputs, [q for q, _ in where]) if inputs else []
    calls = [0] * len(tasks)
    for (q, c), value in zip(where, values):
        candidate = candidates[q][c]
        candidate.step_rewards = (candidate.step_rewards or []) + [value]
        calls[q] += 1
    for group in candidates:
        for candidate in group:
            if candidate.step_rewards and candidate.reward is None:
                candidate.reward = candidate.step_rewards[-1]  # the whole answer's reward
    return calls


def metric_names(ttc: Any) -> tuple[str, ...]:
    """The metrics a strategy adds under these options (for the checks before the work: a gate may
    name them); the same names :func:`_outcome` reports."""
    if not ttc.active:
        return ()
    oracle = ttc.reward == "verifier"  # the benchmark's own check: reported as an oracle
    votes = VOTES if ttc.reward is not None else ("majority",)
    return tuple(_name(ttc.strategy, v, oracle) for v in votes) + tuple(
        f"{ttc.strategy}_{k}" for k in ("coverage",) + COSTS + TIMES)


def _name(strategy: str, vote: str, oracle: bool) -> str:
    return f"{strategy}_{vote}" + ("_oracle" if oracle and vote in REWARD_VOTES else "")


def _outcome(cfg: Any, tasks: Sequence[Task], candidates: list[list[Candidate]], costs: list[dict],
             reward: CachedReward | None, same: Callable[[Any, Any], bool]) -> StrategyOutcome:
    ttc = cfg.ttc
    strategy = ttc.strategy
    model = reward.reward if reward is not None else None
    oracle = bool(model is not None and model.oracle)
    votes = VOTES if model is not None else ("majority",)
    names = {v: _name(strategy, v, oracle) for v in votes}
    all_scores, records = [], []
    for q, (task, group, cost) in enumerate(zip(tasks, candidates, costs)):
        answers = [task.answer(c.text) for c in group]
        right = [a is not None and bool(task.correct(a)) for a in answers]
        if model is not None:
            chosen = choose(answers, [c.reward for c in group], [c.step_rewards for c in group], model.weight, same)
        else:
            chosen = choose(answers, None, None, same=same)
        scores = {names[v]: float(chosen[v] is not None and right[chosen[v]]) for v in votes}
        scores[f"{strategy}_coverage"] = float(any(right))
        scores.update({f"{strategy}_{k}": float(cost[k]) for k in COSTS + TIMES})
        all_scores.append(scores)
        reuse = {"search_stored": cost.get("stored", False)} if strategy in ("beam", "mcts") else {}
        if reward is not None:
            reuse.update(rewards_reused=reward.reused[q], rewards_computed=reward.computed[q])
        records.append({"name": strategy, "chosen": {names[v]: chosen[v] for v in votes}, "cache": reuse,
                        "candidates": [
            {"text": c.text, "steps": len(c.steps), "answer": None if a is None else str(a), "correct": r,
             "reward": c.reward, "step_rewards": c.step_rewards, "finish_reason": c.finish_reason}
            for c, a, r in zip(group, answers, right)]})
    metrics: dict[str, tuple[str, str]] = {name: ("mean", name) for name in names.values()}
    metrics[f"{strategy}_coverage"] = ("mean", f"{strategy}_coverage")
    metrics.update({f"{strategy}_{k}": ("sum", f"{strategy}_{k}") for k in COSTS + TIMES})
    protocol = {**ttc.settings(), "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.sampling_seed,
                "reward": model.describe() if model is not None else None, "oracle": oracle,
                "votes": {names[v]: DEFINITIONS[v] for v in votes}, "coverage": DEFINITIONS["coverage"],
                "cost": {f"{strategy}_generated_tokens": "tokens sampled (every candidate, every search step)",
                         f"{strategy}_prefill_tokens": "prompt tokens the engine ran" + (
                             " (each sample runs its whole prompt)" if strategy in ("sample", "best_of_n") else
                             " (each question's prompt once; a step's tokens once, its children fork its state)"),
                         f"{strategy}_reward_calls": "answers and step prefixes the reward model scored",
                         f"{strategy}_wall_s": "seconds the strategy took in this run (its generation, search and "
                                               "reward model), shared equally among the questions run together",
                         "counting": "tokens and reward calls are what the strategy needs, whether computed in "
                                     "this run or reused from the response cache (rows' strategy.cache says which)"}}
    return StrategyOutcome(all_scores, records, metrics, protocol)
