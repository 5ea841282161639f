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
    row = Row(Settings(6, keep_state=True), prompt=[0, 1, 2, 3])
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
    row = Row(Settings(0, keep_state=True), prompt=[0, 4, 5])
    _run([row])
    _, state = MODEL.forward(torch.tensor([[0, 4, 5]]))
    assert row.finish_reason == "length" and row.tokens == [] and torch.allclose(row.state.wkv, state.wkv, atol=2e-5)
