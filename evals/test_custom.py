"""The user's own task set: ``pytest evals -k custom --data-file my.jsonl`` (or a folder of JSONL
files, one case per file), evaluated without writing code, locally or against any ``--endpoint``.

Data (``evals/task_files.py``): each line a JSON object::

    {"id": "q1", "prompt": "What is the capital of France?", "answer": "Paris"}
    {"id": "q2", "prompt": "Which is a mammal?", "choices": ["trout", "whale", "gull"], "answer": 1}
    {"id": "q3", "prompt": "What is 6 x 7?", "answer": "42", "checker": "numeric"}

``prompt`` (required, non-empty text); ``answer``: the reference (for multiple choice the index of
the correct choice, or its text); ``choices``; ``id`` (default: the line number); ``checker``: the
row's own checker. Other field names through ``--field-map`` or a sidecar's ``[fields]``. A
sidecar ``<stem>.task.toml`` names the file's checker and normalisations. A malformed row (not
UTF-8, bad JSON, a lone surrogate escape, a missing field, a repeated id, an answer its checker
cannot use) is an error naming the file and the line. Count: whatever the file holds; ``--limit``
samples it like any benchmark.

Context budget: before any model work, every selected prompt as it is sent (against an endpoint:
with ``--chat-template`` and ``--system-prompt`` applied; in chat mode the messages' texts, the
server's own turn markers not being known here), with its longest choice, must fit
``--context-budget`` tokens, less ``--max-new-tokens`` for a generated answer; a longer one stops
the case with ``file:line``, its token count and the budget (nothing is cut silently).

Protocol. The prompt goes through ``--template`` (``rwkv``: ``System: {--system-prompt}\\n\\n``
``User: {prompt}\\n\\nAssistant:``); against an endpoint, ``--chat-template`` or ``--api-mode chat``
wrap it on the way (the row's ``prompt`` records what was sent: the templated text, or the chat
messages as JSON). By the file's checker (``evals/checkers.py``; default ``--custom-metric``, else
``multiple_choice`` when the first row has ``choices``, else ``exact_match``):

- ``multiple_choice``: log-likelihood of `` {choice}`` after the prompt; ``acc`` and ``acc_norm``
  (per character, as lm-evaluation-harness).
- every other checker: one generated answer (greedy, or sampled with ``--answer-temperature``,
  ``--answer-top-p``, ``--answer-seed``; stop at a blank line, ``\\n\\nUser:`` with ``--template
  rwkv``, the server's own end of turn in chat mode; ``--max-new-tokens``), stripped, then checked.
  ``exact_match`` also takes ``--samples N`` (``maj@k``/``pass@k``) and ``--strategy`` (votes over
  sampled or searched candidates, ``evals/ttc``).

Each generated row records the rendered ``prompt``, ``output``, ``output_len`` (tokens, from the
backend's count), ``checker``, ``extracted``, ``checker_error`` (why the checker could not score
it: then its score is 0 and ``checker_errors`` counts it) and its ``scores``; a ``rouge`` row also
``rouge_segmentation``, the segmentation ``--rouge-segmentation`` gave that pair (``auto``
decides per pair, by script).

Report: benchmark ``custom_<checker>`` (``custom_exact_match``, ``custom_numeric``,
``custom_fn_<function>``, ...; ``custom_mixed`` for a file whose rows name several checkers), one
case per file, so gates read ``custom_exact_match/capitals.exact_match>=0.8``.

Reference scores: none (the user's data); the report records the file's sha256 and its checkers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import DataError, file_sha256, iter_lines
from evals.answer_checking import exact_match, match_key
from evals.backend import GenerateRequest, GenerateResponse, LoglikelihoodRequest
from evals.checkers import Checked, CheckOptions, Checkers
from evals.generation import add_sampling, sampled_answers, sampling_metrics, sampling_scores
from evals.multiple_choice import ACC_AND_NORM, choose, split_flat
from evals.text_metrics import describe_embedding_model, rouge_protocol
from evals.suite import Declared
from evals.task_files import TaskFile, data_files, load_task, task_file
from evals.templates import RWKV_STOP, as_sent, chat_messages, rwkv_chat
from evals.ttc.run import Task, metric_names, run_strategy

BENCHMARK = "custom"
COMPLETION_STOP = ("\n\n",)
CASE_PARAM = "custom_case"


def task_files(config) -> dict[str, TaskFile]:
    """{case: its TaskFile} for the run's --data-file (cheap: cached per file)."""
    return {case: task_file(case, path, config.custom_metric, config.field_map)
            for case, path in data_files(Path(config.data_file)).items()}


