"""CharacterEval (Tu et al. 2024, arXiv:2401.01275): Chinese role-play, the model's reply in a
dialogue scored by a character reward model on the subjective metrics each dialogue was annotated
for, by the published pipeline (morecry/CharacterEval: ``get_response.py`` -> ``transform_format.py``
-> ``run_char_rm.py`` -> ``compute_score.py``).

Data (the GitHub repository at commit ``fa232e6``; it has no licence file, so the files are
fetched on first use, sha256-checked, never redistributed): ``charactereval/test_data.jsonl``, a
JSON array (despite its name) of 4,564 dialogues; ``charactereval/character_profiles.json``, 78
profiles by role name; ``charactereval/id2metric.jsonl``, a JSON object from dialogue id to its
``[metric_en, metric_zh]`` pairs (8,032 pairs over 4,531 ids). A raw dialogue::

    {"id": 5320, "role": "佟湘玉", "novel_name": "武林外传",
     "context": "佟湘玉：展堂。（下楼看到老邢）老邢。\\n老邢：（拿出一张纸）你来得正好。\\n...\\n老邢：这不是打人，这是老白咬的。（坐）"}

The sha256s were computed here from the repository's git objects at that commit (a snapshot of
the public repository, not a download through the fetch code); this module's loading, counts,
transform (8,032 rows) and both prompt templates were run on those files, and a 12-dialogue run
with the tiny RWKV model and a random reward model; BaichuanCharRM itself was never run here (its
weights could not be had), so no published number has been reproduced.

Protocol:

1. Generation (``get_response.py``, written for ChatGLM and meant to be adapted): the system
   text ``{profile}\\n现在请你扮演一个角色扮演专家。请你根据上述信息扮演{role}进行对话。\\n`` (the
   profile as Python prints the dict, as the official f-string does). ``--template completion``
   (default): that text, the whole context, then ``{role}：`` to continue. ``--template rwkv``: the
   official chat layout as RWKV chat turns: the system text as the first user turn, the reply
   ``好的！现在我来扮演{role}。`` (plus ``我首先发话：{first line}`` when the role speaks first), then
   for every later line of the role the line before it as a user turn and ``{role}：{line}`` as the
   assistant's, and the last line as the question. Greedy, ``--max-new-tokens``, stopping at the
   first newline: ``transform_format.py`` keeps only the first line (``--template rwkv`` also drops
   the space after ``Assistant:``). The prompt is recorded per row.
2. Transform (``transform_format.py``): one row per (dialogue, metric) that ``id2metric``
   assigns; the 33 dialogues it assigns none are skipped there (``if str(data['id']) in
   id_metric``), so they are not generated here and are listed in the protocol as ``unassigned``.
3. Reward (``run_char_rm.py``): ``<RoleInfo>\\n\\n{profile}\\n\\n<Context>\\n\\n{context}\\n\\n<Response>
   \\n\\n{response}\\n\\n<Dimension>\\n\\n{metric_zh}``, tokenized without special tokens, EOS
   appended, the last 4,096 tokens kept, one forward per input; score = output * 4 + 1
   (:mod:`evals.rewards.plain`). ``--reward hf:DIR`` names the model (BaichuanCharRM for the
   published numbers, with ``--trust-remote-code``); a run without ``--reward`` stops before any
   work, saying how to get it. Rewards are stored per reward model, so ``--rescore --reward
   OTHER`` rescores the stored generations with another reward model.
4. Scores (``compute_score.py``): the mean score per metric, each metric a case of
   ``charactereval``; each of the paper's three reward-scored dimensions is a benchmark of its own
   (``charactereval_conversation``: Fluency, Coherence, Consistency; ``charactereval_character``:
   knowledge Exposure, Accuracy, Hallucination, persona Behavior, Utterance;
   ``charactereval_attractiveness``: Humanlikeness, Communication_skills, Diversity, Empathy).
   Their overall rows pool (dialogue, metric) rows; the paper's dimension "Avg." is the plain mean
   of its metric means (:func:`dimension_means`). The fourth dimension, MBTI personality
   back-testing, is not in the released code or data and is not reproduced.

Reference scores (paper Table 4 / the repository's leaderboard, BaichuanCharRM): GPT-4
conversation 3.448, character 2.697, attractiveness 2.873; Qwen-7B 3.327, 2.540, 2.679;
Baichuan2-13B 3.795, 2.701, 2.890. Scores range over 1-5.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import DataError, describe, locate
from evals.backend import GenerateRequest
from evals.suite import Declared
from evals.templates import rwkv_chat

BENCHMARK = "charactereval"
FILES = ("charactereval/test_data.jsonl", "charactereval/character_profiles.json", "charactereval/id2metric.jsonl")
READS_REWARD = True  # --reward without a strategy is meaningful when this benchmark runs
METRIC_ZH = {  # id2metric.jsonl's names, in the paper's order within each dimension
    "Fluency": "对话流利度", "Coherence": "对话连贯性", "Consistency": "对话一致性",
    "Exposure": "知识曝光度", "Accuracy": "知识准确率", "Hallucination": "知识幻觉性", "Behavior": "行为一致性",
    "Utterance": "言语一致性",
    "Humanlikeness": "类人程度", "Communication_skills": "交流技巧", "Diversity": "表现多样性", "Empathy": "共情度",
}
DIMENSIONS = {"conversation": ("Fluency", "Coherence", "Consistency"),
              "character": ("Exposure", "Accuracy", "Hallucination", "Behavior", "Utterance"),
              "attractiveness": ("Humanlikeness", "Communication_skills", "Diversity", "Empathy")}
DIMENSION_OF = {metric: dim for dim, metrics in DIMENSIONS.items() for metric in metrics}
METRIC_NAMES = tuple(METRIC_ZH)
SCORE = {"score": ("mean", "score")}
SYSTEM = "{profile}\n现在请你扮演一个角色扮演专家。请你根据上述信息扮演{role}进行对话。\n"
STOP = ("\n",)
COLON = "："  # the full-width colon between speaker and line
CASE_PARAM = "metric"
REWARD_HELP = ("CharacterEval scores every reply with a character reward model: pass --reward hf:DIR with the "
               "published BaichuanCharRM (https://huggingface.co/morecry/BaichuanCharRM, e.g. `huggingface-cli "
               "download morecry/BaichuanCharRM --local-dir BaichuanCharRM`; it runs its own code, so add "
               "--trust-remote-code), or another Hugging Face sequence-classification model for unofficial scores")


def declare(config) -> list[Declared]:
    """CharacterEval per metric, and one benchmark per dimension (like MMLU's subject groups)."""
    return [Declared(BENCHMARK, METRIC_NAMES, tuple(SCORE), FILES)] + [
        Declared(f"{BENCHMARK}_{dim}", metrics, tuple(SCORE), FILES) for dim, metrics in DIMENSIONS.items()]


def check(config) -> list[str]:
    """Problems with the run's options when CharacterEval is selected (collection, before any work)."""
    reward = config.ttc.reward
    if reward is None:
        return [f"charactereval needs --reward. {REWARD_HELP}"]
    from evals.rewards import RewardError, parse_spec

    try:
        kind = parse_spec(reward).kind
    except RewardError as error:
        return [str(error)]
    if kind != "hf":
        return [f"--reward {reward}: charactereval feeds the reward model its own input layout and needs a Hugging "
                f"Face model (hf:NAME_OR_DIR), not a {kind} reward. {REWARD_HELP}"]
    return []


# ---------------------------------------------------------------- load

@dataclass(frozen=True)
class Data:
    dialogues: tuple[dict[str, Any], ...]  # file order
    profiles: Mapping[str, Any]  # role -> profile (a JSON object)
    metrics: Mapping[str, tuple[tuple[str, str], ...]]  # str(dialogue id) -> (metric_en, metric_zh) pairs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a JSON document ({error})") from None


def check_data(dialogues: Any, profiles: Any, metrics: Any, where: Sequence[str]) -> Data:
    """The three documents checked: what was expected and what was found, naming file and entry."""
    if not isinstance(dialogues, list):
        raise DataError(f"{where[0]}: expected a JSON array of dialogues, found {type(dialogues).__name__}")
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise DataError(f"{where[1]}: expected a JSON object of role name -> profile object")
    if not isinstance(metrics, dict):
        raise DataError(f"{where[2]}: expected a JSON object of dialogue id -> [[metric_en, metric_zh], ...]")
    seen = set()
    for i, d in enumerate(dialogues):
        if not (isinstance(d, dict) and isinstance(d.get("id"), int) and isinstance(d.get("role"), str)
                and isinstance(d.get("context"), str) and d["context"]):
            raise DataError(f"{where[0]}: dialogue {i}: expected an object with an integer id, a role and a "
                            f"non-empty context, found {str(d)[:120]}")
        if d["role"] not in profiles:
            raise DataError(f"{where[0]}: dialogue {d['id']}: role {d['role']!r} has no profile in {where[1]}")
        if d["id"] in seen:
            raise DataError(f"{where[0]}: dialogue id {d['id']} appears twice")
        seen.add(d["id"])
    pairs = {}
    for key, value in metrics.items():
        if not (isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value)):
            raise DataError(f"{where[2]}: id {key}: expected a list of [metric_en, metric_zh], found {str(value)[:120]}")
        for en, zh in value:
            if METRIC_ZH.get(en) != zh:
                raise DataError(f"{where[2]}: id {key}: unknown metric [{en!r}, {zh!r}]; known: {METRIC_ZH}")
        pairs[key] = tuple((en, zh) for en, zh in value)
    return Data(tuple(dialogues), profiles, pairs)


