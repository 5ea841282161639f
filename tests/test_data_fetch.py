"""Downloads against a stand-in hub on 127.0.0.1 (no network needed): the sha256 check, a
mismatch keeps nothing, an interrupted download resumes from its ``.part`` file with a range
request, official checkpoints come from the commit the hub's API names and are cached once, and
``--offline`` consults only the cache; plus the loader's search order (with the user data cache)
and its errors for an altered file and a malformed line."""
from __future__ import annotations

import hashlib
import json

import pytest

from benchmarkdata import fetch as fetch_module
from benchmarkdata import loader
from benchmarkdata.hub import DownloadError, download, fetch_part, file_info, hub_url
from benchmarkdata.loader import DataError, iter_jsonl, locate, manifest
from benchmarkdata.progress import LineBar, silent
from evals import models
from standin_hub import StandInHub


@pytest.fixture
def hub():
    with StandInHub() as server:
        yield server


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


WEIGHTS = bytes(range(256)) * 40  # 10,240 bytes of pretend checkpoint


def test_download_checks_sha256_and_is_atomic(hub, tmp_path):
    hub.raw["f"] = b"hello"
    assert download(f"{hub.url}/raw/f", tmp_path / "a" / "f", sha(b"hello")).read_bytes() == b"hello"
    with pytest.raises(DownloadError, match="sha256 mismatch.*expected 0{64}"):
        download(f"{hub.url}/raw/f", tmp_path / "g", "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no .part left
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{hub.url}/raw/missing", tmp_path / "m", "0" * 64)
    with pytest.raises(DownloadError, match="no sha256 known"):
        download(f"{hub.url}/raw/f", tmp_path / "n", "")


def test_interrupted_download_resumes_with_a_range_request(hub, tmp_path):
    hub.raw["w.pth"] = WEIGHTS
    hub.cut_after["/raw/w.pth"] = 4000
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match=r"interrupted after 4000 of 10240 bytes.*resume"):
        download(f"{hub.url}/raw/w.pth", dest, sha(WEIGHTS))
    part = tmp_path / "w.pth.part"
    assert part.read_bytes() == WEIGHTS[:4000] and not dest.exists()
    download(f"{hub.url}/raw/w.pth", dest, sha(WEIGHTS))
    assert hub.requests[-1] == ("/raw/w.pth", "bytes=4000-")  # only the rest was asked for
    assert sha(dest.read_bytes()) == sha(WEIGHTS) and not part.exists()


def test_server_without_ranges_starts_over_and_bad_part_is_discarded(hub, tmp_path):
    hub.raw["w.pth"] = WEIGHTS
    part = tmp_path / "w.pth.part"
    part.write_bytes(WEIGHTS[:100])
    hub.ranges = False  # answers 200 with the whole file: the part is rewritten, not appended to
    assert fetch_part(f"{hub.url}/raw/w.pth", part) == sha(WEIGHTS) and part.read_bytes() == WEIGHTS
    hub.ranges = True
    part.write_bytes(b"x" * 100)  # a part that is not a prefix of the file
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(f"{hub.url}/raw/w.pth", tmp_path / "w.pth", sha(WEIGHTS))
    assert not part.exists()  # never resumed again
    part.write_bytes(WEIGHTS)  # complete already: the server answers 416 and the part is kept
    assert fetch_part(f"{hub.url}/raw/w.pth", part, size=len(WEIGHTS)) == sha(WEIGHTS)


def test_file_info_reads_the_hubs_api(hub):
    commit = hub.put("Org/Repo", "m.pth", WEIGHTS)
    info = file_info("Org/Repo", "m.pth", "main", "model", hub.url)
    assert (info.commit, info.sha256, info.size) == (commit, sha(WEIGHTS), len(WEIGHTS))
    assert info.url(hub.url) == hub_url("Org/Repo", "m.pth", commit, "model", hub.url)
    with pytest.raises(DownloadError, match="has no file 'x.pth' at revision main"):
        file_info("Org/Repo", "x.pth", "main", "model", hub.url)
    with pytest.raises(DownloadError, match="HTTP 404"):
        file_info("Org/Repo", "m.pth", "no-such-branch", "model", hub.url)


