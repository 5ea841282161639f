"""The shared decoding core (engine/decoding.py): rows from forked states, kept states, step
delimiters, stops that began in an earlier step, dropped rows, and the callers built on it."""
from __future__ import annotations

import pytest
import torch

import engine
from engine.decoding import Decoder, Row, Settings, row_seed
from helpers import SMALL


def _model():
    return engine.random_model(SMALL, seed=11)


MODEL = _model()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    from engine.server.background import torch_threads  # tiny rows: two contending threads are 10x slower

    with torch_threads(1):
        yield


def _run(rows, batch=8, **kwargs):
    done = []
    Decoder(MODEL, max_batch=batch, on_finish=done.append, **kwargs).run(rows)
    return done


def test_row_from_a_forked_state_equals_a_prompt_row():
    prompt = [0, 72, 105, 33, 5]
    _, state = MODEL.forward(torch.tensor([prompt[:-1]]))
    logits, state = MODEL.forward(torch.tensor([prompt[-1:]]), state)
    whole = Row(Settings(10), prompt=prompt)
    forked = [Row(Settings(10), start=state.select([0]), start_logits=logits[0, -1]) for _ in range(3)]
    _run([whole] + forked)
    assert all(r.tokens == whole.tokens for r in forked)
    assert whole.tokens == MODEL.generate([prompt], 10)[0].tokens


def test_keep_state_hands_back_the_state_after_the_last_token():
    row = Row(Settings(6, keep_state=frozenset({"length"})), prompt=[0, 1, 2, 3])
    _run([row])
    assert row.finish_reason == "length" and len(row.tokens) == 6
    logits, state = MODEL.forward(torch.tensor([[0, 1, 2, 3] + row.tokens]))
    assert torch.allclose(row.state.wkv, state.wkv, atol=2e-5)
    assert torch.allclose(row.logits, logits[0, -1], atol=2e-5)
    # a continuation from the kept state equals generating on from the whole sequence
    more = Row(Settings(5), start=row.state, start_logits=row.logits)
    _run([more])
    assert row.tokens + more.tokens == MODEL.generate([[0, 1, 2, 3]], 11)[0].tokens


def _abc(t: int) -> bytes:
    """Token bytes over three letters, so stop strings occur in a random model's output."""
    return b"abc"[t % 3:t % 3 + 1]


def _letters(tokens):
    return b"".join(_abc(t) for t in tokens).decode()


def test_delimiter_ends_a_step_and_keeps_its_bytes():
    ref = Row(Settings(40), prompt=[0, 72, 105])
    _run([ref], token_bytes=_abc)
    text = _letters(ref.tokens)
    delim = text[6:8]
    row = Row(Settings(40, delimiter=delim), prompt=[0, 72, 105])
    _run([row], token_bytes=_abc)
    end = text.index(delim) + 2
    assert row.finish_reason == "step" and row.stop == delim
    assert row.tokens == ref.tokens[:end] and row.text() == text[:end]


def test_a_stop_that_began_in_the_history_cuts_before_the_row():
    ref = Row(Settings(30), prompt=[0, 72, 105])
    _run([ref], token_bytes=_abc)
    text = _letters(ref.tokens)
    at = next(i for i in range(3, 28) if text[i:i + 3] not in text[:i + 2])  # first seen at i
    stop, split = text[at:at + 3], at + 1  # the stop starts one letter before the row's first token
    _, state = MODEL.forward(torch.tensor([[0, 72, 105] + ref.tokens[:split - 1]]))
    logits, state = MODEL.forward(torch.tensor([ref.tokens[split - 1:split]]), state)
    row = Row(Settings(20, stop_strs=(stop,)), start=state, start_logits=logits[0, -1],
              history=text[:split].encode())
    _run([row], token_bytes=_abc)
    assert row.finish_reason == "stop" and row.stop == stop
    assert row.tokens == ref.tokens[split:split + 2] and row.text_bytes == -1 and row.text() == ""
    # the same stop searched without the history is found only later, or never
    blind = Row(Settings(20, stop_strs=(stop,)), start=state, start_logits=logits[0, -1])
    _run([blind], token_bytes=_abc)
    assert len(blind.tokens) > 2


def test_seeded_rows_do_not_depend_on_their_neighbours():
    def rows():
        return [Row(Settings(8, 1.0, seed=row_seed(7, i)), prompt=[0, 9 + i]) for i in range(5)]
    a, b = _run(rows(), batch=5), _run(rows(), batch=2)
    key = lambda r: r.prompt  # noqa: E731
    assert [r.tokens for r in sorted(a, key=key)] == [r.tokens for r in sorted(b, key=key)]


def test_drop_removes_rows_and_the_rest_go_on():
    finished = []
    decoder = Decoder(MODEL, max_batch=4, on_finish=finished.append)
    rows = [Row(Settings(5), prompt=[0, 3 + i], tag=i) for i in range(3)]
    decoder.admit(rows)
    decoder.step()
    gone = decoder.drop(lambda row: row.tag == 1)
    assert [r.tag for r in gone] == [1] and len(decoder) == 2
    while len(decoder):
        decoder.step()
    assert sorted(r.tag for r in finished) == [0, 2]
    alone = MODEL.generate([[0, 3], [0, 5]], 5)
    assert [r.tokens for r in sorted(finished, key=lambda r: r.tag)] == [g.tokens for g in alone]


