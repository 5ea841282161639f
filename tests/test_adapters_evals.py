"""The suite with ``--adapter``: a fine-tune evaluated end to end, named in the report, keyed in the
thresholds file and the response cache; the adapter options' usage errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evals.cache import ResponseCache, choose_model, model_identity
from evals.fakes import PLUGIN_CONFTEST
from evals.thresholds import load_file
from peft_reference import make_lora

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent
TINY_SHA = "6bc13f3fddcc832af450b799b121ed1055a0a1c905cb1d6aaa97d21952231f9b"


@pytest.fixture
def lora_file(tmp_path, tiny_model_path) -> Path:
    base = torch.load(tiny_model_path, map_location="cpu", weights_only=True)
    path = tmp_path / "lora.pth"
    torch.save(make_lora(base, rank=4, seed=1), path)
    return path


@pytest.mark.slow
def test_lambada_with_a_lora_end_to_end(tmp_path, tiny_model_path, lora_file):
    """pytest evals -k lambada --limit 20 --model TINY --adapter LORA: the report names the adapter,
    the fine-tune's gates come from its own entries, and the cache keys it apart from the base."""
    from engine.checkpoint import file_sha256

    lora_sha = file_sha256(lora_file)
    (tmp_path / "gates.toml").write_text(f'''
[models."tiny-rwkv7-834K"]
sha256 = "{TINY_SHA}"
gates = ["lambada.acc >= 0.99"]          # the base's: must not gate the fine-tune

[models."tiny-rwkv7-834K+lora"]
gates = ["lambada.ppl >= 1"]

[models."by-checksums"]
sha256 = "{TINY_SHA}"
adapters = ["{lora_sha}"]
gates = ["lambada.acc >= 0"]
''')
    command = [sys.executable, "-m", "pytest", "evals", "-p", "no:cacheprovider", "-k", "lambada", "--limit", "20",
               "--model", str(tiny_model_path), "--adapter", str(lora_file), "--lora-alpha", "8",
               "--report-dir", str(tmp_path / "reports"), "--thresholds-file", str(tmp_path / "gates.toml")]
    env = {k: v for k, v in os.environ.items() if k != "RWKV_MODEL"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    run_dir = (tmp_path / "reports" / "latest").resolve()
    assert run_dir.name.endswith("-tiny-rwkv7-834K_lora")  # the folder name keeps [A-Za-z0-9._-]
    results = json.loads((run_dir / "results.json").read_text())
    model = results["model"]
    assert model["name"] == "tiny-rwkv7-834K+lora" and model["sha256"] == TINY_SHA
    (adapter,) = model["adapters"]
    assert adapter["path"] == str(lora_file) and adapter["sha256"] == lora_sha
    assert adapter["kind"] == "lora" and adapter["scale"] == 2.0 and adapter["rank"] == 4
    assert results["options"]["adapters"] == [str(lora_file)] and results["options"]["lora_alpha"] == 8
    bench = results["benchmarks"]["lambada"]
    assert bench["overall"]["n"] == 20
    sources = {g["source"] for g in _gates(results)}
    assert sources == {"gates.toml[tiny-rwkv7-834K+lora]", "gates.toml[by-checksums]"}
    cache = ResponseCache.open(tmp_path / "reports" / "cache", create=False)
    try:
        (model_id,) = cache.models()
        assert model_id == f"sha256:{TINY_SHA}|dtype:float32|adapters:lora:{lora_sha}:scale=2.0"
        assert cache.count(model_id) > 0
    finally:
        cache.close()


def _gates(results: dict) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if {"label", "source", "passed"} <= set(node):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(results["benchmarks"])
    return found


# ---------------------------------------------------------------------- thresholds and cache keys


def test_thresholds_key_a_fine_tune_by_name_or_checksums(tmp_path):
    (tmp_path / "t.toml").write_text('''
[models.base]
sha256 = "AAAA"
gates = ["lambada.acc >= 0.5"]
[models."base+lora"]
gates = ["lambada.acc >= 0.4"]
[models.tuned]
sha256 = "aaaa"
adapters = ["CCCC", "bbbb"]
gates = ["lambada.acc >= 0.3"]
''')
    bounds = lambda *args: sorted(g.bound for g in load_file(tmp_path / "t.toml", *args))  # noqa: E731
    assert bounds("base", "aaaa") == [0.5]  # the base alone: not the fine-tunes' entries
    assert bounds("base+lora", "aaaa", ["bbbb"]) == [0.4]  # by name; the base's checksum does not match
    assert bounds("other", "aaaa", ["cccc", "BBBB"]) == [0.3]  # by checksums, any order and case
    assert bounds("other", "aaaa", ["bbbb"]) == []  # one adapter short
    (tmp_path / "bad.toml").write_text('[models.x]\nadapters = "bbbb"\ngates = []\n')
    with pytest.raises(ValueError, match=r"\[models.'x'\] 'adapters' must be a list of sha256 strings"):
        load_file(tmp_path / "bad.toml", "x", None)


def test_cache_identity_includes_the_adapters():
    base = {"sha256": "ab", "dtype": "float32"}
    assert model_identity({**base, "adapters": []}) == model_identity(base) == "sha256:ab|dtype:float32"
    lora = {"kind": "lora", "sha256": "cd", "scale": 2.0}
    pissa = {"kind": "pissa", "sha256": "cd", "scale": 1.0, "init": {"sha256": "ef"}}
    ids = {model_identity({**base, "adapters": a}) for a in ([], [lora], [{**lora, "scale": 4.0}], [pissa])}
    assert len(ids) == 4
    assert model_identity({**base, "adapters": [pissa]}).endswith("|adapters:pissa:cd:scale=1.0:init=ef")


def test_rescore_picks_the_model_with_the_same_adapters(tmp_path):
    stored = {"plain": {"info": {"sha256": "ab", "dtype": "float32", "adapters": []}, "resolved": {"spec": "m.pth"}},
              "tuned": {"info": {"sha256": "ab", "dtype": "float32", "adapters": [{"sha256": "cd"}]},
                        "resolved": {"spec": "m.pth"}}}
    assert choose_model(stored, "m.pth", "float32", tmp_path)[0] == "plain"
    assert choose_model(stored, "m.pth", "float32", tmp_path, ["cd"])[0] == "tuned"


# ---------------------------------------------------------------------- usage errors


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded")
    (pytester.path / "a.pth").write_bytes(b"not read either")
    return pytester


@pytest.mark.parametrize("args, message", [
    (["--adapter", "missing.pth"], "*--adapter missing.pth: no such file*"),
    (["--adapter", "a.pth", "--adapter-init", "gone.pth"], "*--adapter-init gone.pth: no such file*"),
    (["--adapter", "a.pth", "--lora-alpha", "8", "--lora-scaling", "2"], "*give LoRA's scale once*"),
    (["--adapter-init", "a.pth"], "*--adapter-init*needs the trained adapter*"),
    (["--adapter", "a.pth", "--lora-alpha", "0"], "*--lora-alpha*a finite number > 0*"),
])
def test_adapter_options_usage_errors(suite, args, message):
    result = suite.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_adapter_with_an_endpoint_is_a_usage_error(suite):
    result = suite.runpytest("-p", "no:cacheprovider", "--endpoint", "http://127.0.0.1:9", "--adapter", "a.pth")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--adapter applies to the local engine, not to an --endpoint*"])
