"""Sampling strategies for generation tasks: n samples per question beside greedy, maj@k and pass@k.

With ``--samples N`` (N > 0) a generation benchmark asks, besides its greedy answer, for N samples
per question at ``--temperature``/``--top-p``; sample i uses seed ``--sampling-seed + i`` (the
same for every question, so a run is reproducible and requests can be cached). For each k in
:func:`ks_for` (1, 2, 4, ... up to N, and N itself):

- ``maj@k``: the answer most often extracted from the first k samples (unparsed ones do not vote;
  ties go to the answer seen first) is judged; 0 when none parsed.
- ``pass@k``: the unbiased estimator of Chen et al. 2021 (Codex, eq. 1) over all N samples with c
  correct: ``1 - C(N - c, k) / C(N, k)``.

:func:`greedy_and_samples` is the plumbing the generation benchmarks share (GSM8K, MATH-500; the
custom module's ``--samples`` uses :func:`sampled_answers`): the greedy answers in one backend
call, the samples in another, cut back into one list per prompt, and :func:`add_sampling` puts
the metrics and the protocol entry in place.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from evals.backend import GenerateRequest, GenerateResponse

T = TypeVar("T")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct, as the product form (no huge binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, found n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority(answers: Sequence[T | None], same: Callable[[T, T], bool] = lambda a, b: a == b) -> T | None:
    """The most frequent non-None answer (``same`` decides equality); ties: the one seen first."""
    groups: list[list[T]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if same(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths


def ks_for(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def sample_requests(context: str, stop: tuple[str, ...], max_new_tokens: int, n: int, temperature: float,
                    top_p: float, seed: int, bos: bool) -> list[GenerateRequest]:
    return [GenerateRequest(context, stop, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + i,
                            bos=bos) for i in range(n)]


def sampling_scores(answers: Sequence[T | None], correct: Sequence[bool],
                    judge: Callable[[T], bool], same: Callable[[T, T], bool] = lambda a, b: a == b
                    ) -> dict[str, float]:
    """``maj@k`` and ``pass@k`` for one question from its N sampled answers and their correctness."""
    n = len(answers)
    if n != len(correct) or n == 0:
        raise ValueError(f"need one correctness flag per sample, found {n} answers and {len(correct)} flags")
    c = sum(bool(x) for x in correct)
    out: dict[str, float] = {}
    for k in ks_for(n):
        voted = majority(answers[:k], same)
        out[f"maj@{k}"] = float(voted is not None and judge(voted))
        out[f"pass@{k}"] = pass_at_k(n, c, k)
    return out


def sampling_metrics(n: int) -> dict[str, tuple[str, str]]:
    return {name: ("mean", name) for k in ks_for(n) for name in (f"maj@{k}", f"pass@{k}")}


def sampling_protocol(n: int, temperature: float, top_p: float, seed: int) -> dict[str, Any]:
    return {"samples": n, "temperature": temperature, "top_p": top_p, "seeds": f"{seed}..{seed + n - 1}",
            "ks": ks_for(n), "pass@k": "unbiased estimator 1 - C(n-c,k)/C(n,k) (Chen et al. 2021)",
            "maj@k": "majority of the first k samples' extracted answers; ties to the first seen"}


def sampled_answers(evaluation: Any, cfg: Any, prompts: Sequence[str], stop: Sequence[str],
                    max_new_tokens: int) -> list[list[GenerateResponse]]:
    """``cfg.samples`` sampled answers per prompt (one backend call; sample i seeded
    ``cfg.sampling_seed + i``), an empty list per prompt without ``--samples``."""
    n = cfg.samples
    if not n:
        return [[] for _ in prompts]
    flat = evaluation.generate([r for p in prompts for r in sample_requests(
        p, tuple(stop), max_new_tokens, n, cfg.temperature, cfg.top_p, cfg.sampling_seed, cfg.bos)])
    return [list(flat[i * n:(i + 1) * n]) for i in range(len(prompts))]


def greedy_and_samples(evaluation: Any, cfg: Any, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int
                       ) -> tuple[list[GenerateResponse], list[list[GenerateResponse]]]:
    """(the greedy answer of each prompt, its ``--samples`` answers); the samples can go to
    :func:`evals.ttc.run.run_strategy`, which reuses them as its candidates when there are enough."""
    greedy = evaluation.generate([GenerateRequest(p, tuple(stop), max_new_tokens, bos=cfg.bos) for p in prompts])
    return greedy, sampled_answers(evaluation, cfg, prompts, stop, max_new_tokens)


def add_sampling(cfg: Any, metrics: dict[str, tuple[str, str]], protocol: dict[str, Any], **extra: Any) -> None:
    """``--samples``' metrics and protocol entry (with ``extra`` keys in it); nothing without it."""
    n = cfg.samples
    if n:
        protocol["sampling"] = {**sampling_protocol(n, cfg.temperature, cfg.top_p, cfg.sampling_seed), **extra}
        metrics.update(sampling_metrics(n))
