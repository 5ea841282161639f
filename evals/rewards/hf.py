"""A Hugging Face sequence-classification reward model (``--reward hf:NAME_OR_DIR``).

Loaded with ``AutoTokenizer`` and ``AutoModelForSequenceClassification`` from a local folder or a
hub name (downloaded where a network exists; ``--trust-remote-code`` opts in to a model's own
code, as InternLM2-Reward and ArmoRM need). An answer is rendered as a chat, the question a
``user`` turn and the answer an ``assistant`` turn (earlier turns first), through the tokenizer's
chat template and tokenized without further special tokens, as the Skywork-Reward and
InternLM2-Reward model cards do; a tokenizer without a chat template gets the pair
``(question, answer)`` (the convention of pair-encoder reward models such as OpenAssistant's
DeBERTa). A local folder whose model class is its own code and maps no Auto class for sequence
classification (CharacterEval's BaichuanCharRM, which ``run_char_rm.py`` imports by name) is
loaded, with ``--trust-remote-code``, through the class ``config.json``'s ``architectures`` names,
found in the folder's ``modeling_*.py``. The reward is the single logit (``num_labels == 1``), or the model output's ``score``
where its own code provides one (ArmoRM). Inputs are scored in batches of ``--reward-batch-size``
on ``--reward-device``, right-padded; the model reads each sequence's last non-pad token, so a
batch scores what each input alone would.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.rewards import INSTALL_HINT, RewardError, RewardInput

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def folder_identity(folder: Path) -> str:
    """A fingerprint of a local model folder: its small files' contents, and each weight file's
    name, size and first and last MiB (hashing whole multi-gigabyte files would take minutes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            if path.suffix in _WEIGHT_SUFFIXES and size > 2 << 20:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
            else:
                digest.update(handle.read())
    return digest.hexdigest()


def own_model_class(folder: Path) -> type | None:
    """The class ``config.json``'s ``architectures[0]`` names, from the folder's own ``modeling_*.py``
    (None when the folder does not define it). Runs the folder's code: callers need the user's
    ``--trust-remote-code``."""
    try:
        names = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return None
    if not names:
        return None
    for module in sorted(folder.glob("modeling_*.py")):
        if re.search(rf"^class {re.escape(names[0])}\(", module.read_text(encoding="utf-8", errors="replace"), re.M):
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            return get_class_from_dynamic_module(f"{module.stem}.{names[0]}", str(folder))
    return None


def _load_model(source: str, trust_remote_code: bool, dtype: Any) -> tuple[Any, str]:
    """(the model, how it was loaded): AutoModelForSequenceClassification, or a trusted local
    folder's own class when no Auto class maps it."""
    from transformers import AutoModelForSequenceClassification

    try:
        return (AutoModelForSequenceClassification.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                                   dtype=dtype), "AutoModelForSequenceClassification")
    except ValueError:
        own = own_model_class(Path(source)) if trust_remote_code and Path(source).is_dir() else None
        if own is None:
            raise
        return own.from_pretrained(source, dtype=dtype), f"{own.__module__.split('.')[-1]}.{own.__name__} (its own code)"


class HFReward:
    kind = "hf"
    oracle = False

    def __init__(self, name_or_path: str, *, device: str = "cpu", batch_size: int = 8,
                 trust_remote_code: bool = False):
        try:
            import torch
            from transformers import AutoTokenizer
        except ImportError as error:
            raise RewardError(f"--reward hf:{name_or_path}: cannot import transformers ({error}); {INSTALL_HINT}") from None
        self.name, self.device, self.batch_size = name_or_path, device, batch_size
        self.trust_remote_code = trust_remote_code
        local = Path(name_or_path).expanduser()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name_or_path,
                                                           trust_remote_code=trust_remote_code)
            self.model, self.loaded_as = _load_model(str(local) if local.is_dir() else name_or_path,
                                                     trust_remote_code, torch.float32 if device == "cpu" else "auto")
        except (OSError, ValueError) as error:
            hint = "" if trust_remote_code else " (a model with its own code needs --trust-remote-code)"
            raise RewardError(f"--reward hf:{name_or_path}: cannot load a sequence-classification model: "
                              f"{str(error)[:400]}{hint}") from None
        labels = getattr(self.model.config, "num_labels", 1)
        if labels != 1 and not trust_remote_code:
            raise RewardError(f"--reward hf:{name_or_path}: the model has {labels} output labels; a reward model "
                              f"has one (a single score per answer)")
        self.model.to(device).eval()
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None and self.tokenizer.pad_token_id is not None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.batch_size = 1  # nothing to pad with: one answer per forward call
        self.revision = getattr(self.model.config, "_commit_hash", None)
        self._identity = (f"hf:{folder_identity(local)}" if local.is_dir()
                          else f"hf:{name_or_path}@{self.revision or 'unknown-revision'}")

    def identity(self) -> str:
        return self._identity

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "oracle": False, "model": self.name, "revision": self.revision,
                "class": type(self.model).__name__, "loaded_as": self.loaded_as, "chat_template": self.tokenizer.chat_template is not None,
                "trust_remote_code": self.trust_remote_code, "device": self.device, "batch_size": self.batch_size,
                "score": "the single logit (num_labels 1), or the model output's `score`"}

    def render(self, item: RewardInput) -> str | tuple[str, str]:
        """What the tokenizer encodes for one answer: the chat-templated text, or the pair."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(item.messages(), tokenize=False)
        return (item.question, item.answer)

    def encode(self, items: Sequence[RewardInput]) -> dict[str, Any]:
        rendered = [self.render(item) for item in items]
        if self.tokenizer.chat_template:
            return self.tokenizer(rendered, add_special_tokens=False, padding=True, return_tensors="pt")
        return self.tokenizer([q for q, _ in rendered], [a for _, a in rendered], padding=True, return_tensors="pt")

    def score(self, inputs: Sequence[RewardInput]) -> list[float]:
        import torch

        out: list[float] = []
        for start in range(0, len(inputs), self.batch_size):
            batch = self.encode(inputs[start:start + self.batch_size])
            with torch.inference_mode():
                result = self.model(**{k: v.to(self.model.device) for k, v in batch.items()})
            values = getattr(result, "score", None)
            if values is None:
                values = result.logits[:, 0]  # (B,)
            out.extend(float(v) for v in values.float().reshape(-1).cpu())
        return out

    def weight(self, score: float) -> float:
        """A logit as a probability (a Bradley-Terry reward's sigmoid), for weighted votes."""
        return 1.0 / (1.0 + math.exp(-score)) if score > -700 else 0.0
