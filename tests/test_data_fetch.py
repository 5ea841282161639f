"""Data and checkpoint downloads against a stand-in HTTP server on 127.0.0.1 (no network needed):
the pinned sha256 is checked, a mismatch keeps nothing, the model cache is reused; plus the loader's
search order and its errors for an altered file and a malformed line."""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
import pytest

from benchmarkdata import fetch as fetch_module
from benchmarkdata.hub import DownloadError, download, hub_url
from benchmarkdata.loader import DataError, ManifestEntry, iter_jsonl, locate, manifest
from evals import models


class StandIn(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    headers_for: dict[str, dict[str, str]] = {}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.headers_for.get(self.path, {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    StandIn.files, StandIn.headers_for, StandIn.hits = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", StandIn
    httpd.shutdown()
    httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_checks_sha256_and_is_atomic(server, tmp_path):
    url, handler = server
    handler.files["/f"] = b"hello"
    assert download(f"{url}/f", tmp_path / "a" / "f", sha256=sha(b"hello")).read_bytes() == b"hello"
    with pytest.raises(DownloadError, match="sha256 mismatch.*expected 0{64}"):
        download(f"{url}/f", tmp_path / "g", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]  # nothing half-written left behind
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{url}/missing", tmp_path / "m", sha256="0" * 64)
    with pytest.raises(DownloadError, match="no sha256 pinned"):
        download(f"{url}/f", tmp_path / "n")


def test_fetch_pinned_data_files_from_the_hub(server, tmp_path, monkeypatch):
    url, handler = server
    body = b'{"text": "a b"}\n'
    entry = ManifestEntry("toy/data.jsonl", sha(body), 1, "MIT", "toy", "verbatim",
                          {"repo": "Org/Toy", "repo_type": "dataset", "path": "data/x.jsonl", "revision": "abc123"})
    monkeypatch.setattr(fetch_module, "manifest", lambda: {entry.file: entry})
    handler.files["/datasets/Org/Toy/resolve/abc123/data/x.jsonl"] = body
    paths = fetch_module.fetch([], tmp_path, endpoint=url, log=lambda *_: None)
    assert paths == [tmp_path / "toy" / "data.jsonl"] and paths[0].read_bytes() == body
    fetch_module.fetch([], tmp_path, endpoint=url, log=lambda *_: None)  # present and checked: no download
    assert len(handler.hits) == 1
    with pytest.raises(ValueError, match="unknown data files"):
        fetch_module.fetch(["nope.jsonl"], tmp_path, endpoint=url)


def test_manifest_remote_urls_are_well_formed():
    entry = manifest()["mmlu_pro/test-00000-of-00001.parquet"]
    assert fetch_module.remote_url(entry, "https://huggingface.co") == hub_url(
        "TIGER-Lab/MMLU-Pro", "data/test-00000-of-00001.parquet", "main", "dataset")
    assert hub_url("A/B", "x y.pth", endpoint="http://h/").startswith("http://h/A/B/resolve/main/x%20y.pth")


def test_official_checkpoint_downloads_into_cache_once(server, tmp_path):
    url, handler = server
    weights = b"pretend checkpoint bytes"
    entry = models.OFFICIAL["rwkv7-g1-0.1b"]
    path = f"/{entry.repo}/resolve/main/{entry.filename}"
    handler.files[path] = weights
    handler.headers_for[path] = {"X-Linked-Etag": f'"{sha(weights)}"'}  # the hub's LFS sha256
    resolved = models.resolve("rwkv7-g1-0.1b", cache_dir=tmp_path, endpoint=url)
    assert resolved.name == "rwkv7-g1-0.1b" and resolved.source == "hub"
    assert resolved.path == tmp_path / entry.repo / entry.filename and resolved.path.read_bytes() == weights
    again = models.resolve(entry.filename, cache_dir=tmp_path, endpoint=url)  # full file name works too
    assert again.path == resolved.path and handler.hits == [path]  # cached: one download only


def test_corrupted_checkpoint_download_is_refused(server, tmp_path):
    url, handler = server
    path = "/Org/Repo/resolve/main/m.pth"
    handler.files[path] = b"tampered"
    handler.headers_for[path] = {"X-Linked-Etag": sha(b"original")}
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        models.resolve("hf:Org/Repo/m.pth", cache_dir=tmp_path, endpoint=url)
    assert not (tmp_path / "Org" / "Repo" / "m.pth").exists()


def test_model_spec_errors(tmp_path):
    with pytest.raises(models.ModelSpecError, match="not a known official name.*rwkv7-g1-0.1b"):
        models.check_spec(str(tmp_path / "missing.pth"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(models.ModelSpecError, match="expected a .pth or .safetensors"):
        models.check_spec(str(tmp_path / "weights.bin"))
    with pytest.raises(models.ModelSpecError, match="hf:OWNER/REPO/FILE.pth"):
        models.check_spec("hf:only-owner")


def test_loader_search_order_and_checksum(tmp_path, shared_dir):
    name = "lambada_openai/lambada_test.jsonl"
    assert locate(name) == (shared_dir / "benchmarkdata" / name).resolve()
    altered = tmp_path / name
    altered.parent.mkdir(parents=True)
    altered.write_text('{"text": "a b"}\n')
    with pytest.raises(DataError, match=r"lambada_test.jsonl: sha256 mismatch: expected 4aa8d02c"):
        locate(name, data_dir=tmp_path)  # --data-dir is searched first
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