def load(data_dir: Path | None = None) -> Data:
    paths = [locate(name, data_dir) for name in FILES]
    return check_data(*(_read_json(p) for p in paths), [str(p) for p in paths])


# ---------------------------------------------------------------- render

def parse_context(context: str) -> list[tuple[str, str]]:
    """(speaker, line) per line, split at the first full-width colon (as get_response.py)."""
    lines = []
    for line in context.split("\n"):
        speaker, _, text = line.partition(COLON)
        lines.append((speaker, text))
    return lines


def system_text(profile: Mapping[str, Any], role: str) -> str:
    return SYSTEM.format(profile=str(dict(profile)), role=role)


def chat_turns(lines: Sequence[tuple[str, str]], role: str, system: str, where: str = "") -> tuple[list[tuple[str, str]], str]:
    """get_response.py's conversation: (user, assistant) turns and the last line as the query."""
    first = f"好的！现在我来扮演{role}。" + (f"我首先发话：{lines[0][1]}" if lines[0][0] == role else "")
    turns = [(system, first)]
    for i in range(1, len(lines)):
        if lines[i][0] == role:
            if lines[i - 1][0] == role:
                raise DataError(f"{where}: two lines of {role} in a row; get_response.py expects them to alternate")
            turns.append((COLON.join(lines[i - 1]), COLON.join(lines[i])))
    if lines[-1][0] == role:
        raise DataError(f"{where}: the context ends with a line of {role}; there is nothing to reply to")
    return turns, COLON.join(lines[-1])


