"""The ``rwkveval`` command. Each subcommand lives in its own module, which adds its parser with
``add_parser(subparsers)`` and sets ``run`` (a function of the parsed arguments returning an exit
code); this file only lists them. It lives in ``evals`` (the top layer) because its subcommands
span both layers; the engine never imports ``evals``.

    rwkveval serve --model path/to/rwkv7.pth      # OpenAI-compatible server (engine/server/command.py)
    rwkveval merge BASE --adapter A -o OUT.safetensors   # adapters merged into a checkpoint (engine/merge_command.py)
    rwkveval compare RUN_A RUN_B                  # paired comparison of two report folders (evals/compare.py)
    rwkveval cache info|clear --cache-dir DIR     # the response cache (evals/cache.py)
    rwkveval chat --model M [--reward SPEC]       # a chat in the terminal, kept as RNN state (evals/chat.py)
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.errors import EngineError


def build_parser() -> argparse.ArgumentParser:
    from engine import merge_command as merge
    from engine.server import command as serve
    from evals import cache, chat, compare  # rwkveval cache {info,clear}, chat, compare RUN_A RUN_B

    parser = argparse.ArgumentParser(prog="rwkveval", description="rwkveval: RWKV-7 evaluation suite and engine")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (serve, merge, compare, cache, chat):
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (EngineError, OSError) as error:  # a bad checkpoint or path: one line, not a traceback
        print(f"rwkveval {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
