"""A stand-in for the Hugging Face hub on 127.0.0.1, for tests that must not touch the network.

It serves what :mod:`benchmarkdata.hub` reads from the real hub:

- ``GET /api/{models|datasets}/{repo}/revision/{ref}?blobs=true``: ``{"sha": commit, "siblings":
  [{"rfilename", "size", "lfs": {"sha256", "size"}}]}`` (``lfs`` left out for files put with
  ``lfs=False``, as the hub does for small files kept in plain git);
- ``GET /{datasets/}{repo}/resolve/{ref}/{path}`` with an ``X-Repo-Commit`` header, HTTP range
  requests (``Range: bytes=N-`` answered 206, or 416 past the end) unless ``ranges`` is off;
- ``GET /raw/{name}`` for files addressed by a plain URL.

Content can change: every :meth:`StandInHub.put` makes a new commit and moves the branch to it,
the old commits staying reachable. ``cut_after[path] = n`` makes the next download of ``path``
stop after ``n`` body bytes (the connection closes short of the announced length). Every request
is logged in ``requests`` as ``(path, range header or None)``.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class Blob:
    body: bytes
    lfs: bool = True


@dataclass
class StandInHub:
    repos: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (type, repo) -> {ref: commit}
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # commit -> {path: blob}
    raw: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    ranges: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    def put(self, repo: str, path: str, body: bytes, repo_type: str = "model", ref: str = "main",
            lfs: bool = True, commit: str | None = None) -> str:
        """Commit ``body`` as ``path`` on branch ``ref`` (as ``commit`` if given, e.g. a commit a
        manifest pins; adding to it when it exists); returns the commit."""
        refs = self.repos.setdefault((repo_type, repo), {})
        files = dict(self.commits.get(commit or refs.get(ref, ""), {}))
        files[path] = Blob(body, lfs)
        commit = commit or hashlib.sha1(f"{repo}{path}{len(self.commits)}".encode() + body).hexdigest()
        self.commits[commit] = files
        refs[ref] = commit
        return commit

    def resolve_paths(self) -> list[str]:
        return [p for p, _ in self.requests if "/resolve/" in p or p.startswith("/raw/")]

    def lookup(self, repo_type: str, repo: str, ref: str) -> tuple[str, dict[str, Blob]] | None:
        refs = self.repos.get((repo_type, repo))
        if refs is None:
            return None
        commit = refs.get(ref, ref)
        return (commit, self.commits[commit]) if commit in self.commits else None

    def __enter__(self) -> StandInHub:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                hub.requests.append((self.path, self.headers.get("Range")))
                path = urllib.parse.urlparse(self.path).path
                if path.startswith("/api/"):
                    return self.api(path)
                if path.startswith("/raw/"):
                    body = hub.raw.get(path[len("/raw/"):])
                    return self.send_body(path, body, {}) if body is not None else self.send_error(404)
                if "/resolve/" in path:
                    return self.resolve(path)
                self.send_error(404)

            def api(self, path: str) -> None:
                parts = path.split("/")  # ['', 'api', kind, owner, name, 'revision', ref]
                if len(parts) != 7 or parts[5] != "revision":
                    return self.send_error(404)
                repo_type = "dataset" if parts[2] == "datasets" else "model"
                found = hub.lookup(repo_type, f"{parts[3]}/{parts[4]}", urllib.parse.unquote(parts[6]))
                if found is None:
                    return self.send_error(404, "Revision Not Found")
                commit, files = found
                siblings = [{"rfilename": p, "size": len(b.body),
                             **({"lfs": {"sha256": hashlib.sha256(b.body).hexdigest(), "size": len(b.body)}}
                                if b.lfs else {})} for p, b in files.items()]
                data = json.dumps({"sha": commit, "siblings": siblings}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def resolve(self, path: str) -> None:
                head, _, rest = path.partition("/resolve/")
                repo_type, repo = ("dataset", head[len("/datasets/"):]) if head.startswith("/datasets/") \
                    else ("model", head[1:])
                ref, _, file = rest.partition("/")
                found = hub.lookup(repo_type, repo, urllib.parse.unquote(ref))
                file = urllib.parse.unquote(file)
                if found is None or file not in found[1]:
                    return self.send_error(404)
                self.send_body(file, found[1][file].body, {"X-Repo-Commit": found[0]})

            def send_body(self, key: str, body: bytes, headers: dict[str, str]) -> None:
                start = 0
                asked = self.headers.get("Range")
                if asked and hub.ranges and asked.startswith("bytes=") and asked.endswith("-"):
                    start = int(asked[len("bytes="):-1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                chunk = body[start:]
                cut = hub.cut_after.pop(key, None)
                if cut is not None:  # drop the connection part way
                    chunk = chunk[:cut]
                    self.close_connection = True
                self.wfile.write(chunk)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