def render(dialogue: Mapping[str, Any], profile: Mapping[str, Any], template: str) -> str:
    """The generation prompt of one dialogue under ``--template``."""
    role, system = dialogue["role"], system_text(profile, dialogue["role"])
    if template == "rwkv":
        turns, query = chat_turns(parse_context(dialogue["context"]), role, system, f"dialogue {dialogue['id']}")
        return rwkv_chat(turns, query)
    return f"{system}\n{dialogue['context']}\n{role}{COLON}"


def response_of(output: str, template: str) -> str:
    """What is scored: the first line (transform_format.py), without the chat cue's space."""
    if template == "rwkv" and output.startswith(" "):
        output = output[1:]
    return output.split("\n")[0]


# ---------------------------------------------------------------- transform and score

def transform(items: Sequence[Mapping[str, Any]], metrics: Mapping[str, Sequence[tuple[str, str]]]
              ) -> Iterator[dict[str, Any]]:
    """transform_format.py: each item (a dialogue, or a generation) once per metric of its id."""
    for item in items:
        for en, zh in metrics.get(str(item["id"]), ()):
            yield {**item, "metric_en": en, "metric_zh": zh}


def unassigned(data: Data) -> list[int]:
    return [d["id"] for d in data.dialogues if not data.metrics.get(str(d["id"]))]


def by_metric(data: Data) -> dict[str, list[int]]:
    """{metric: indices into data.dialogues}, the transform grouped by metric, in file order."""
    out: dict[str, list[int]] = {m: [] for m in METRIC_NAMES}
    index = {d["id"]: i for i, d in enumerate(data.dialogues)}
    for row in transform(data.dialogues, data.metrics):
        out[row["metric_en"]].append(index[row["id"]])
    return out


def reward_input(profile: Mapping[str, Any], context: str, response: str, metric_zh: str) -> str:
    """run_char_rm.py's format_input."""
    return (f"<RoleInfo>\n\n{dict(profile)}\n\n<Context>\n\n{context}\n\n<Response>\n\n{response}"
            f"\n\n<Dimension>\n\n{metric_zh}")


def reward_score(output: float) -> float:
    """The reward model's output on the 1-5 scale (run_char_rm.py)."""
    return output * 4 + 1