def test_official_checkpoint_downloads_into_cache_once(hub, tmp_path):
    entry = models.OFFICIAL["rwkv7-g1-0.1b"]
    commit = hub.put(entry.repo, entry.filename, WEIGHTS)
    bars = RecordingProgress()
    resolved = models.resolve("rwkv7-g1-0.1b", cache_dir=tmp_path, endpoint=hub.url, progress=bars)
    assert (resolved.name, resolved.source, resolved.hub_commit) == ("rwkv7-g1-0.1b", "hub", commit)
    assert resolved.path == tmp_path / entry.repo / entry.filename and resolved.path.read_bytes() == WEIGHTS
    assert hub.resolve_paths() == [f"/{entry.repo}/resolve/{commit}/{entry.filename}"]  # from the commit
    assert bars.calls == [(entry.filename, len(WEIGHTS), 0)] and sum(bars.updates) == len(WEIGHTS) and bars.closed
    again = models.resolve(entry.filename, cache_dir=tmp_path, endpoint=hub.url, offline=True)  # full name
    assert again.path == resolved.path and len(hub.resolve_paths()) == 1  # cached: one download only


class RecordingProgress:
    """A progress factory that remembers what it was told."""

    def __init__(self):
        self.calls, self.updates, self.closed = [], [], False

    def __call__(self, label, total, initial):
        self.calls.append((label, total, initial))
        return self

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


def test_model_download_interrupted_then_resumed(hub, tmp_path):
    commit = hub.put("Org/Next", "rwkv7-g1x-0.1b.pth", WEIGHTS)
    url_path = f"/Org/Next/resolve/{commit}/rwkv7-g1x-0.1b.pth"
    hub.cut_after["rwkv7-g1x-0.1b.pth"] = 6000
    with pytest.raises(DownloadError, match="interrupted after 6000 of 10240"):
        models.resolve("hf:Org/Next/rwkv7-g1x-0.1b.pth", cache_dir=tmp_path, endpoint=hub.url, progress=silent)
    part = tmp_path / "Org" / "Next" / "rwkv7-g1x-0.1b.pth.part"
    assert part.stat().st_size == 6000
    resolved = models.resolve("hf:Org/Next/rwkv7-g1x-0.1b.pth", cache_dir=tmp_path, endpoint=hub.url, progress=silent)
    assert hub.requests[-1] == (url_path, "bytes=6000-")
    assert sha(resolved.path.read_bytes()) == sha(WEIGHTS) and not part.exists()
    sidecar = json.loads(resolved.path.with_name(resolved.path.name + ".sha256.json").read_text())
    assert sidecar["sha256"] == sha(WEIGHTS) and sidecar["hub_commit"] == commit