def case_metrics(task: TaskFile, config) -> dict[str, tuple[str, str]]:
    """What a file's case reports: its checker's metrics, with samples for exact_match."""
    names = task.metrics()
    if task.benchmark == "custom_exact_match" and config.samples:
        names.update(sampling_metrics(config.samples))
    return names


def declare(config) -> list[Declared]:
    """One benchmark per checker (custom_exact_match, custom_numeric, custom_mixed, ...), its cases
    the files scored by it."""
    if config.data_file is None:
        return []
    try:
        tasks = task_files(config)
    except DataError as error:
        raise pytest.UsageError(str(error)) from None
    by_benchmark: dict[str, list[TaskFile]] = {}
    for task in tasks.values():
        by_benchmark.setdefault(task.benchmark, []).append(task)
    out = []
    for benchmark, members in sorted(by_benchmark.items()):
        names = case_metrics(members[0], config)
        strategy = metric_names(config.ttc) if benchmark == "custom_exact_match" else ()
        chance = tuple(ACC_AND_NORM) if benchmark == "custom_multiple_choice" else ()
        out.append(Declared(benchmark, tuple(t.case for t in members), tuple(names) + strategy, chance=chance))
    return out


def load(path: Path, metric: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """The checked rows of one file and its checker (``metric``: the default checker)."""
    task = task_file(path.stem, path, metric)
    return load_task(task), task.default.text


def check_budget(path: Path, docs: Sequence[dict[str, Any]], prompts: Sequence[str],
                 count_tokens: Callable[[str, bool], int], bos: bool, budget: int, answer_tokens: int) -> None:
    """Every prompt (with its longest choice) must fit ``budget`` tokens less ``answer_tokens``,
    else a :class:`DataError` naming file:line, the count and the budget.

    Only texts whose UTF-8 length could exceed the room are tokenized (a token is at least one
    byte), so a file of short rows costs nothing here.
    """
    room = budget - answer_tokens
    for doc, prompt in zip(docs, prompts):
        choices = doc["choices"] if "gold" in doc else ()  # a generated answer's choices are not appended
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


def render_prompt(prompt: str, template: str, system: str | None = None) -> str:
    return rwkv_chat((), prompt, system) if template == "rwkv" else prompt


def sent_prompt(context: str, config) -> str:
    """What the model receives for ``context``: a remote backend's template or chat messages applied."""
    remote = config.remote
    if remote is None:
        return context
    return as_sent(context, remote.api_mode, remote.chat_template, remote.system_prompt)


def budget_text(context: str, config) -> str:
    """The text the context budget counts for a generated answer: what is sent (:func:`sent_prompt`),
    or in chat mode the messages' contents (the server adds turn markers this side cannot count)."""
    remote = config.remote
    if remote is not None and remote.api_mode == "chat":
        return "\n\n".join(m["content"] for m in chat_messages(context, remote.system_prompt))
    return sent_prompt(context, config)


def output_lengths(backend: Any, responses: Sequence[GenerateResponse]) -> list[tuple[int, str | None]]:
    """(tokens, None) as the backend reported them, or (tokens, how counted) for an answer whose
    server reported no count: the backend's tokenizer, else RWKV's World tokenizer."""
    out: list[tuple[int, str | None]] = []
    for response in responses:
        if response.generated_tokens > 0 or not response.text:
            out.append((response.generated_tokens, None))
            continue
        try:
            out.append((backend.count_tokens(response.text, False), "backend tokenizer"))
        except (RuntimeError, ValueError):  # a server without /tokenize, a replay without the count
            from engine.tokenizer import WORLD_VOCAB_SIZE, get_tokenizer

            out.append((len(get_tokenizer(WORLD_VOCAB_SIZE).encode(response.text)), "rwkv world tokenizer"))
    return out


def check_outputs(checkers: Checkers, docs: Sequence[dict[str, Any]], outputs: Sequence[str]) -> list[Checked]:
    """One verdict per doc, each by its own checker (docs grouped by checker, each group at once)."""
    verdicts: list[Checked | None] = [None] * len(docs)
    groups: dict[Any, list[int]] = {}
    for i, doc in enumerate(docs):
        groups.setdefault(doc["checker"], []).append(i)
    for spec, members in groups.items():
        found = checkers.check(spec, [outputs[i] for i in members], [docs[i]["target"] for i in members],
                               [docs[i]["row"] for i in members], [docs[i]["choices"] for i in members])
        for i, verdict in zip(members, found):
            verdicts[i] = verdict
    return verdicts


def scored_row(doc: dict[str, Any], prompt: str, response: GenerateResponse, length: tuple[int, str | None],
               verdict: Checked, task: TaskFile) -> dict[str, Any]:
    spec = doc["checker"]
    names = ["score"] if task.mixed else [n for n in task.metrics() if n != "checker_errors"]
    if verdict.error is None:
        scores = {"score": verdict.scores[spec.metric]} if task.mixed else dict(verdict.scores)
    else:
        scores = dict.fromkeys(names, 0.0)
    scores["checker_error"] = float(verdict.error is not None)
    row = {"doc_id": doc["doc_id"], "prompt": prompt, "target": doc["answer"], "output": response.text,
           "finish_reason": response.finish_reason, "output_len": length[0], "checker": spec.text,
           "extracted": verdict.extracted, "checker_error": verdict.error, "scores": scores, **verdict.details}
    if length[1] is not None:
        row["output_len_from"] = length[1]
    return row


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


def choice_rows(evaluation, cfg, docs: Sequence[dict[str, Any]], prompts: Sequence[str]) -> list[dict[str, Any]]:
    per_doc = [[LoglikelihoodRequest(p, " " + c, cfg.bos) for c in d["choices"]] for d, p in zip(docs, prompts)]
    flat = evaluation.loglikelihood([r for rs in per_doc for r in rs])
    rows = []
    for d, p, lps in zip(docs, prompts, split_flat(flat, [len(rs) for rs in per_doc])):
        chosen = choose(lps, d["gold"], d["choices"])
        rows.append({"doc_id": d["doc_id"], "prompt": p, "target": d["gold"], "choice_logprobs": lps,
                     "extracted": chosen["extracted"], "extracted_norm": chosen["extracted_norm"],
                     "n_options": len(lps), "scores": chosen["scores"]})
    return rows


def answer_request(context: str, stop: tuple[str, ...], cfg) -> GenerateRequest:
    """The main answer's request: greedy, or sampled with the --answer-* settings (in the cache key)."""
    if cfg.answer_temperature > 0:
        return GenerateRequest(context, stop, cfg.max_new_tokens, temperature=cfg.answer_temperature,
                               top_p=cfg.answer_top_p, seed=cfg.answer_seed, bos=cfg.bos)
    return GenerateRequest(context, stop, cfg.max_new_tokens, bos=cfg.bos)


def generated_rows(evaluation, cfg, task: TaskFile, docs: Sequence[dict[str, Any]], contexts: Sequence[str],
                   protocol: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, ...], tuple[str, ...]]:
    """(rows, stop, normalisations): one answer per doc, checked by its checker."""
    chat = cfg.remote is not None and cfg.remote.api_mode == "chat"
    stop = RWKV_STOP if cfg.template == "rwkv" else (() if chat else COMPLETION_STOP)
    responses = evaluation.generate([answer_request(c, stop, cfg) for c in contexts])
    steps = task.normalize if task.normalize is not None else cfg.match_normalize
    options = CheckOptions(steps, cfg.embedding_model, cfg.checker_path, cfg.checker_timeout, cfg.rouge_segmentation)
    with Checkers(options) as checkers:
        verdicts = check_outputs(checkers, docs, [r.text.strip() for r in responses])
    lengths = output_lengths(evaluation.backend, responses)
    rows = [scored_row(d, sent_prompt(c, cfg), r, n, v, task)
            for d, c, r, n, v in zip(docs, contexts, responses, lengths, verdicts)]
    sampled = cfg.answer_temperature > 0
    protocol.update(stop=list(stop), greedy=not sampled, max_new_tokens=cfg.max_new_tokens,
                    output_len="generated tokens the backend reported (a server's usage.completion_tokens)")
    if sampled:
        protocol["answer_sampling"] = {"temperature": cfg.answer_temperature, "top_p": cfg.answer_top_p,
                                       "seed": cfg.answer_seed}
    if cfg.system_prompt is not None:
        protocol["system_prompt"] = cfg.system_prompt
    if cfg.remote is not None:
        protocol["sent_as"] = "chat messages" if chat else (f"chat template {cfg.remote.chat_template}"
                                                            if cfg.remote.chat_template else "completion text")
    kinds = {d["checker"].kind for d in docs}
    if kinds & {"exact_match", "contains", "regex"}:
        protocol["normalize"] = list(steps)
    if "rouge" in kinds:
        protocol.update(rouge_protocol(cfg.rouge_segmentation))
    if "semantic" in kinds:
        protocol["embedding_model"] = describe_embedding_model(cfg.embedding_model)
        protocol["similarity"] = "cosine of normalised sentence embeddings"
    if "function" in kinds:
        protocol["checker_timeout_s"] = cfg.checker_timeout
        protocol["checker_path"] = [str(p) for p in cfg.checker_path]
    return rows, stop, steps


