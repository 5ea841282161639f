"""Fetch on first use and data revisions, against a stand-in hub on 127.0.0.1 and a temporary
manifest of small synthetic files (no network, no real benchmark data): the first ``ensure()``
downloads into the user data cache and the second downloads nothing; a changed upstream file is
refused naming both sha256s and the option, and kept with ``accept_new_revision`` as a recorded
revision that ``describe()`` names; ``compare`` warns about runs on different revisions;
``offline`` with missing data is one clear error; ``fetch --revision`` takes a known revision's
hub commit."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from benchmarkdata import fetch as fetch_module
from benchmarkdata import loader
from benchmarkdata.fetch import FetchError, NewRevisionError, OfflineError, ensure
from benchmarkdata.loader import DataError, MissingDataError, describe, find, manifest
from benchmarkdata.progress import silent
from benchmarkdata.revisions import data_revision_warnings, read_record
from evals.cli import main as cli_main
from standin_hub import StandInHub
from test_compare import make_run

V1 = b'{"q": "one"}\n{"q": "two"}\n'
V2 = b'{"q": "one"}\n{"q": "TWO"}\n'
V3 = b'{"q": "one"}\n{"q": "two"}\n{"q": "three"}\n'
PLAIN = b'{"text": "a b"}\n'
QUESTIONS, PLAIN_FILE, SHARED_ONLY = "toy/questions.jsonl", "toy/plain.jsonl", "toy/shared-only.jsonl"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub():
    with StandInHub() as server:
        yield server


@pytest.fixture
def toy(hub, tmp_path, monkeypatch):
    """A manifest of three toy files, no data roots holding them, and the hub serving v1 on main
    (v2 at an older commit the manifest knows)."""
    commit_v2 = hub.put("Org/Toy", "data/questions.jsonl", V2, "dataset")
    hub.put("Org/Toy", "data/questions.jsonl", V1, "dataset")
    hub.raw["plain.jsonl"] = PLAIN
    files = [
        {"file": QUESTIONS, "sha256": sha(V1), "rows": 2, "licence": "MIT", "source": "toy", "fidelity": "verbatim",
         "revision": "v1", "remote": {"repo": "Org/Toy", "repo_type": "dataset", "path": "data/questions.jsonl",
                                      "revision": "main"},
         "revisions": [{"id": "v2", "sha256": sha(V2), "rows": 2, "hub_commit": commit_v2, "differs": "question 2"}]},
        {"file": PLAIN_FILE, "sha256": sha(PLAIN), "rows": 1, "licence": "MIT", "source": "toy", "fidelity": "verbatim",
         "remote": {"url": f"{hub.url}/raw/plain.jsonl"}},
        {"file": SHARED_ONLY, "sha256": sha(b""), "rows": 0, "licence": "MIT", "source": "toy", "fidelity": "verbatim"},
    ]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"files": files}))
    monkeypatch.setattr(loader, "MANIFEST", path)
    monkeypatch.setenv(loader.DATA_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("RWKVEVAL_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loader.manifest.cache_clear()
    yield tmp_path / "cache", commit_v2
    loader.manifest.cache_clear()


def add_unpinned_entry() -> None:
    """Add ``toy/unpinned.zip`` to the toy manifest: no sha256 pinned, fetched from the branch (C-Eval's case)."""
    files = json.loads(loader.MANIFEST.read_text())["files"]
    files.append({"file": "toy/unpinned.zip", "sha256": None, "rows": 3, "licence": "MIT", "source": "toy",
                  "fidelity": "verbatim", "unpinned": "written without a network",
                  "remote": {"repo": "Org/Toy", "repo_type": "dataset", "path": "unpinned.zip", "revision": "main"}})
    loader.MANIFEST.write_text(json.dumps({"files": files}))
    loader.manifest.cache_clear()


def fetch_requests(hub: StandInHub) -> list[str]:
    return hub.resolve_paths()


def test_first_use_fetches_into_the_cache_then_nothing(hub, toy):
    cache, _ = toy
    got = ensure([QUESTIONS, PLAIN_FILE], endpoint=hub.url, progress=silent)
    assert [(f.name, f.revision.id, f.fetched) for f in got] == [(QUESTIONS, "v1", True), (PLAIN_FILE, "pinned", True)]
    assert got[0].path == (cache / QUESTIONS).resolve() and got[0].path.read_bytes() == V1
    main_commit = hub.repos[("dataset", "Org/Toy")]["main"]
    assert got[0].revision.hub_commit == main_commit  # resolved through the API, downloaded from the commit
    assert fetch_requests(hub) == [f"/datasets/Org/Toy/resolve/{main_commit}/data/questions.jsonl", "/raw/plain.jsonl"]
    again = ensure([QUESTIONS, PLAIN_FILE], endpoint=hub.url, progress=silent)
    assert [f.fetched for f in again] == [False, False] and len(fetch_requests(hub)) == 2  # nothing fetched
    block = describe(QUESTIONS)
    assert (block["revision"], block["sha256"], block["rows"], block["hub_commit"]) == ("v1", sha(V1), 2, main_commit)
    assert describe(PLAIN_FILE)["revision"] == "pinned" and "hub_commit" not in describe(PLAIN_FILE)


def test_changed_upstream_file_is_refused_then_accepted_and_recorded(hub, toy):
    cache, _ = toy
    commit = hub.put("Org/Toy", "data/questions.jsonl", V3, "dataset")
    with pytest.raises(NewRevisionError) as refused:
        ensure([QUESTIONS], endpoint=hub.url, progress=silent)
    message = str(refused.value)
    assert sha(V1) in message and sha(V3) in message and "--accept-new-revision" in message and commit in message
    assert fetch_requests(hub) == []  # the hub's own checksum refused it before downloading
    hub.put("Org/Toy", "data/questions.jsonl", V3, "dataset", lfs=False)  # no checksum in the API: download, check
    with pytest.raises(NewRevisionError, match=f"served sha256 {sha(V3)}.*expected one of the known revisions "
                                               f"\\(v1 {sha(V1)}, v2 {sha(V2)}\\).*--accept-new-revision"):
        ensure([QUESTIONS], endpoint=hub.url, progress=silent)
    assert len(fetch_requests(hub)) == 1 and list((cache / "toy").iterdir()) == []  # nothing kept, no .part
    commit = hub.repos[("dataset", "Org/Toy")]["main"]
    [got] = ensure([QUESTIONS], endpoint=hub.url, progress=silent, accept_new_revision=True)
    assert got.fetched and got.revision.accepted and got.revision.id == "new-" + sha(V3)[:12]
    assert (got.revision.hub_commit, got.revision.rows, got.path.read_bytes()) == (commit, 3, V3)
    record = read_record(cache)[QUESTIONS][sha(V3)]
    assert record["accepted"] and record["hub_commit"] == commit and record["revision"] == got.revision.id
    block = describe(QUESTIONS)  # what the report's data block says
    assert (block["revision"], block["sha256"], block["hub_commit"], block["accepted_new_revision"]) == \
        (got.revision.id, sha(V3), commit, True)
    [later] = ensure([QUESTIONS], endpoint=hub.url, progress=silent)  # recognised without the option
    assert not later.fetched and later.revision.id == got.revision.id


def test_compare_warns_when_runs_scored_different_revisions(hub, toy, tmp_path, capsys):
    [v1] = ensure([QUESTIONS], endpoint=hub.url, progress=silent)
    old = describe(QUESTIONS)
    v1.path.unlink()
    hub.put("Org/Toy", "data/questions.jsonl", V3, "dataset")
    ensure([QUESTIONS], endpoint=hub.url, progress=silent, accept_new_revision=True)
    new = describe(QUESTIONS)
    [warning] = data_revision_warnings([old], [new], "A", "B", "toy")
    assert re.search(r"toy: toy/questions.jsonl: A scored revision v1 \(sha256 \w{12}, hub commit \w{12}\), "
                     r"B scored revision new-\w{12}", warning)
    assert data_revision_warnings([old], [old]) == [] and data_revision_warnings([old], []) == []
    runs = []
    for name, block in (("run_a", old), ("run_b", new)):
        run = make_run(tmp_path, name, {0: 1.0, 1: 0.0})
        results = json.loads((run / "results.json").read_text())
        results["benchmarks"]["toy"]["data"] = [block]
        (run / "results.json").write_text(json.dumps(results))
        runs.append(run)
    assert cli_main(["compare", str(runs[0]), str(runs[1]), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "warning: data revision differs: toy: toy/questions.jsonl: A scored revision v1" in out
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comparison["comparisons"][0]["data_warnings"] == [warning]


def test_baseline_names_data_revision_differences(hub, toy, tmp_path):
    from evals.baseline import Baseline

    ensure([QUESTIONS], endpoint=hub.url, progress=silent)
    old = describe(QUESTIONS)
    run = make_run(tmp_path, "base", {0: 1.0, 1: 1.0})
    results = json.loads((run / "results.json").read_text())
    results["benchmarks"]["toy"]["data"] = [old]
    (run / "results.json").write_text(json.dumps(results))
    baseline = Baseline.load(run)
    rows = [{"doc_id": 0, "scores": {"acc": 1.0}}, {"doc_id": 1, "scores": {"acc": 1.0}}]
    same = baseline.judge("toy", "main", rows, {"acc": ("mean", "acc")}, data=[old])
    assert same["data_warnings"] == []
    other = {**old, "sha256": sha(V2), "revision": "v2"}
    verdict = baseline.judge("toy", "main", rows, {"acc": ("mean", "acc")}, data=[other])
    assert verdict["failures"] == [] and len(verdict["data_warnings"]) == 1
    assert "the baseline scored revision v1" in verdict["data_warnings"][0]
    assert "this run scored revision v2" in verdict["data_warnings"][0]


def test_offline_with_missing_data_is_one_clear_error(hub, toy, monkeypatch):
    with pytest.raises(OfflineError) as error:
        ensure([QUESTIONS, PLAIN_FILE], endpoint=hub.url, offline=True)
    message = str(error.value)
    assert f"`python -m benchmarkdata fetch {QUESTIONS} {PLAIN_FILE}`" in message and "--data-dir" in message
    assert "--offline" in message and hub.requests == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE=1"):
        ensure([QUESTIONS], endpoint=hub.url)
    assert hub.requests == []


def test_missing_files_without_a_source_or_unknown_names(hub, toy):
    with pytest.raises(MissingDataError, match=f"without a download source: {SHARED_ONLY}.*RWKVEVAL_SHARED"):
        ensure([QUESTIONS, SHARED_ONLY], endpoint=hub.url, progress=silent)
    assert hub.requests == []  # checked before downloading anything
    with pytest.raises(DataError, match=r"unknown data files \['nope.jsonl'\]"):
        ensure(["nope.jsonl"], endpoint=hub.url)


def test_present_file_of_no_known_revision_is_not_replaced(hub, toy):
    cache, _ = toy
    altered = cache / QUESTIONS
    altered.parent.mkdir(parents=True)
    altered.write_bytes(b'{"q": "mine"}\n')
    with pytest.raises(DataError, match=f"sha256 mismatch: expected a known revision \\(v1 {sha(V1)}"):
        ensure([QUESTIONS], endpoint=hub.url, progress=silent)
    assert altered.read_bytes() == b'{"q": "mine"}\n' and hub.requests == []


def test_unreachable_hub_is_a_fetch_error(toy):
    with pytest.raises(FetchError, match=f"{QUESTIONS}: .*failed"):
        ensure([QUESTIONS], endpoint="http://127.0.0.1:9", progress=silent)


def test_fetch_a_known_revision_by_its_hub_commit(hub, toy, capsys):
    cache, commit_v2 = toy
    [got] = fetch_module.fetch([QUESTIONS], revision="v2", endpoint=hub.url, progress=silent, log=lambda *_: None)
    assert (got.revision.id, got.path.read_bytes()) == ("v2", V2)
    assert fetch_requests(hub) == [f"/datasets/Org/Toy/resolve/{commit_v2}/data/questions.jsonl"]
    assert find(QUESTIONS).revision.id == "v2"
    fetch_module.fetch([QUESTIONS], revision="v2", endpoint=hub.url, progress=silent, log=lambda *_: None)
    assert len(fetch_requests(hub)) == 1  # already there at that revision
    assert fetch_module.main(["fetch", QUESTIONS, "--revision", "v1", "--hub-url", hub.url]) == 1
    assert "revision v1 of toy/questions.jsonl has no hub commit" in capsys.readouterr().err
    hub.put("Org/Toy", "data/questions.jsonl", V3, "dataset")
    assert fetch_module.main(["fetch", QUESTIONS, "--revision", "main", "--hub-url", hub.url]) == 1
    assert "--accept-new-revision" in capsys.readouterr().err
    assert fetch_module.main(["fetch", QUESTIONS, "--revision", "main", "--accept-new-revision",
                              "--hub-url", hub.url]) == 0
    assert find(QUESTIONS).revision.id == "new-" + sha(V3)[:12] and (cache / QUESTIONS).read_bytes() == V3


def test_an_unpinned_file_is_fetched_only_when_accepted_and_then_recognised(hub, toy, tmp_path, monkeypatch):
    """An entry with no sha256 yet (C-Eval's zip): a fetch is refused saying so, kept with
    --accept-new-revision (checked against the hub's own sha256) and found afterwards."""
    cache, _ = toy
    add_unpinned_entry()
    commit = hub.put("Org/Toy", "unpinned.zip", V3, "dataset")
    with pytest.raises(OfflineError, match="fetch toy/unpinned.zip --accept-new-revision` .the manifest pins no sha256"):
        ensure(["toy/unpinned.zip"], offline=True, progress=silent)
    with pytest.raises(NewRevisionError, match=r"pins no sha256 for this file \(written without a network\)"
                                               r".*--accept-new-revision"):
        ensure(["toy/unpinned.zip"], endpoint=hub.url, progress=silent)
    assert not (cache / "toy/unpinned.zip").exists()
    got = ensure(["toy/unpinned.zip"], endpoint=hub.url, progress=silent, accept_new_revision=True)[0]
    assert (got.revision.id, got.revision.hub_commit, got.fetched) == ("new-" + sha(V3)[:12], commit, True)
    again = find("toy/unpinned.zip")
    assert again.revision.accepted and describe("toy/unpinned.zip")["accepted_new_revision"] is True
    stray = tmp_path / "mine"
    (stray / "toy").mkdir(parents=True)
    (stray / "toy" / "unpinned.zip").write_bytes(V1)  # a copy fetched elsewhere: nothing vouches for it
    with pytest.raises(DataError, match="the manifest pins no sha256"):
        find("toy/unpinned.zip", stray)
    assert "none pinned" in "\n".join(fetch_module.list_lines())


def test_real_manifest_revisions_are_well_formed():
    hexes = re.compile(r"[0-9a-f]{64}")
    for entry in manifest().values():
        known = entry.known()
        if entry.sha256 is None:  # nothing pinned yet: it must say why, and be fetchable to pin it
            assert entry.unpinned and entry.remote and not known, entry.file
            continue
        assert len({r.id for r in known}) == len(known) and len({r.sha256 for r in known}) == len(known), entry.file
        for revision in known:
            assert hexes.fullmatch(revision.sha256) and revision.rows and revision.rows > 0, entry.file
            assert revision.hub_commit is None or re.fullmatch(r"[0-9a-f]{40}", revision.hub_commit), entry.file
        if entry.remote and "repo" in entry.remote:  # the default fetch is an immutable commit
            assert any(r.hub_commit == entry.remote["revision"] for r in known), entry.file
    pro = {r.id: r for r in manifest()["mmlu_pro/test-00000-of-00001.parquet"].known()}
    assert set(pro) == {"2024", "2026"} and "691 of 12,030" in pro["2026"].differs


def test_shared_mmlu_pro_is_the_2024_revision(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(loader.DATA_CACHE_ENV, str(tmp_path))
    block = describe("mmlu_pro/test-00000-of-00001.parquet")
    assert (block["revision"], block["rows"], block["sha256"][:12]) == ("2024", 12032, "2bd1ae25ec6c")


def test_real_manifest_mmlu_pro_fetched_on_first_use(hub, shared_dir, tmp_path, monkeypatch):
    """The real MMLU-Pro entries against the stand-in, which has only the shared (2024) parquets:
    served at the commit the manifest pins (revision 2026) they are refused, nothing kept, even
    with --accept-new-revision; served on the branch (``--revision main``) they are found to be
    revision 2024 by their sha256 and kept, recorded with the branch's commit."""
    names = ("mmlu_pro/test-00000-of-00001.parquet", "mmlu_pro/validation-00000-of-00001.parquet")
    pinned = manifest()[names[0]].remote["revision"]
    for name in names:
        body = (shared_dir / "benchmarkdata" / name).read_bytes()
        hub.put("TIGER-Lab/MMLU-Pro", "data/" + name.split("/")[1], body, "dataset", commit=pinned, lfs=False)
    monkeypatch.setenv(loader.DATA_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("RWKVEVAL_SHARED", str(tmp_path / "no-shared"))
    with pytest.raises(NewRevisionError, match="sha256 2bd1ae25ec6c.*pinned to revision 2026.*cannot keep it"):
        ensure(names, endpoint=hub.url, progress=silent, accept_new_revision=True)
    assert list((tmp_path / "cache" / "mmlu_pro").iterdir()) == []
    for name in names:  # the same bytes on the branch, as a new commit
        body = (shared_dir / "benchmarkdata" / name).read_bytes()
        hub.put("TIGER-Lab/MMLU-Pro", "data/" + name.split("/")[1], body, "dataset")
    main = hub.repos[("dataset", "TIGER-Lab/MMLU-Pro")]["main"]
    got = fetch_module.fetch(names, tmp_path / "cache", hub.url, "main", progress=silent, log=lambda *_: None)
    assert [(f.revision.id, f.fetched, f.revision.hub_commit) for f in got] == [("2024", True, main)] * 2
    assert [f.path.parent for f in got] == [(tmp_path / "cache" / "mmlu_pro").resolve()] * 2
    assert [f.fetched for f in ensure(names, endpoint=hub.url, progress=silent)] == [False, False]
    assert describe(names[0])["hub_commit"] == main and describe(names[0])["revision"] == "2024"


def test_a_pinned_source_serving_other_bytes_is_refused_even_when_accepting(hub, toy):
    """--accept-new-revision keeps new revisions of a moving source (a branch) only: a plain URL,
    or a known revision's hub commit, that serves other bytes is refused and nothing is kept."""
    cache, commit_v2 = toy
    hub.raw["plain.jsonl"] = b'{"text": "changed"}\n'
    with pytest.raises(NewRevisionError, match=f"pinned to revision pinned with sha256 {sha(PLAIN)}.*cannot keep it"):
        ensure([PLAIN_FILE], endpoint=hub.url, progress=silent, accept_new_revision=True)
    assert not (cache / "toy").exists() or list((cache / "toy").iterdir()) == []  # nothing kept, no part
    hub.put("Org/Toy", "data/questions.jsonl", V3, "dataset", commit=commit_v2, lfs=False)  # v2's commit rewritten
    with pytest.raises(NewRevisionError, match=f"sha256 {sha(V3)}.*pinned to revision v2.*cannot keep it.*"
                                               "--revision main --accept-new-revision"):
        fetch_module.fetch([QUESTIONS], revision="v2", endpoint=hub.url, accept_new_revision=True, progress=silent,
                           log=lambda *_: None)
    assert list((cache / "toy").iterdir()) == []
    assert read_record(cache) == {}  # nothing recorded as a revision


def test_a_part_from_another_revision_is_never_resumed(hub, toy):
    """An interrupted download of the branch's old commit leaves a part named after its URL; once
    the branch moves, the new commit's download starts from byte 0 and keeps no mixed bytes."""
    cache, _ = toy
    old = V1 + b'{"q": "padding"}\n'
    hub.put("Org/Toy", "data/questions.jsonl", old, "dataset", lfs=False)
    hub.cut_after["data/questions.jsonl"] = 10
    with pytest.raises(FetchError, match="interrupted"):
        ensure([QUESTIONS], endpoint=hub.url, progress=silent)
    [stale] = (cache / "toy").iterdir()
    assert stale.name.startswith("questions.jsonl.") and stale.name.endswith(".part") and stale.stat().st_size == 10
    (cache / "toy" / "questions.jsonl.part").write_bytes(V1[:5])  # a part named as before parts had a source
    new = b'{"Q": "uno"}\n{"Q": "2"}\n{"Q": "three!"}\n'  # differs within the stale part's bytes
    assert len(new) > 10
    hub.put("Org/Toy", "data/questions.jsonl", new, "dataset", lfs=False)
    [got] = ensure([QUESTIONS], endpoint=hub.url, progress=silent, accept_new_revision=True)
    assert got.path.read_bytes() == new and got.revision.id == "new-" + sha(new)[:12]
    assert hub.requests[-1][1] is None  # asked for the whole file, not the rest of the stale part
    assert sorted(p.name for p in (cache / "toy").iterdir()) == ["questions.jsonl"]  # the stale part is gone


def test_a_local_copy_of_an_unpinned_file_is_accepted_and_then_read(hub, toy, tmp_path, capsys):
    """C-Eval offline: the official zip put into a --data-dir by hand is refused until `accept`
    (or --accept-new-revision on the run) records its sha256 in that root's revisions.json."""
    add_unpinned_entry()
    mine = tmp_path / "mine"
    (mine / "toy").mkdir(parents=True)
    copy = mine / "toy" / "unpinned.zip"
    copy.write_bytes(V1)
    with pytest.raises(DataError, match=f"python -m benchmarkdata accept {re.escape(str(copy.resolve()))}"):
        ensure(["toy/unpinned.zip"], mine, offline=True, progress=silent)
    assert fetch_module.main(["accept", str(copy)]) == 0
    assert f"runs read it with --data-dir {mine.resolve()}" in capsys.readouterr().out
    found = find("toy/unpinned.zip", mine)
    assert (found.revision.id, found.revision.accepted, found.path) == ("new-" + sha(V1)[:12], True, copy.resolve())
    assert read_record(mine)["toy/unpinned.zip"][sha(V1)]["source"] == f"local copy {copy.resolve()}"
    assert describe("toy/unpinned.zip", mine)["accepted_new_revision"] is True and hub.requests == []

    other = tmp_path / "other"  # --accept-new-revision on the run records a copy it finds
    (other / "toy").mkdir(parents=True)
    (other / "toy" / "unpinned.zip").write_bytes(V2)
    [got] = ensure(["toy/unpinned.zip"], other, offline=True, progress=silent, accept_new_revision=True)
    assert got.revision.accepted and got.sha256 == sha(V2) and not got.fetched
    assert find("toy/unpinned.zip", other).revision.id == "new-" + sha(V2)[:12]

    loose = tmp_path / "unpinned.zip"  # a download lying anywhere: --dest copies it into a data root
    loose.write_bytes(V3)
    assert fetch_module.main(["accept", str(loose)]) == 1
    assert "pass --dest DIR" in capsys.readouterr().err
    assert fetch_module.main(["accept", str(loose), "--dest", str(tmp_path / "root")]) == 0
    assert (tmp_path / "root" / "toy" / "unpinned.zip").read_bytes() == V3
    assert find("toy/unpinned.zip", tmp_path / "root").revision.accepted

    altered = tmp_path / "pinned" / QUESTIONS  # a pinned file's copy is never accepted: fetch it instead
    altered.parent.mkdir(parents=True)
    altered.write_bytes(V3)
    assert fetch_module.main(["accept", str(altered)]) == 1
    assert "is pinned in the manifest" in capsys.readouterr().err and read_record(tmp_path / "pinned") == {}


def test_a_copy_of_a_known_revision_is_copied_with_dest_and_needs_no_record(toy, tmp_path, capsys):
    """`accept --dest` on a pinned file's copy that is a revision the manifest knows copies it and
    says so (it was refused as if it were an unknown copy)."""
    loose = tmp_path / "questions.jsonl"
    loose.write_bytes(V2)  # the manifest's v2
    assert fetch_module.main(["accept", str(loose), "--dest", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert "revision v2, already known; copied to" in out
    assert (tmp_path / "root" / QUESTIONS).read_bytes() == V2 and read_record(tmp_path / "root") == {}
    assert find(QUESTIONS, tmp_path / "root").revision.id == "v2"