def test_zero_budget_rows_finish_at_admission_with_their_state():
    row = Row(Settings(0, keep_state=frozenset({"length"})), prompt=[0, 4, 5])
    _run([row])
    _, state = MODEL.forward(torch.tensor([[0, 4, 5]]))
    assert row.finish_reason == "length" and row.tokens == [] and torch.allclose(row.state.wkv, state.wkv, atol=2e-5)


# ---------------------------------------------------------------------- logits on the host, callbacks


def test_a_model_on_an_accelerator_decodes_from_logits_taken_to_the_host():
    from helpers import AcceleratorStandIn

    seen = []

    def on_logits(rows, starts, logits):
        seen.append(type(logits))

    def rows():
        return [Row(Settings(6, 1.0, seed=row_seed(3, i), logprobs=2), prompt=[0, 7 + i, 9]) for i in range(3)]

    here, there = rows(), rows()
    Decoder(MODEL, max_batch=2).run(here)
    decoder = Decoder(AcceleratorStandIn(MODEL), max_batch=2)
    decoder.admit(there[:2], on_logits=on_logits)
    decoder.run(there[2:])
    assert seen and all(kind is torch.Tensor for kind in seen)  # plain CPU tensors, never the device's
    assert [r.tokens for r in there] == [r.tokens for r in here]
    assert [lp for r in there for lp in r.logprobs] == pytest.approx([lp for r in here for lp in r.logprobs])


def test_on_logits_rows_are_indices_into_the_admitted_rows():
    prompt = [0, 72, 105]
    logits, state = MODEL.forward(torch.tensor([prompt]))
    forked = Row(Settings(2), start=state, start_logits=logits[0, -1])  # runs nothing at admission
    fresh = Row(Settings(2), prompt=[0, 5, 6, 7])
    calls = []
    Decoder(MODEL).admit([forked, fresh], on_logits=lambda rows, starts, lg: calls.append((rows, starts, lg.shape)))
    assert calls == [([1], [0], torch.Size([1, 4, MODEL.config.vocab_size]))]


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -0.5, True])
def test_settings_refuse_a_temperature_that_is_not_a_finite_number(temperature):
    with pytest.raises(engine.InputError, match="temperature must be a finite number >= 0"):
        Settings(4, temperature).check(256)


def test_a_decoder_names_max_batch_in_its_error():
    with pytest.raises(engine.InputError, match="max_batch must be an int >= 1, found 0"):
        Decoder(MODEL, max_batch=0)


# ---------------------------------------------------------------------- kept states


class _Counting:
    """MODEL, counting the rows fed to it in decoding steps ([B, 1] calls)."""

    def __init__(self):
        self.config, self.tokenizer, self.device = MODEL.config, MODEL.tokenizer, MODEL.device
        self.step_rows = 0

    def zero_state(self, batch_size):
        return MODEL.zero_state(batch_size)

    def forward(self, tokens, state=None, logits="all", **kwargs):
        if tokens.shape[1] == 1:
            self.step_rows += tokens.shape[0]
        return MODEL.forward(tokens, state, logits, **kwargs)


def test_a_state_is_kept_only_for_the_finish_reasons_asked_for():
    model = _Counting()
    step = Row(Settings(10, delimiter="zzz", keep_state=frozenset({"step"})), prompt=[0, 3, 4])
    Decoder(model).run([step])
    assert step.finish_reason == "length" and step.state is None and step.logits is None
    assert model.step_rows == len(step.tokens) - 1  # the last token is never fed: nobody goes on from it
    model.step_rows = 0
    kept = Row(Settings(10, delimiter="zzz", keep_state=frozenset({"length"})), prompt=[0, 3, 4])
    Decoder(model).run([kept])
    assert kept.tokens == step.tokens and model.step_rows == len(kept.tokens)
    _, state = MODEL.forward(torch.tensor([[0, 3, 4] + kept.tokens]))
    assert torch.allclose(kept.state.wkv, state.wkv, atol=2e-5)


def test_rows_going_on_after_a_kept_one_finish_decode_from_a_view():
    # a finishing row that keeps its state is fed with the survivors, which then go on from a
    # prefix of that batch: the result must equal decoding them alone
    rows = [Row(Settings(7 - 4 * (i % 2), keep_state=frozenset({"length"})), prompt=[0, 11 + i]) for i in range(4)]
    decoder = Decoder(MODEL, max_batch=4)
    decoder.admit(rows)
    for _ in range(3):
        decoder.step()
    assert [r.finish_reason for r in rows] == [None, "length", None, "length"] and len(decoder) == 2
    # the survivors' state is the first rows of the step's batch, not a copy of them
    assert decoder.state.batch_size == 2 and not decoder.state.wkv.is_contiguous()
    while len(decoder):
        decoder.step()
    for r in rows:
        (alone,) = MODEL.generate([r.prompt], r.settings.max_new_tokens)
        assert r.tokens == alone.tokens
