"""``rwkveval serve`` as a command: it starts, listens on 127.0.0.1, serves, and stops on SIGINT;
a bad checkpoint path is one clear line and exit code 2."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from evals.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def test_serve_parses_its_options():
    args = build_parser().parse_args(["serve", "--model", "m.pth", "--port", "0", "--max-batch", "4"])
    assert (args.command, args.host, args.port, args.max_batch) == ("serve", "127.0.0.1", 0, 4)


def test_serve_starts_answers_and_stops(tiny_model_path):
    command = [sys.executable, "-m", "evals.cli", "serve", "--model", str(tiny_model_path), "--port", "0",
               "--threads", "1", "--name", "tiny", "--log-level", "info"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url, seen, deadline = None, [], time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "the server did not start:\n" + "".join(seen)
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"] == "tiny"
        out = httpx.post(f"{url}/v1/completions", json={"prompt": "ab", "max_tokens": 2}, timeout=30).json()
        assert out["usage"]["completion_tokens"] == 2
    finally:
        interrupt(process)
    assert process.returncode == 0


def interrupt(process: subprocess.Popen) -> None:
    """Stop a ``rwkveval serve`` process as Ctrl-C does (bounded: killed if it lingers)."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_serve_with_a_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rwkveval serve:") and "nope.pth" in err and err.count("\n") == 1