def metric_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """compute_score.py: the mean score of every metric, from transformed rows with ``metric_en``."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        sums.setdefault(row["metric_en"], []).append(row["scores"]["score"])
    return {metric: sum(values) / len(values) for metric, values in sums.items()}


def dimension_means(means: Mapping[str, float]) -> dict[str, float]:
    """The paper's dimension averages: the plain mean of each dimension's metric means."""
    return {dim: sum(means[m] for m in metrics) / len(metrics)
            for dim, metrics in DIMENSIONS.items() if all(m in means for m in metrics)}


def protocol(metric: str, cfg: Any, reward: Mapping[str, Any], data: Data) -> dict[str, Any]:
    return {"name": "CharacterEval (morecry/CharacterEval@fa232e6: get_response, transform_format, run_char_rm, "
                    "compute_score)", "metric": metric, "metric_zh": METRIC_ZH[metric],
            "dimension": DIMENSION_OF[metric], "template": cfg.template, "system": SYSTEM,
            "completion_prompt": "{system}\\n{context}\\n{role}：", "greedy": True, "stop": list(STOP),
            "max_new_tokens": cfg.max_new_tokens, "response": "the first line of the generation",
            "context_starts_with_token0": cfg.bos, "reward_model": reward,
            "reward_input": "<RoleInfo>\\n\\n{profile}\\n\\n<Context>\\n\\n{context}\\n\\n<Response>\\n\\n{response}"
                            "\\n\\n<Dimension>\\n\\n{metric_zh} + EOS, last 4096 tokens, batch 1",
            "score": "reward output * 4 + 1", "unassigned": unassigned(data),
            "dimension_average": "the paper's Avg. is the mean of the metric means; overall rows here pool rows"}


# ---------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def charactereval_data(eval_config, eval_select):
    data = load(eval_config.data_dir)
    rows = by_metric(data)
    chosen = eval_select(BENCHMARK, {m: len(rows[m]) for m in METRIC_NAMES})
    return data, {m: [rows[m][i] for i in chosen[m]] for m in METRIC_NAMES}


def _rewards(evaluation: Any, cfg: Any, texts: Sequence[str]) -> tuple[list[float], list[bool], dict[str, Any]]:
    """Raw reward outputs (stored ones reused; under --rescore, new reward models still compute)."""
    from evals.rewards import load as load_reward
    from evals.rewards.plain import cached_scores
    from evals.ttc.store import StrategyStore

    if not texts:  # an xdist shard without rows of this metric
        return [], [], {"kind": "hf", "model": cfg.ttc.reward}
    reward = load_reward(cfg.ttc.reward, cfg.ttc.reward_options())
    replay = StrategyStore.for_backend(evaluation.backend)
    store = StrategyStore(replay.cache, replay.model_id)  # writable: rewards belong to the reward model
    started = time.perf_counter()
    values, fresh = cached_scores(reward, texts, store)
    evaluation.add_counts(wall_s=time.perf_counter() - started)
    return values, fresh, {**reward.describe(), "identity": reward.identity()}


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_charactereval(metric, charactereval_data, evaluation, eval_config):
    data, chosen = charactereval_data
    cfg, dialogues = eval_config, [data.dialogues[i] for i in chosen[metric]]
    prompts = [render(d, data.profiles[d["role"]], cfg.template) for d in dialogues]
    outputs = evaluation.generate([GenerateRequest(p, STOP, cfg.max_new_tokens, bos=cfg.bos) for p in prompts])
    responses = [response_of(o.text, cfg.template) for o in outputs]
    inputs = [reward_input(data.profiles[d["role"]], d["context"], r, METRIC_ZH[metric])
              for d, r in zip(dialogues, responses)]
    values, fresh, reward = _rewards(evaluation, cfg, inputs)
    rows = [{"doc_id": d["id"], "prompt": p, "role": d["role"], "output": o.text, "finish_reason": o.finish_reason,
             "response": r, "metric_en": metric, "reward_output": v, "reward_computed": f,
             "scores": {"score": reward_score(v)}}
            for d, p, o, r, v, f in zip(dialogues, prompts, outputs, responses, values, fresh)]
    files = [describe(name, cfg.data_dir) for name in FILES]
    evaluation.record(BENCHMARK, metric, rows, SCORE, protocol(metric, cfg, reward, data), files)
    slim = [{key: row[key] for key in ("doc_id", "response", "scores")} for row in rows]
    evaluation.record(f"{BENCHMARK}_{DIMENSION_OF[metric]}", metric, slim, SCORE,
                      {**protocol(metric, cfg, reward, data), "group_of": BENCHMARK}, files)
