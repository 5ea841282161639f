"""The OpenAI-compatible server against the tiny real model, over real HTTP on 127.0.0.1.

Parity first: what the server answers equals what the engine computes in-process (generation
token for token, prompt log-probabilities to float rounding). Then the contract details that
clients rely on (logprobs layout, streaming, tokenizer endpoints), and the limits.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import given, settings, strategies as st

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads
from engine.server.chat import JINJA_TEMPLATE, render, render_pieces, render_tokens
from engine.server.tokens import offsets, token_key, token_pieces


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return engine.load_model(tiny_model_path)


@pytest.fixture(scope="module")
def server(model):
    with torch_threads(1), serve_in_thread(create_app(model, ServerConfig(model_name="tiny", max_tokens=600))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def completion(client, **body):
    response = client.post("/v1/completions", json={"model": "tiny", **body})
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------- parity with the engine


def test_completion_equals_engine_generate(server, model):
    prompts = ["The cat sat on the", "Once upon a time", "1, 2, 3,"]
    data = completion(server, prompt=prompts, max_tokens=12, temperature=0)
    expected = model.generate([model.tokenizer.encode(p) for p in prompts], 12)
    assert [c["text"] for c in data["choices"]] == [g.text for g in expected]
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert data["usage"]["prompt_tokens"] == sum(len(p.encode()) for p in prompts)
    assert data["usage"]["completion_tokens"] == 36


def test_seeded_sampling_equals_engine_and_repeats(server, model):
    prompt = [0] + list(b"In the beginning")
    body = dict(prompt=prompt, max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
    first, second = completion(server, **body), completion(server, **body)
    expected = model.generate([prompt], 10, temperature=0.9, top_p=0.9, seed=7)[0]
    assert first["choices"][0]["text"] == second["choices"][0]["text"] == expected.text


def test_stop_string_cuts_the_text(server, model):
    prompt = "The cat sat on the"
    free = completion(server, prompt=prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
    stop = free[3:5]
    data = completion(server, prompt=prompt, max_tokens=12, temperature=0, stop=[stop, "zzz"])
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == free[:free.index(stop)]


def test_echo_logprobs_equal_engine_loglikelihood(server, model):
    ctx, cont = [0] + list(b"The quick brown fox jumps over the lazy"), list(b" dog")
    data = completion(server, prompt=ctx + cont, max_tokens=1, temperature=0, echo=True, logprobs=1)
    lp = data["choices"][0]["logprobs"]
    n = len(ctx) + len(cont)
    assert len(lp["token_logprobs"]) == n + 1  # the prompt, then the one generated token
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    # lm-evaluation-harness's local-completions reads exactly this: [ctxlen:-1]
    tokens, tops = lp["token_logprobs"][len(ctx):-1], lp["top_logprobs"][len(ctx):-1]
    logprob = sum(tokens)
    greedy = all(t == max(top.values()) for t, top in zip(tokens, tops))
    (expected_lp, expected_greedy), = model.loglikelihood([(ctx, cont)])
    assert logprob == pytest.approx(expected_lp, abs=1e-4)
    assert greedy == expected_greedy


def test_echo_with_max_tokens_zero_scores_only_the_prompt(server, model):
    prompt = "héllo wörld"
    data = completion(server, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    choice = data["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert len(lp["tokens"]) == len(prompt.encode())
    assert "".join(lp["tokens"]) == prompt
    for i, (piece, offset) in enumerate(zip(lp["tokens"], lp["text_offset"])):
        assert prompt[offset:offset + len(piece)] == piece
    assert all(len(top) in (3, 4) for top in lp["top_logprobs"][1:])  # top 3 plus the chosen token
    ids = model.tokenizer.encode(prompt)
    expected = model.loglikelihood_rolling([ids[1:]], bos=ids[0])[0]
    assert sum(lp["token_logprobs"][1:]) == pytest.approx(expected, abs=1e-4)


def test_echo_logprobs_of_a_model_on_an_accelerator(model):
    # a GPU model's prompt logits live on the GPU: the scheduler's decoder takes them to the host
    # before they are reduced (they were gathered with a CPU index: a 500 on every echo request)
    from helpers import AcceleratorStandIn

    prompt = [0] + list(b"The quick brown fox")
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 2}
    with torch_threads(1), serve_in_thread(create_app(AcceleratorStandIn(model), ServerConfig(model_name="tiny"))) as url:
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    lp = response.json()["choices"][0]["logprobs"]
    expected = model.loglikelihood_rolling([prompt[1:]], bos=0)[0]
    assert sum(lp["token_logprobs"][1:len(prompt)]) == pytest.approx(expected, abs=1e-4)
    assert response.json()["choices"][0]["text"][len("The quick brown fox") + 1:] == \
        model.generate([prompt], 3)[0].text


def test_logprobs_without_echo_cover_generated_tokens(server):
    data = completion(server, prompt="abc", max_tokens=5, temperature=0, logprobs=2)
    choice = data["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert len(lp["token_logprobs"]) == 5
    # greedy: each chosen token is the most likely one
    assert all(t == max(top.values()) for t, top in zip(lp["token_logprobs"], lp["top_logprobs"]))


# ---------------------------------------------------------------------- token strings


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=3), max_size=12), st.one_of(st.none(), st.integers(0, 40)))
def test_token_pieces_concatenate_to_the_decoded_text(parts, keep):
    pieces = token_pieces(parts, keep)
    data = b"".join(parts)[:keep]
    assert "".join(pieces) == data.decode("utf-8", errors="replace")
    text = "".join(pieces)
    for piece, offset in zip(pieces, offsets(pieces)):
        assert text[offset:offset + len(piece)] == piece


def test_token_keys_are_distinct_per_byte():
    keys = {token_key(bytes([b]), b) for b in range(256)}
    assert len(keys) == 256
    assert token_key(b"\xe2", 226) == "bytes:\\xe2" and token_key(b"", 0) == "<|endoftext|>"


# ---------------------------------------------------------------------- chat


def test_chat_format_and_template_agree():
    jinja2 = pytest.importorskip("jinja2")
    messages = [("system", "Be brief."), ("user", "Hi\n\n\nthere"), ("assistant", "Hello."), ("user", "2+2?")]
    text = render(messages)
    assert text == "System: Be brief.\n\nUser: Hi\nthere\n\nAssistant: Hello.\n\nUser: 2+2?\n\nAssistant:"
    plain = [(r, c.replace("\n\n\n", "\n")) for r, c in messages]
    rendered = jinja2.Environment().from_string(JINJA_TEMPLATE).render(
        messages=[{"role": r, "content": c} for r, c in plain], add_generation_prompt=True)
    assert rendered == render(plain)
    # the pieces a chat feeds one by one: a turn ends a piece before System:/User:, after Assistant:
    assert render_pieces(messages) == ["System: Be brief.\n\n", "User: Hi\nthere\n\nAssistant:", " Hello.\n\n",
                                       "User: 2+2?\n\nAssistant:"]
    assert render_pieces(messages[:3]) == ["System: Be brief.\n\n", "User: Hi\nthere\n\nAssistant:", " Hello."]
    assert render_tokens(messages, lambda text: [len(text)]) == [0] + [len(p) for p in render_pieces(messages)]


def test_chat_completion_is_the_completion_of_the_rwkv_prompt(server, model):
    messages = [{"role": "system", "content": "You answer."}, {"role": "user", "content": "Say hi"}]
    response = server.post("/v1/chat/completions", json={"model": "tiny", "messages": messages,
                                                          "max_tokens": 12, "temperature": 0})
    assert response.status_code == 200, response.text
    data = response.json()
    prompt = render_tokens([(m["role"], m["content"]) for m in messages], model.tokenizer.encode)
    expected = model.generate([prompt], 12, stop=["\n\nUser:", "\n\nSystem:"])[0]
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": expected.text.lstrip()}
    assert data["usage"]["prompt_tokens"] == len(prompt)


def test_the_chat_command_and_the_server_run_the_same_prompt_tokens(server, model):
    from engine.conversation import Conversation

    system, message = "Be brief.", "Hi\n\n\nthere"
    chat = Conversation(model, system=system, temperature=0.0, max_tokens=4)
    before = chat.tokens + chat.message_tokens(message)  # what the first turn feeds
    messages = [{"role": "system", "content": system}, {"role": "user", "content": message}]
    tokenized = server.post("/tokenize", json={"model": "tiny", "messages": messages}).json()
    assert tokenized["tokens"] == before == render_tokens([("system", system), ("user", message)], model.tokenizer.encode)
    assert before[0] == 0 and bytes(before[1:]).decode() == render([("system", system), ("user", message)])
    chat.say(message)
    assert chat.tokens[:len(before)] == before


def sse(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_chat_streaming_equals_the_whole_response(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell a story"}], "max_tokens": 40,
            "temperature": 0}
    whole = server.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    with server.stream("POST", "/v1/chat/completions", json={**body, "stream": True,
                                                            "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_completion_streaming_with_stop_strings(server):
    body = {"model": "tiny", "prompt": ["The cat sat on the", "abc"], "max_tokens": 30, "temperature": 0,
            "stop": [" the the", "zz"]}
    whole = server.post("/v1/completions", json=body).json()["choices"]
    with server.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        events = sse(response)
    assert events[-1] == "[DONE]"
    for i, choice in enumerate(whole):
        streamed = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"][0]["index"] == i)
        assert streamed == choice["text"]
        reasons = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"][0]["index"] == i]
        assert reasons[-1] == choice["finish_reason"]


# ---------------------------------------------------------------------- service endpoints


def test_models_health_stats(server):
    assert server.get("/health").json()["status"] == "ok"
    models = server.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["rwkveval"]["config"]["vocab_size"] == 256
    completion(server, prompt="x", max_tokens=2, temperature=0)
    stats = server.get("/stats").json()
    assert stats["requests"] >= 1 and stats["generated_tokens"] >= 2 and stats["prompt_tokens"] >= 1
    assert set(stats["queue"]) == {"waiting", "running"}
    assert stats["throughput"]["generated_tokens_per_s"] > 0


def test_tokenizer_endpoints_as_lm_eval_uses_them(server):
    info = server.get("/tokenizer_info").json()
    assert "eos_token" in info and info["eos_token_id"] == 0
    tokens = server.post("/tokenize", json={"prompt": "héllo", "add_special_tokens": False}).json()["tokens"]
    assert tokens == list("héllo".encode())
    assert server.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": "héllo"}
    # lm-eval finds the end-of-document id by encoding eos_token
    assert server.post("/tokenize", json={"prompt": info["eos_token"]}).json()["tokens"] == [0]


def test_tokenize_counts_a_chat_longer_than_a_prompt_may_be_as_it_counts_a_text(model):
    # /tokenize is how a client learns a prompt is too long (to cut it): it counts, the
    # completion endpoints refuse
    config = ServerConfig(model_name="tiny", max_prompt_tokens=8)
    messages = [{"role": "user", "content": "a message of more than eight tokens"}]
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        text = httpx.post(f"{url}/tokenize", json={"prompt": "a text of more than eight tokens"}, timeout=60)
        chat = httpx.post(f"{url}/tokenize", json={"messages": messages}, timeout=60)
        refused = httpx.post(f"{url}/v1/chat/completions", json={"messages": messages}, timeout=60)
    assert text.status_code == 200 and text.json()["count"] > 8
    assert chat.status_code == 200, chat.text
    assert chat.json()["tokens"] == render_tokens([("user", messages[0]["content"])], model.tokenizer.encode)
    assert refused.status_code == 400 and "the server's limit is 8" in refused.json()["error"]["message"]


# ---------------------------------------------------------------------- errors and limits


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": 601}, "max_tokens"),  # over the server's limit
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),  # 0 needs echo
    ({"prompt": [1, 2, 256]}, "prompt"),  # out of the vocabulary
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "echo": 1}, "echo"),
    ({"prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"prompt": "x" * 70000}, "prompt"),  # longer than max_prompt_tokens
])
def test_invalid_completion_requests_get_400_naming_the_field(server, body, param):
    response = server.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_unknown_model_is_404_and_malformed_json_is_400(server):
    response = server.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = server.post("/v1/completions", content=b'{"prompt": "x"', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = server.post("/v1/chat/completions", json={"messages": [{"role": "tool", "content": "x"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages.0.role"
    assert server.get("/no/such/route").status_code == 404


def test_api_key(model):
    config = ServerConfig(model_name="tiny", api_key="s3cret")
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx.get(f"{url}/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                              headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_full_queue_answers_429_with_retry_after(model):
    config = ServerConfig(model_name="tiny", max_batch=1, max_queue=2, max_prompts=2)
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url, httpx.Client(base_url=url) as client:
        long = {"prompt": ["a", "b"], "max_tokens": 2000, "temperature": 0, "stream": True}
        with client.stream("POST", "/v1/completions", json=long, timeout=60) as busy:
            lines = busy.iter_lines()  # kept: a discarded iterator would close the connection
            next(lines)  # the first row is running, the second one waits
            assert wait_for(lambda: client.get("/stats").json()["queue"] == {"waiting": 1, "running": 1})
            response = client.post("/v1/completions", json={"prompt": ["c", "d"], "max_tokens": 1})
            assert response.status_code == 429
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "queue_full"
            del lines
        # closing the stream cancelled both rows: the server is free again
        assert wait_for(lambda: client.get("/stats").json()["queue"] == {"waiting": 0, "running": 0})
        assert client.post("/v1/completions", json={"prompt": "c", "max_tokens": 1}).status_code == 200


def test_client_disconnect_cancels_the_generation(server):
    def stats():
        return server.get("/stats").json()

    before = stats()["cancelled_prompts"]
    # streaming: read one chunk, then hang up
    with server.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 600, "stream": True,
                                                        "temperature": 0}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    assert wait_for(lambda: stats()["cancelled_prompts"] >= before + 1 and stats()["queue"]["running"] == 0)
    # whole response: the client gives up waiting
    with pytest.raises(httpx.ReadTimeout):
        server.post("/v1/completions", json={"prompt": "y", "max_tokens": 600, "temperature": 0}, timeout=0.5)
    assert wait_for(lambda: stats()["cancelled_prompts"] >= before + 2 and stats()["queue"]["running"] == 0)
    generated = stats()["generated_tokens"]
    time.sleep(0.3)
    assert stats()["generated_tokens"] == generated  # nothing is still decoding for them
