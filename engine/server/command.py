"""``rwkveval serve``: load a checkpoint and serve it over the OpenAI-compatible API.

    rwkveval serve --model path/to/rwkv7.pth [--port 8000] [--api-key-file FILE]
    rwkveval serve --model base.pth --adapter lora.pth --lora-alpha 32     # a fine-tune, merged at load

Listens on 127.0.0.1 unless ``--host`` says otherwise. Every limit of
:class:`engine.server.config.ServerConfig` has an option here.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine.adapters import add_adapter_options, fine_tune_name, options_from
from engine.argtypes import positive_int, positive_seconds

from .config import connection_limits


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .config import ServerConfig

    d = ServerConfig()
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, metavar="PATH", help="RWKV-7 checkpoint (.pth or .safetensors)")
    add_adapter_options(p.add_argument)
    p.add_argument("--name", default=None,
                   help="the model id clients send and /v1/models lists (default: the file's stem, "
                        "with '+ADAPTER-STEM' for each --adapter)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--device", default="cpu", help="engine device: cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy 2-core machine)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: no key; "
                     "prefer --api-key-file, a command line is visible to other users)")
    key.add_argument("--api-key-file", type=Path, default=None, help="read the API key from this file")
    p.add_argument("--max-batch", type=positive_int, default=d.max_batch,
                   help="sequences decoded together (default: %(default)s)")
    p.add_argument("--max-queue", type=positive_int, default=d.max_queue,
                   help="prompts waiting for a slot before 429 (default: %(default)s)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=d.max_prompt_tokens,
                   help="tokens per prompt (default: %(default)s)")
    p.add_argument("--max-tokens", type=positive_int, default=d.max_tokens,
                   help="generated tokens per prompt (default: %(default)s)")
    p.add_argument("--max-prompts", type=positive_int, default=d.max_prompts,
                   help="prompts per request (default: %(default)s)")
    p.add_argument("--keep-alive", type=positive_int, default=30,
                   help="seconds an idle connection stays open; longer than uvicorn's 5 s so that clients "
                        "pooling connections rarely reuse one the server is closing (default: %(default)s)")
    p.add_argument("--receive-timeout", type=positive_seconds, default=d.receive_timeout_s, metavar="S",
                   help="seconds a request's headers and body may take to arrive, from its first byte; a slower "
                        "one has its connection closed (default: %(default)s)")
    p.add_argument("--max-connections", type=positive_int, default=None, metavar="N",
                   help="open connections at once; past it, the one waiting longest without a complete request is "
                        "closed (default: under the open-file limit, %d here)" % connection_limits()[0])
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="(default: %(default)s)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    import engine
    from .app import create_app
    from .config import ServerConfig
    from .peers import Server, uvicorn_config

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    api_key = args.api_key
    if args.api_key_file is not None:
        api_key = args.api_key_file.read_text().strip()
        if not api_key:
            raise SystemExit(f"--api-key-file {args.api_key_file}: the file is empty")
    adapters = options_from(lambda name: getattr(args, name))
    model = engine.load_model(args.model, device=args.device, dtype=args.dtype, adapters=adapters)
    config = ServerConfig(
        model_name=args.name or fine_tune_name(args.model.stem, adapters.paths), api_key=api_key, max_batch=args.max_batch,
        max_queue=max(args.max_queue, args.max_prompts), max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens, max_prompts=args.max_prompts, receive_timeout_s=args.receive_timeout,
        max_connections=args.max_connections,
    )
    app = create_app(model, config)
    log = logging.getLogger("rwkveval.server")

    def started(urls: list[str]) -> None:  # after binding: the real port, also for --port 0
        log.info("serving %s as %r on %s (at most %d connections, %g s to receive a request)", args.model,
                 config.model_name, ", ".join(urls), config.connection_cap(), config.receive_timeout_s)

    uvicorn_options = dict(host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=args.keep_alive)
    server = Server(uvicorn_config(app, config, **uvicorn_options), on_started=started)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the captured SIGINT again once it has shut down
        pass
    return 0 if server.started else 3  # 3: uvicorn's code for a server that could not start