def sample_scores(answers: Sequence[str], target: str, steps: Sequence[str]) -> dict[str, float]:
    """``maj@k``/``pass@k`` of one question's stripped sampled answers; votes by :func:`match_key`."""
    return sampling_scores([match_key(a, steps) for a in answers], [exact_match(a, target, steps) for a in answers],
                           lambda key: exact_match(key, target, steps))


def strategy_tasks(docs: Sequence[dict[str, Any]], contexts: Sequence[str], steps: Sequence[str]) -> list[Task]:
    """The questions as ``--strategy`` sees them: candidates vote by :func:`match_key`, as samples do."""
    return [Task(d["prompt"], c, lambda text: match_key(text.strip(), steps),
                 lambda key, t=d["target"]: exact_match(key, t, steps)) for d, c in zip(docs, contexts)]


def exact_match_extras(evaluation, cfg, docs, contexts, rows, stop, steps, metrics, protocol) -> None:
    """``--samples`` (maj@k, pass@k) and ``--strategy`` votes beside the main answer."""
    sampled = sampled_answers(evaluation, cfg, contexts, stop, cfg.max_new_tokens)
    if cfg.samples:
        for doc, row, group in zip(docs, rows, sampled):
            answers = [s.text.strip() for s in group]
            row["sample_outputs"] = answers
            row["scores"].update(sample_scores(answers, doc["target"], steps))
        add_sampling(cfg, metrics, protocol, votes="match_key: a number when --match-normalize has numbers and "
                                                   "the answer reads as one, else the normalised text; empty: no vote")
    outcome = run_strategy(evaluation, cfg, strategy_tasks(docs, contexts, steps), stop, cfg.max_new_tokens,
                           samples=sampled)
    if outcome:  # --strategy: votes over candidates beside the main answer (evals/ttc)
        outcome.merge(rows, metrics, protocol)


