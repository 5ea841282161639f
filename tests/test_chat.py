"""``rwkveval chat`` (evals/chat.py, engine/conversation.py) on the tiny real model: three turns
through stdin give the replies of one greedy generate over the whole transcript and run only each
new message; a reply that ends at its blank line keeps it in the state; undo, save and load;
rewards shown per reply."""
from __future__ import annotations

import io
import re

import pytest
import torch

import engine
from engine.conversation import Conversation
from evals.cli import main

MESSAGES = ["Hello there", "What is 2+2?", "Tell me a story"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    from engine.server.background import torch_threads  # tiny rows: two contending threads are 10x slower

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return engine.load_model(tiny_model_path)


def chat(monkeypatch, capsys, tiny_model_path, lines, *args):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = main(["chat", "--model", str(tiny_model_path), "--max-tokens", "24", *args])
    return code, capsys.readouterr().out


def test_three_turns_through_stdin_equal_one_greedy_generate_over_the_transcript(monkeypatch, capsys,
                                                                                 tiny_model_path, tiny):
    code, out = chat(monkeypatch, capsys, tiny_model_path, MESSAGES, "--temperature", "0", "--stats",
                     "--system", "You are terse.")
    assert code == 0
    replies = re.findall(r"^Assistant: (.*)$", out, re.M)
    ran = [int(n) for n in re.findall(r"\[ran (\d+) prompt tokens \(prefill \1\)", out)]
    assert len(replies) == len(ran) == 3
    tok = tiny.tokenizer
    transcript = [0] + list(tok.encode("System: You are terse.\n\n"))
    separate = False
    for i, message in enumerate(MESSAGES):
        segment = list(tok.encode(("\n\n" if separate else "") + f"User: {message}\n\nAssistant:"))
        # only the new message runs (the first turn also runs token 0 and the system message)
        assert ran[i] == len(segment) + (len(transcript) if i == 0 else 0)
        transcript += segment
        (want,) = tiny.generate([transcript], 24, stop=["\n\n"])
        assert replies[i] == want.text.strip()
        transcript += want.tokens
        separate = want.finish_reason != "stop"


def test_a_reply_ending_at_its_blank_line_keeps_it_in_the_state(monkeypatch, tiny):
    # the tiny model rarely writes a blank line: end replies at a letter instead
    monkeypatch.setattr("engine.conversation.REPLY_END", "e")
    conversation = Conversation(tiny, temperature=0.0, max_tokens=30)
    turn = conversation.say("Hello")
    assert turn.finish_reason == "stop"
    tokens = conversation.tokens
    assert tok_text(tiny, tokens).endswith("e")  # the stop's bytes were fed, the reply text is cut before it
    assert "e" not in turn.reply
    _, state = tiny.forward(torch.tensor([tokens]))
    assert torch.allclose(conversation._point.state.wkv, state.wkv, atol=2e-5)
    second = conversation.say("Again")  # no separator: the reply's end is in the state already
    assert conversation.tokens[:len(tokens)] == tokens
    assert second.prompt_tokens == len(list(tiny.tokenizer.encode("User: Again\n\nAssistant:")))


def tok_text(model, tokens):
    return bytes(tokens[1:]).decode("latin-1")


def test_undo_save_and_load(tmp_path, tiny):
    a = Conversation(tiny, temperature=0.8, top_p=0.9, max_tokens=16, seed=3)
    a.say("first")
    snapshot = a.tokens
    a.say("second")
    undone = a.undo()
    assert undone.user == "second" and a.tokens == snapshot and len(a.turns) == 1
    again = a.say("second")
    assert again.reply == undone.reply  # the same turn index draws the same seed
    a.save(tmp_path / "chat.pt")
    b = Conversation(tiny, seed=99)
    b.load(tmp_path / "chat.pt")
    assert b.tokens == a.tokens and [t.reply for t in b.turns] == [t.reply for t in a.turns]
    assert torch.equal(b._point.state.wkv, a._point.state.wkv)
    assert b.say("third").reply == a.say("third").reply
    assert b.undo().user == "third" and b.undo().user == "second" and b.undo().user == "first" and b.undo() is None
    assert b.tokens == [0]
    other = engine.random_model(tiny.config, seed=1)
    with pytest.raises(engine.InputError, match="saved with another model"):
        Conversation(other).load(tmp_path / "chat.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(engine.InputError, match="not a saved conversation"):
        Conversation(tiny).load(tmp_path / "junk.pt")


def test_commands_through_stdin(monkeypatch, capsys, tiny_model_path, tmp_path):
    saved = tmp_path / "c.pt"
    lines = ["hi", "/temperature 0.5", "/top-p 2", "/undo", "/undo", f"/save {saved}", "/reset", f"/load {saved}",
             "/history", "/nonsense", "/quit", "never read"]
    code, out = chat(monkeypatch, capsys, tiny_model_path, lines, "--temperature", "0")
    assert code == 0
    assert "[temperature = 0.5]" in out and "expected a probability in (0, 1]" in out
    assert "[forgot: 'hi']" in out and "[nothing to undo]" in out
    assert f"[saved 0 turns to {saved}]" in out and "[conversation reset]" in out and "[loaded 0 turns" in out
    assert "[unknown command /nonsense; /help lists them]" in out and out.count("Assistant:") == 1


def test_each_reply_shows_its_reward(monkeypatch, capsys, tiny_model_path, tmp_path):
    pytest.importorskip("transformers")
    from evals.rewards import RewardInput, load
    from hf_tiny import build_reward_model

    folder = build_reward_model(tmp_path / "rm")
    code, out = chat(monkeypatch, capsys, tiny_model_path, MESSAGES[:2], "--temperature", "0",
                     "--reward", f"hf:{folder}")
    assert code == 0
    replies = re.findall(r"^Assistant: (.*)$", out, re.M)
    shown = [float(x) for x in re.findall(r"^\[reward (-?[0-9.]+)\]$", out, re.M)]
    reward = load(f"hf:{folder}")
    want = [reward.score([RewardInput(MESSAGES[0], replies[0])])[0],
            reward.score([RewardInput(MESSAGES[1], replies[1], (("user", MESSAGES[0]), ("assistant", replies[0])))])[0]]
    assert shown == pytest.approx(want, abs=1e-4)


def test_the_verifier_is_refused(monkeypatch, capsys, tiny_model_path):
    with pytest.raises(SystemExit, match="a chat has none"):
        chat(monkeypatch, capsys, tiny_model_path, ["hi"], "--reward", "verifier")


def test_a_saved_state_is_refused_by_a_model_with_other_adapters_or_another_initial_state(tmp_path, tiny,
                                                                                        tiny_model_path):
    g = torch.Generator().manual_seed(0)
    lora = {"blocks.0.att.key.lora_A": torch.randn(4, 64, generator=g),
            "blocks.0.att.key.lora_B": torch.randn(64, 4, generator=g)}
    torch.save(lora, tmp_path / "lora.pth")
    torch.save({f"blocks.{i}.att.time_state": torch.randn(1, 64, 64, generator=g) * 0.1 for i in range(12)},
               tmp_path / "state.pth")
    tuned = engine.load_model(tiny_model_path, adapters=[tmp_path / "lora.pth"], lora_alpha=4)
    a = Conversation(tuned, temperature=0.0, max_tokens=3)
    a.say("hi")
    a.save(tmp_path / "tuned.pt")
    b = Conversation(engine.load_model(tiny_model_path, adapters=[tmp_path / "lora.pth"], lora_alpha=4))
    b.load(tmp_path / "tuned.pt")  # the same files (and scale): the same model
    assert b.tokens == a.tokens
    with pytest.raises(engine.InputError, match=r"tuned.pt: saved with another model \(adapters"):
        Conversation(tiny).load(tmp_path / "tuned.pt")  # the base alone
    other_scale = engine.load_model(tiny_model_path, adapters=[tmp_path / "lora.pth"], lora_alpha=8)
    with pytest.raises(engine.InputError, match=r"saved with another model \(adapters"):
        Conversation(other_scale).load(tmp_path / "tuned.pt")
    Conversation(tiny).save(tmp_path / "plain.pt")
    stateful = engine.load_model(tiny_model_path, adapters=[tmp_path / "state.pth"])
    with pytest.raises(engine.InputError, match=r"plain.pt: saved with another model \((adapters|initial_state)"):
        Conversation(stateful).load(tmp_path / "plain.pt")


@pytest.mark.parametrize("path", ["model_identity", "turns", "settings", "point", "history", "settings.seed",
                                  "point.tokens", "point.state", "point.state.wkv", "point.separate"])
def test_a_damaged_saved_conversation_is_an_input_error_naming_the_file(tmp_path, tiny, path):
    a = Conversation(tiny, temperature=0.0, max_tokens=3)
    a.say("hi")
    a.save(tmp_path / "chat.pt")
    data = torch.load(tmp_path / "chat.pt", weights_only=True)
    *parents, key = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    del node[key]
    torch.save(data, tmp_path / "chat.pt")
    with pytest.raises(engine.InputError, match=rf"chat.pt: the saved conversation lacks .*'{key}'"):
        Conversation(tiny).load(tmp_path / "chat.pt")
    data = torch.load(tmp_path / "chat.pt", weights_only=True)
    data["version"] = 1
    torch.save(data, tmp_path / "old.pt")
    with pytest.raises(engine.InputError, match="old.pt: a conversation saved in version 1"):
        Conversation(tiny).load(tmp_path / "old.pt")


def test_a_saved_identity_with_a_field_this_model_lacks_is_refused_by_name(tmp_path, tiny):
    a = Conversation(tiny, temperature=0.0, max_tokens=3)
    a.say("hi")
    a.save(tmp_path / "chat.pt")
    data = torch.load(tmp_path / "chat.pt", weights_only=True)
    data["model_identity"]["dtype"] = "float16"  # written by another rwkveval, or edited
    torch.save(data, tmp_path / "chat.pt")
    with pytest.raises(engine.InputError, match=r"chat.pt: saved with another model \(dtype: saved float16, "
                                                r"this model None\)"):
        Conversation(tiny).load(tmp_path / "chat.pt")


def test_two_tuned_states_given_in_the_weights_are_two_models(tmp_path, tiny_model_path):
    """A tuned state merged into the weights (no adapter file to name it) is identified by its
    values: a conversation saved over one state does not load over another."""
    sd = torch.load(tiny_model_path, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(1)

    def with_state() -> engine.RWKV7:
        states = {f"blocks.{i}.att.time_state": torch.randn(1, 64, 64, generator=g) * 0.1 for i in range(12)}
        return engine.from_state_dict({**sd, **states})

    first, second = with_state(), with_state()
    a = Conversation(first, temperature=0.0, max_tokens=3)
    a.say("hi")
    a.save(tmp_path / "first.pt")
    Conversation(first).load(tmp_path / "first.pt")  # the same state: loads
    with pytest.raises(engine.InputError, match=r"first.pt: saved with another model \(initial_state"):
        Conversation(second).load(tmp_path / "first.pt")


@pytest.mark.parametrize("field, value, message", [
    ("tokens", [1, "two"], r"point.tokens should be token ids in \[0, 256\), found 'two'"),
    ("tokens", [1, 10**9], r"point.tokens should be token ids in \[0, 256\), found 1000000000"),
    ("logits", torch.zeros(3), r"point.logits should be a float tensor of shape \(256,\), found torch.float32 of shape \(3,\)"),
])
def test_a_saved_point_with_impossible_tokens_or_logits_is_an_input_error(tmp_path, tiny, field, value, message):
    a = Conversation(tiny, temperature=0.0, max_tokens=3)
    a.say("hi")
    a.save(tmp_path / "chat.pt")
    data = torch.load(tmp_path / "chat.pt", weights_only=True)
    data["point"][field] = value
    torch.save(data, tmp_path / "chat.pt")
    with pytest.raises(engine.InputError, match=message):
        Conversation(tiny).load(tmp_path / "chat.pt")
