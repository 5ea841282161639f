"""``rwkveval chat``: a multi-turn chat in the terminal, the conversation kept as RNN state.

    rwkveval chat --model path/to/rwkv7.pth [--system TEXT] [--reward SPEC]

Each line read is a message; the reply streams as it is decoded. A new turn runs only its own
message (:class:`engine.conversation.Conversation`). Lines starting with ``/`` are commands:
``/reset``, ``/undo``, ``/temperature X``, ``/top_p X``, ``/save FILE``, ``/load FILE``,
``/history``, ``/help``, ``/quit``. With ``--reward`` each reply's reward is shown (the
conversation so far as the reward model's chat). Input need not be a terminal: piped lines are
read the same way, so a chat can be scripted and tested.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from engine.argtypes import checked, positive_int

HELP = """commands:
  /reset            start over (the system message stays)
  /undo             forget the last message and its reply
  /temperature X    sampling temperature (0: greedy)
  /top_p X          nucleus top-p in (0, 1]
  /save FILE        save the conversation (its text and its state)
  /load FILE        load a saved conversation
  /history          show the transcript
  /help             this list
  /quit             leave (end of input does too)"""

_temperature = checked(float, lambda v: v >= 0, "a temperature >= 0 (0 is greedy)")
_top_p = checked(float, lambda v: 0 < v <= 1, "a probability in (0, 1]")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("chat", help="chat with a model in the terminal (the conversation kept as RNN state)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="PATH|NAME",
                   help="checkpoint (.pth/.safetensors) or official name such as rwkv7-g1-0.1b")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message opening the chat (default: none)")
    p.add_argument("--device", default="cpu", help="engine device: cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (default: %(default)s)")
    p.add_argument("--temperature", type=_temperature, default=1.0,
                   help="sampling temperature, 0 for greedy (default: %(default)s, as RWKV's chat demo)")
    p.add_argument("--top-p", type=_top_p, default=0.3, help="nucleus top-p (default: %(default)s, as RWKV's chat demo)")
    p.add_argument("--max-tokens", type=positive_int, default=1024, help="tokens per reply (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed; turn i uses its own (default: random)")
    p.add_argument("--reward", default=None, metavar="SPEC",
                   help="show each reply's reward: hf:NAME_OR_DIR or rwkv:CHECKPOINT (default: none)")
    p.add_argument("--reward-device", default=None, help="device of the reward model (default: --device)")
    p.add_argument("--trust-remote-code", action="store_true", default=False,
                   help="let a Hugging Face reward model run its repository's code (default: off)")
    p.add_argument("--judge-prompt", type=Path, default=None, metavar="FILE",
                   help="the RWKV judge's prompt with {question} and {answer} (default: built in)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--stats", action="store_true", default=False,
                   help="after each reply, show the tokens the turn ran and generated (default: off)")
    p.set_defaults(run=run)
    return p


def _load_reward(args: argparse.Namespace):
    from evals.rewards import RewardError, RewardOptions, load, parse_spec

    if args.reward is None:
        if args.judge_prompt is not None or args.trust_remote_code:
            raise SystemExit("rwkveval chat: --judge-prompt and --trust-remote-code need --reward")
        return None
    try:
        spec = parse_spec(args.reward)
        if spec.kind == "verifier":
            raise RewardError("--reward verifier checks benchmark answers against a reference; a chat has none "
                              "(use hf:NAME_OR_DIR or rwkv:CHECKPOINT)")
        prompt = args.judge_prompt.read_text(encoding="utf-8") if args.judge_prompt else None
        return load(spec, RewardOptions(device=args.reward_device or args.device, batch_size=1,
                                        trust_remote_code=args.trust_remote_code, judge_prompt=prompt))
    except RewardError as error:
        raise SystemExit(f"rwkveval chat: {error}") from None


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    import torch

    import engine
    from engine.conversation import Conversation
    from evals.models import ModelSpecError, resolve

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        resolved = resolve(args.model)
    except ModelSpecError as error:
        raise SystemExit(f"rwkveval chat: {error}") from None
    reward = _load_reward(args)
    model = engine.load_model(resolved.path, device=args.device, dtype=args.dtype)
    chat = Conversation(model, args.system, args.temperature, args.top_p, args.max_tokens, args.seed)
    interactive = stdin.isatty()
    say = _Printer(stdout)
    if interactive:
        say.line(f"chatting with {resolved.name}; /help lists the commands")
    while True:
        if interactive:
            say.text("> ")
        line = stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _command(chat, line, say):
                break
            continue
        counts = [0, 0]
        say.text("Assistant: ")
        turn = chat.say(line, on_text=say.text, on_tokens=lambda p, g: counts.__setitem__(0, counts[0] + p))
        say.line("")
        if args.stats:
            say.line(f"[ran {turn.prompt_tokens} prompt tokens (prefill {counts[0]}), generated "
                     f"{turn.generated_tokens}; finish: {turn.finish_reason}]")
        if reward is not None:
            say.line(f"[reward {_reward_of(reward, chat):.4f}]")
    return 0


def _reward_of(reward, chat) -> float:
    from evals.rewards import RewardInput

    history = tuple(pair for t in chat.turns[:-1] for pair in (("user", t.user), ("assistant", t.reply)))
    if chat.system:
        history = (("system", chat.system),) + history
    last = chat.turns[-1]
    return reward.score([RewardInput(last.user, last.reply, history)])[0]


def _command(chat, line: str, say: _Printer) -> bool:
    """Run one /command; False to leave."""
    from engine.errors import EngineError

    name, _, value = line[1:].strip().partition(" ")
    value = value.strip()
    name = name.replace("-", "_").lower()
    try:
        if name in ("quit", "exit"):
            return False
        if name == "help":
            say.line(HELP)
        elif name == "reset":
            chat.reset()
            say.line("[conversation reset]")
        elif name == "undo":
            turn = chat.undo()
            say.line("[nothing to undo]" if turn is None else f"[forgot: {turn.user[:60]!r}]")
        elif name in ("temperature", "top_p"):
            parse = _temperature if name == "temperature" else _top_p
            setattr(chat, name, parse(value))
            say.line(f"[{name} = {getattr(chat, name)}]")
        elif name in ("save", "load"):
            if not value:
                say.line(f"[/{name} needs a file name]")
            elif name == "save":
                chat.save(value)
                say.line(f"[saved {len(chat.turns)} turns to {value}]")
            else:
                chat.load(value)
                say.line(f"[loaded {len(chat.turns)} turns from {value}]")
        elif name == "history":
            say.line(chat.text())
        else:
            say.line(f"[unknown command /{name}; /help lists them]")
    except (argparse.ArgumentTypeError, EngineError, OSError) as error:
        say.line(f"[{error}]")
    return True


class _Printer:
    def __init__(self, out: TextIO):
        self.out = out

    def text(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str) -> None:
        self.text(text + "\n")
