"""CharacterEval (evals/test_charactereval.py) on a synthetic stand-in in the official layout (the
real files are not in the shared folder): the transform against hand-built cases, the prompts and
the reward input byte for byte, score = output * 4 + 1 and the means; plain-text reward scoring
(evals/rewards/plain.py) against a direct transformers forward, for a sequence-classification
model and for a model that is its own code (as BaichuanCharRM); end to end on the tiny RWKV model
with a tiny random reward model built in the test, then ``--rescore`` with another reward model;
usage errors."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import evals.plugin  # noqa: F401  (imported once here: in-process runs must not re-import its C extensions)
from benchmarkdata import loader
from benchmarkdata.loader import DataError
from evals import test_charactereval as ce
from evals.rewards import RewardError
from evals.rewards.plain import encode, output_value, score_texts
from hf_tiny import build_own_code_reward_model, build_reward_model

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent
PROFILES = {"小明": {"姓名": "小明", "爱好": ["读书", "跑步"], "性格": "开朗"},
            "阿红": {"姓名": "阿红", "年龄": "20"}}
EVERY = [[m, ce.METRIC_ZH[m]] for m in ce.METRIC_NAMES]


def standin_files() -> tuple[list, dict, dict]:
    """Six dialogues: 11 has three metrics, 12 every metric, 13 none (unassigned), 10 opens with
    the role's own line."""
    dialogues = [
        {"id": 10, "role": "小明", "novel_name": "测试", "context": "小明：你好。\n阿红：你好呀。\n老王：吃了吗？"},
        {"id": 11, "role": "阿红", "novel_name": "测试", "context": "小明：今天去哪？"},
        {"id": 12, "role": "小明", "novel_name": "测试", "context": "阿红：早。\n小明：早上好。\n阿红：走吧。"},
        {"id": 13, "role": "阿红", "novel_name": "测试", "context": "小明：再见。"},
        {"id": 14, "role": "阿红", "novel_name": "测试", "context": "小明：下雨了。"},
        {"id": 15, "role": "小明", "novel_name": "测试", "context": "阿红：冷吗？"},
    ]
    metrics = {"10": [["Fluency", "对话流利度"]],
               "11": [["Accuracy", "知识准确率"], ["Empathy", "共情度"], ["Consistency", "对话一致性"]],
               "12": EVERY, "14": [["Empathy", "共情度"]], "15": EVERY[:6]}
    return dialogues, PROFILES, metrics


def standin_data() -> ce.Data:
    return ce.check_data(*standin_files(), ["test_data.jsonl", "character_profiles.json", "id2metric.jsonl"])


def test_transform_gives_one_row_per_assigned_metric():
    data = standin_data()
    rows = list(ce.transform([{"id": 11, "model_output": "好啊"}], data.metrics))
    assert rows == [{"id": 11, "model_output": "好啊", "metric_en": "Accuracy", "metric_zh": "知识准确率"},
                    {"id": 11, "model_output": "好啊", "metric_en": "Empathy", "metric_zh": "共情度"},
                    {"id": 11, "model_output": "好啊", "metric_en": "Consistency", "metric_zh": "对话一致性"}]
    assert list(ce.transform([{"id": 13}], data.metrics)) == []
    assert ce.unassigned(data) == [13]
    grouped = ce.by_metric(data)  # indices into the dialogues, file order
    assert grouped["Empathy"] == [1, 2, 4] and grouped["Fluency"] == [0, 2, 4 + 1]
    assert sum(map(len, grouped.values())) == 1 + 3 + 12 + 1 + 6


def test_reward_input_byte_for_byte_and_the_score_scale():
    text = ce.reward_input(PROFILES["小明"], "阿红：冷吗？", "不冷。", "共情度")
    assert text == ("<RoleInfo>\n\n{'姓名': '小明', '爱好': ['读书', '跑步'], '性格': '开朗'}\n\n<Context>\n\n阿红：冷吗？"
                    "\n\n<Response>\n\n不冷。\n\n<Dimension>\n\n共情度")
    assert (ce.reward_score(0.0), ce.reward_score(0.5), ce.reward_score(1.0)) == (1.0, 3.0, 5.0)