def test_custom(custom_case, evaluation, eval_config, custom_selection):
    if custom_case is None:
        pytest.skip("no question set: pass --data-file my.jsonl (or a folder of JSONL files)")
    cfg, case = eval_config, custom_case
    tasks = task_files(cfg)
    task = tasks[case]
    all_docs = load_task(task)
    docs = [all_docs[i] for i in custom_selection[case]]
    contexts = [render_prompt(d["prompt"], cfg.template, cfg.system_prompt) for d in docs]
    choices = task.benchmark == "custom_multiple_choice"
    counted = contexts if choices else [budget_text(c, cfg) for c in contexts]  # choices' contexts go unwrapped
    check_budget(task.path, docs, counted, evaluation.backend.count_tokens, cfg.bos, cfg.context_budget,
                 0 if choices else cfg.max_new_tokens)
    kind = task.benchmark[len(BENCHMARK) + 1:]
    protocol: dict[str, Any] = {
        "name": f"custom {kind}", "template": cfg.template, "metric": kind,
        "checker": "per row" if task.mixed else task.default.text,
        # every file of this benchmark, so the report (which keeps one protocol per benchmark) names them all
        "task_files": {c: t.describe() for c, t in tasks.items() if t.benchmark == task.benchmark},
        "context_starts_with_token0": cfg.bos, "context_budget": cfg.context_budget}
    metrics = case_metrics(task, cfg)
    if choices:
        rows = choice_rows(evaluation, cfg, docs, contexts)
        protocol.update(continuation="' ' + choice", acc_norm="loglikelihood / len(choice) in characters")
    else:
        rows, stop, steps = generated_rows(evaluation, cfg, task, docs, contexts, protocol)
        if task.benchmark == "custom_exact_match":
            exact_match_extras(evaluation, cfg, docs, contexts, rows, stop, steps, metrics, protocol)
    data = [{"file": str(task.path), "path": str(task.path.resolve()), "rows": len(all_docs),
             "sha256": file_sha256(task.path), "source": "user", "licence": None}]
    if task.sidecar is not None:
        data[0]["sidecar_sha256"] = file_sha256(task.sidecar)
    # One benchmark per checker (custom_exact_match, custom_numeric, ...): a folder may mix kinds,
    # and a benchmark's overall row pools cases scored alike.
    evaluation.record(task.benchmark, case, rows, metrics, protocol, data)
