"""The official ``openai`` Python client against ``rwkveval serve``: completions, chat, streaming."""
from __future__ import annotations

import pytest

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def served(tiny_model_path):
    model = engine.load_model(tiny_model_path)
    config = ServerConfig(model_name="tiny", api_key="test-key")
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="test-key", max_retries=0, timeout=60)
        yield client, model


def test_models(served):
    client, _ = served
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_completions(served):
    client, model = served
    out = client.completions.create(model="tiny", prompt="The cat sat on the", max_tokens=10, temperature=0)
    expected = model.generate([model.tokenizer.encode("The cat sat on the")], 10)[0]
    assert out.choices[0].text == expected.text
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 10


def test_completions_echo_logprobs(served):
    client, _ = served
    out = client.completions.create(model="tiny", prompt="hello world", max_tokens=0, echo=True, logprobs=2)
    logprobs = out.choices[0].logprobs
    assert logprobs.token_logprobs[0] is None and len(logprobs.tokens) == len("hello world")
    assert "".join(logprobs.tokens) == out.choices[0].text == "hello world"
    assert logprobs.text_offset == list(range(len("hello world")))


def test_chat(served):
    client, _ = served
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=8, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert isinstance(out.choices[0].message.content, str)


def test_chat_streaming(served):
    client, _ = served
    messages = [{"role": "user", "content": "Write a line"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                            stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == whole.choices[0].message.content


def test_completion_streaming(served):
    client, _ = served
    whole = client.completions.create(model="tiny", prompt="abc", max_tokens=15, temperature=0)
    stream = client.completions.create(model="tiny", prompt="abc", max_tokens=15, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == whole.choices[0].text


def test_errors_surface_as_openai_exceptions(served):
    client, _ = served
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=-3)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=1)
    bad = openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