def test_prompts_under_both_templates():
    dialogue = standin_files()[0][0]  # 小明 speaks first; 阿红 and 老王 follow
    system = "{'姓名': '小明', '爱好': ['读书', '跑步'], '性格': '开朗'}\n现在请你扮演一个角色扮演专家。请你根据上述信息扮演小明进行对话。\n"
    assert ce.render(dialogue, PROFILES["小明"], "completion") == (
        system + "\n小明：你好。\n阿红：你好呀。\n老王：吃了吗？\n小明：")
    assert ce.render(dialogue, PROFILES["小明"], "rwkv") == (
        "User: " + system.strip() + "\n\nAssistant: 好的！现在我来扮演小明。我首先发话：你好。\n\n"
        "User: 老王：吃了吗？\n\nAssistant:")
    later = standin_files()[0][2]  # 小明 answers 阿红 in the middle of the context
    assert ce.render(later, PROFILES["小明"], "rwkv").endswith(
        "Assistant: 好的！现在我来扮演小明。\n\nUser: 阿红：早。\n\nAssistant: 小明：早上好。\n\nUser: 阿红：走吧。\n\nAssistant:")
    with pytest.raises(DataError, match="two lines of 小明 in a row"):
        ce.chat_turns(ce.parse_context("阿红：a\n小明：b\n小明：c\n阿红：d"), "小明", "s")
    assert ce.response_of(" 小明：不冷。\n阿红：好", "rwkv") == "小明：不冷。"
    assert ce.response_of(" 不冷。", "completion") == " 不冷。"


def test_means_per_metric_and_dimension_by_hand():
    rows = [{"metric_en": m, "scores": {"score": s}} for m, s in
            [("Fluency", 3.0), ("Fluency", 4.0), ("Coherence", 2.0), ("Consistency", 5.0)]]
    means = ce.metric_means(rows)
    assert means == {"Fluency": 3.5, "Coherence": 2.0, "Consistency": 5.0}
    assert ce.dimension_means(means) == {"conversation": pytest.approx((3.5 + 2.0 + 5.0) / 3)}


def test_bad_files_are_named():
    dialogues, profiles, metrics = standin_files()
    where = ["t.json", "p.json", "m.json"]
    with pytest.raises(DataError, match="t.json: dialogue 13: role '老李' has no profile in p.json"):
        ce.check_data(dialogues + [{"id": 13, "role": "老李", "context": "x：y"}], profiles, metrics, where)
    with pytest.raises(DataError, match=r"m.json: id 10: unknown metric \['Fluency', '共情度'\]"):
        ce.check_data(dialogues, profiles, {"10": [["Fluency", "共情度"]]}, where)
    with pytest.raises(DataError, match="t.json: expected a JSON array"):
        ce.check_data({"id": 1}, profiles, metrics, where)


def test_check_says_how_to_get_the_reward_model():
    def config(reward):
        return SimpleNamespace(ttc=SimpleNamespace(reward=reward))

    (missing,) = ce.check(config(None))
    assert "needs --reward" in missing and "morecry/BaichuanCharRM" in missing and "--trust-remote-code" in missing
    assert "needs a Hugging Face model" in ce.check(config("verifier"))[0]
    assert ce.check(config("hf:some/model")) == []


# ---------------------------------------------------------------- plain-text reward scoring

@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("reward-models")
    # transformers copies a folder's own code into a module cache named after the folder: one per process
    return build_reward_model(root / "llama"), build_own_code_reward_model(root / f"own-code-{os.getpid()}")