def test_corrupted_checkpoint_download_is_refused(hub, tmp_path):
    entry = models.OFFICIAL["rwkv7-g1-0.4b"]
    hub.put(entry.repo, entry.filename, WEIGHTS)
    pinned = models.Official(entry.repo, entry.filename, entry.released, sha256=sha(b"the real one"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(models.OFFICIAL, "rwkv7-g1-0.4b", pinned)
        with pytest.raises(DownloadError, match=f"expected {sha(b'the real one')}, found {sha(WEIGHTS)}"):
            models.resolve("rwkv7-g1-0.4b", cache_dir=tmp_path, endpoint=hub.url, progress=silent)
    assert list((tmp_path / entry.repo).iterdir()) == []  # nothing kept, no .part


def test_offline_model_not_cached_is_a_clear_error(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelOfflineError, match=r"rwkv7-g1-1.5b.*not in the model cache.*--offline"):
        models.resolve("rwkv7-g1-1.5b", cache_dir=tmp_path, endpoint=hub.url)
    assert hub.requests == []  # nothing asked of the network


def test_official_table_names_release_dates():
    for name, entry in models.OFFICIAL.items():
        assert entry.filename.startswith(name + "-") and entry.released.replace("-", "") in entry.filename


def test_model_spec_errors(tmp_path):
    with pytest.raises(models.ModelSpecError, match="not a known official name.*rwkv7-g1-0.1b"):
        models.check_spec(str(tmp_path / "missing.pth"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(models.ModelSpecError, match="expected a .pth or .safetensors"):
        models.check_spec(str(tmp_path / "weights.bin"))
    for bad in ("hf:only-owner", "hf:Org//m.pth", "hf:Org/Repo/m.bin"):
        with pytest.raises(models.ModelSpecError, match="hf:OWNER/REPO/FILE.pth"):
            models.check_spec(bad)


def test_line_progress_for_a_non_terminal(capsys):
    import sys

    bar = LineBar("x.pth", 1000, 0, sys.stderr)
    for _ in range(20):
        bar.update(50)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "downloading x.pth (1.0 kB)" and lines[-1] == "  x.pth: 1.0 kB received"
    assert [line.split(": ")[1].split("%")[0] for line in lines[1:-1]] == ["25", "50", "75"]


def test_manifest_remote_urls_are_well_formed():
    entry = manifest()["mmlu_pro/test-00000-of-00001.parquet"]
    two = {r.id: r for r in entry.known()}
    assert set(two) == {"2024", "2026"} and two["2024"].sha256 == entry.sha256
    planned = fetch_module.plan(entry, None, "https://huggingface.co")  # a pinned commit: no API call
    assert planned.url == hub_url("TIGER-Lab/MMLU-Pro", "data/test-00000-of-00001.parquet",
                                  two["2026"].hub_commit, "dataset") and planned.expected == two["2026"]
    assert hub_url("A/B", "x y.pth", endpoint="http://h/").startswith("http://h/A/B/resolve/main/x%20y.pth")


def test_loader_search_order_and_checksum(tmp_path, shared_dir, monkeypatch):
    name = "lambada_openai/lambada_test.jsonl"
    monkeypatch.setenv(loader.DATA_CACHE_ENV, str(tmp_path / "cache"))
    assert locate(name) == (shared_dir / "benchmarkdata" / name).resolve()
    cached = tmp_path / "cache" / name  # the user data cache comes before the shared folder
    cached.parent.mkdir(parents=True)
    cached.write_bytes((shared_dir / "benchmarkdata" / name).read_bytes())
    assert locate(name) == cached.resolve()
    altered = tmp_path / "mine" / name
    altered.parent.mkdir(parents=True)
    altered.write_text('{"text": "a b"}\n')
    with pytest.raises(DataError, match=r"lambada_test.jsonl: sha256 mismatch: expected a known revision "
                                        r"\(pinned 4aa8d02c.*found .*--accept-new-revision"):
        locate(name, data_dir=tmp_path / "mine")  # --data-dir is searched first
    with pytest.raises(DataError, match="not in .*manifest.json"):
        locate("nope.jsonl")


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    rows = iter_jsonl(path)
    assert next(rows) == {"text": "ok"}
    with pytest.raises(DataError, match=r"bad.jsonl:3: malformed JSON"):
        next(rows)
    other = tmp_path / "list.jsonl"
    other.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"list.jsonl:2: expected a JSON object, found list"):
        list(iter_jsonl(other))


def test_offline_model_copied_into_the_cache_is_hashed_and_used(hub, tmp_path, monkeypatch):
    """The offline message says "copy the file into that folder": a copy without its sidecar is
    hashed once (checked against a pinned sha256) and used, never asked of the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = models.OFFICIAL["rwkv7-g1-1.5b"]
    copy = tmp_path / entry.repo / entry.filename
    copy.parent.mkdir(parents=True)
    copy.write_bytes(WEIGHTS)
    resolved = models.resolve("rwkv7-g1-1.5b", cache_dir=tmp_path, endpoint=hub.url)
    assert (resolved.path, resolved.source, resolved.hub_commit) == (copy, "hub", None) and hub.requests == []
    sidecar = json.loads(copy.with_name(copy.name + ".sha256.json").read_text())
    assert sidecar["sha256"] == sha(WEIGHTS) and sidecar["hashed_offline"]
    assert models.checkpoint_sha256(copy) == sha(WEIGHTS)
    copy.with_name(copy.name + ".sha256.json").unlink()
    pinned = models.Official(entry.repo, entry.filename, entry.released, sha256=sha(b"the real one"))
    monkeypatch.setitem(models.OFFICIAL, "rwkv7-g1-1.5b", pinned)
    with pytest.raises(models.ModelOfflineError, match=f"has sha256 {sha(WEIGHTS)}, expected {sha(b'the real one')}"):
        models.resolve("rwkv7-g1-1.5b", cache_dir=tmp_path, endpoint=hub.url)