def test_plain_scoring_equals_a_direct_forward(reward_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from evals.rewards.hf import HFReward

    llama, _ = reward_models
    texts = [ce.reward_input(PROFILES["阿红"], "小明：今天去哪？", "去公园。", "共情度"), "short"]
    tokenizer = AutoTokenizer.from_pretrained(llama)
    model = AutoModelForSequenceClassification.from_pretrained(llama, dtype=torch.float32).eval()
    want = []
    for text in texts:  # run_char_rm.py's steps, written out
        ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        with torch.no_grad():
            want.append(float(model(input_ids=torch.tensor([ids[-4096:]])).logits[0, 0]))
    got = score_texts(HFReward(str(llama)), texts)
    assert got == pytest.approx(want, abs=1e-5) and got[0] != pytest.approx(got[1])
    assert encode(tokenizer, "abc", max_tokens=3) == tokenizer.encode("bc", add_special_tokens=False) + [
        tokenizer.eos_token_id]  # the start of a long input is dropped


def test_a_reward_model_that_is_its_own_code_needs_trust_and_gives_element_one(reward_models):
    from evals.rewards.hf import HFReward

    _, own = reward_models
    with pytest.raises(RewardError, match="--trust-remote-code"):
        HFReward(str(own))
    reward = HFReward(str(own), trust_remote_code=True)
    assert reward.describe()["loaded_as"] == "modeling_tinycharrm.TinyCharRM (its own code)"
    ids = torch.tensor([encode(reward.tokenizer, "你好")])
    with torch.no_grad():
        want = float(reward.model(input_ids=ids)[1][0])
    assert score_texts(reward, ["你好"]) == pytest.approx([want], abs=1e-6)


def test_output_value_accepts_one_number_only():
    assert output_value((torch.zeros(1, 3), torch.tensor([0.25]))) == 0.25
    assert output_value(SimpleNamespace(logits=torch.tensor([[1.5]]))) == 1.5
    with pytest.raises(RewardError, match=r"logits has shape \(1, 7\); expected a single score"):
        output_value(SimpleNamespace(logits=torch.zeros(1, 7)))
    with pytest.raises(RewardError, match="returned Tensor"):
        output_value(torch.zeros(1))


# ---------------------------------------------------------------- end to end on the tiny model

@pytest.fixture
def suite(pytester, monkeypatch, tmp_path):
    """A data root with the stand-in files, a manifest that knows their sha256s, the plugin."""
    root = pytester.path / "data" / "charactereval"
    root.mkdir(parents=True)
    manifest = json.loads(loader.MANIFEST.read_text(encoding="utf-8"))
    names = dict(zip(ce.FILES, standin_files()))
    for entry in manifest["files"]:
        if entry["file"] in names:
            body = json.dumps(names[entry["file"]], ensure_ascii=False, indent=4).encode()
            (pytester.path / "data" / entry["file"]).write_bytes(body)
            entry.update(sha256=hashlib.sha256(body).hexdigest(), revision="standin")
    patched = tmp_path / "manifest.json"
    patched.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(loader, "MANIFEST", patched)
    monkeypatch.setenv(loader.DATA_CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    loader.manifest.cache_clear()
    pytester.makeconftest('pytest_plugins = ["evals.plugin"]\n')
    pytester.makepyfile(test_ce_suite="from evals.test_charactereval import charactereval_data, test_charactereval\n")
    yield pytester
    loader.manifest.cache_clear()


def run(suite, model: Path, *args: str):
    from engine.server.background import torch_threads

    # option=value: a bare path among the arguments would be taken for a test path before the plugin loads
    with torch_threads(1):
        return suite.runpytest("-p", "no:cacheprovider", f"--rootdir={suite.path}",
                               f"--report-dir={suite.path / 'reports'}", f"--model={model}",
                               f"--data-dir={suite.path / 'data'}", "--max-new-tokens", "6", *args)


def samples(suite, benchmark: str, case: str) -> list[dict]:
    path = suite.path / "reports" / "latest" / "samples" / f"{benchmark}-{case}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def direct_scores(folder: Path, rows: list[dict], metric: str, trust: bool = False) -> list[float]:
    from evals.rewards.hf import HFReward

    reward = HFReward(str(folder), trust_remote_code=trust)
    by_id = {d["id"]: d for d in standin_files()[0]}
    texts = [ce.reward_input(PROFILES[by_id[r["doc_id"]]["role"]], by_id[r["doc_id"]]["context"], r["response"],
                             ce.METRIC_ZH[metric]) for r in rows]
    return [ce.reward_score(v) for v in score_texts(reward, texts)]


@pytest.mark.slow
def test_end_to_end_then_rescored_with_another_reward_model(suite, tiny_model_path, reward_models):
    llama, own = reward_models
    result = run(suite, tiny_model_path, f"--reward=hf:{llama}")
    assert result.ret == 0, result.stdout.str()[-3000:]
    results = json.loads((suite.path / "reports" / "latest" / "results.json").read_text())["benchmarks"]
    bench = results["charactereval"]
    assert set(bench["cases"]) == set(ce.METRIC_NAMES) and bench["overall"]["n"] == 1 + 3 + 12 + 1 + 6
    assert {d: results[f"charactereval_{d}"]["overall"]["n"] for d in ce.DIMENSIONS} == {
        "conversation": 1 + 1 + 3 + 3, "character": 1 + 5 + 3, "attractiveness": 1 + 4 + 1}  # dialogues 10, 11, 12, 15 / 11, 12, 15 / 11, 12, 14
    protocol = bench["protocol"]
    assert protocol["unassigned"] == [13] and protocol["reward_model"]["model"] == str(llama)
    empathy = samples(suite, "charactereval", "Empathy")
    assert [r["doc_id"] for r in empathy] == [11, 12, 14]
    assert empathy[0]["prompt"].endswith("\n小明：今天去哪？\n阿红：") and "\n" not in empathy[0]["response"]
    assert [r["scores"]["score"] for r in empathy] == pytest.approx(direct_scores(llama, empathy, "Empathy"), abs=1e-5)
    assert bench["cases"]["Empathy"]["metrics"]["score"]["value"] == pytest.approx(
        sum(r["scores"]["score"] for r in empathy) / 3)

    again = run(suite, tiny_model_path, f"--reward=hf:{llama}")  # every reward from the cache
    assert again.ret == 0 and not any(r["reward_computed"] for r in samples(suite, "charactereval", "Empathy"))

    rescored = run(suite, tiny_model_path, "--rescore", f"--reward=hf:{own}", "--trust-remote-code")
    assert rescored.ret == 0, rescored.stdout.str()[-3000:]
    other = samples(suite, "charactereval", "Empathy")
    assert [r["output"] for r in other] == [r["output"] for r in empathy]  # the stored generations
    assert [r["scores"]["score"] for r in other] == pytest.approx(
        direct_scores(own, other, "Empathy", trust=True), abs=1e-5)
    assert [r["scores"]["score"] for r in other] != pytest.approx([r["scores"]["score"] for r in empathy])


@pytest.mark.parametrize("args, message", [
    ((), "*charactereval needs --reward*morecry/BaichuanCharRM*--trust-remote-code*"),
    (("--reward", "verifier"), "*charactereval feeds the reward model its own input layout*not a verifier reward*"),
])
def test_usage_errors(suite, tiny_model_path, args, message):
    result = run(suite, tiny_model_path, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_whole_suite_run_without_reward_leaves_charactereval_out(suite, shared_dir):
    """Several benchmarks, none deselected: CharacterEval cannot run without --reward, so it is left
    out with a note (selected on purpose it stops the run, test_usage_errors); LAMBADA runs."""
    from evals.fakes import PLUGIN_CONFTEST

    suite.makeconftest(PLUGIN_CONFTEST)
    suite.makepyfile(test_lambada_suite="from evals.test_lambada import lambada_docs, test_lambada\n")
    (suite.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    result = suite.runpytest("-p", "no:cacheprovider", f"--rootdir={suite.path}", f"--report-dir={suite.path / 'r'}",
                             "--model=fake.pth", f"--data-dir={suite.path / 'data'}", "--limit", "3")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*whole-suite run without charactereval: charactereval needs --reward*",
                                 "*1 passed, 12 deselected*"])
    benchmarks = json.loads((suite.path / "r" / "latest" / "results.json").read_text())["benchmarks"]
    assert set(benchmarks) == {"lambada"}
