"""completion / acompletion / embedding against the fake upstream: shapes, params, streams."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import pytest

import llmux

from conftest import MSGS, hdr

DEFAULT_REPLY = (
    "Hello! This is the fake upstream speaking. Every answer you receive from me is exactly "
    "twenty words long and deterministic."
)


def test_unary_shape_and_access(fake, key):
    r = llmux.completion(
        model="openai/gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key)
    )
    assert isinstance(r, llmux.ModelResponse)
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert r["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 20
    assert r["usage"]["total_tokens"] == r.usage.prompt_tokens + 20
    assert r.model == "gpt-4o-mini"
    assert r.object == "chat.completion"
    d = r.model_dump()
    assert set(d) >= {"id", "created", "model", "object", "system_fingerprint", "choices", "usage"}
    assert json.loads(r.model_dump_json())["choices"][0]["message"]["content"] == DEFAULT_REPLY
    assert r._hidden_params["custom_llm_provider"] == "openai"
    assert r._hidden_params["api_base"] == fake.base_url
    assert r._response_ms > 0
    assert fake.stats(key)["requests"] == 1


def test_fake_upstream_validates_against_openai_types(fake):
    """The fake's raw wire format must satisfy the official SDK's models, so it cannot drift
    into agreeing with our own bugs."""
    from openai.types import CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    def post(body: dict, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(
            fake.base_url + "/" + ("embeddings" if "input" in body else "chat/completions"),
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", **(headers or {})},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.read()

    ChatCompletion.model_validate_json(post({"model": "m", "messages": MSGS}))
    tc = ChatCompletion.model_validate_json(
        post({"model": "m", "messages": MSGS}, {"x-fake-tool-calls": "2"})
    )
    assert len(tc.choices[0].message.tool_calls or []) == 2
    raw = post({"model": "m", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}})
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    CreateEmbeddingResponse.model_validate_json(post({"model": "e", "input": ["a", "b"]}))


def test_params_pass_through_and_own_options_do_not(fake, key):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    llmux.completion(
        model="openai/gpt-4o-mini",
        messages=MSGS,
        api_base=fake.base_url,
        api_key="sk-call-key-0000",
        extra_headers=hdr(key, trace="t1"),
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop=["\n"],
        seed=7,
        user="u1",
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        logit_bias={"50256": -100},
        some_vendor_param="passed",
        extra_body={"vendor_flag": True},
        metadata={"team": "a"},
        num_retries=1,
        timeout=30,
        top_k=None,
    )
    s = fake.stats(key)
    body = s["last_body"]
    assert body["model"] == "gpt-4o-mini"
    for k, v in [("temperature", 0.2), ("top_p", 0.9), ("max_tokens", 50), ("seed", 7), ("user", "u1")]:
        assert body[k] == v
    assert body["tools"] == tools and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert body["some_vendor_param"] == "passed" and body["vendor_flag"] is True
    for own in ("metadata", "num_retries", "timeout", "api_key", "api_base", "extra_headers", "top_k"):
        assert own not in body
    assert s["last_authorization"] == "Bearer sk-call-key-0000"
    assert s["last_headers"]["x-fake-trace"] == "t1"


def test_additional_drop_params(fake, key):
    llmux.completion(
        model="gpt-4o-mini",
        messages=MSGS,
        api_base=fake.base_url,
        extra_headers=hdr(key),
        temperature=0.5,
        seed=1,
        additional_drop_params=["seed"],
    )
    body = fake.stats(key)["last_body"]
    assert "seed" not in body and body["temperature"] == 0.5


def test_message_objects_can_be_sent_back(fake, key):
    r = llmux.completion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url)
    convo = MSGS + [r.choices[0].message, {"role": "user", "content": "and?"}]
    llmux.completion(model="gpt-4o-mini", messages=convo, api_base=fake.base_url, extra_headers=hdr(key))
    sent = fake.stats(key)["last_body"]["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["content"] == DEFAULT_REPLY


def test_env_key_and_vendor_prefix(fake, key, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-env-key")
    r = llmux.completion(
        model="deepseek/deepseek-chat", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key)
    )
    assert r._hidden_params["custom_llm_provider"] == "deepseek"
    s = fake.stats(key)
    assert s["last_authorization"] == "Bearer sk-deepseek-env-key"
    assert s["last_body"]["model"] == "deepseek-chat"


def test_tool_calls_unary(fake):
    r = llmux.completion(
        model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers={"x-fake-tool-calls": "2"}
    )
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert m.content is None
    assert [tc.id for tc in m.tool_calls] == ["call_fake_0", "call_fake_1"]
    assert m.tool_calls[0].function.name == "get_weather"
    assert json.loads(m.tool_calls[1]["function"]["arguments"])["location"]


def test_stream_sync_chunks_usage_and_rebuild(fake, key):
    chunks = list(
        llmux.completion(
            model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, stream=True, extra_headers=hdr(key)
        )
    )
    assert all(isinstance(c, llmux.ModelResponseStream) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == DEFAULT_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    # Usage was not asked for: no usage chunk, but it rides in the last chunk's hidden params.
    assert all(c.get("usage") is None for c in chunks)
    assert chunks[-1]._hidden_params["usage"]["completion_tokens"] == 20
    rebuilt = llmux.stream_chunk_builder(chunks, messages=MSGS)
    assert rebuilt.choices[0].message.content == DEFAULT_REPLY
    assert rebuilt.usage.completion_tokens == 20
    assert fake.stats(key)["completed"] == 1


def test_stream_include_usage_chunk(fake):
    chunks = list(
        llmux.completion(
            model="gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 20
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY


def test_stream_tool_calls_assemble(fake):
    chunks = list(
        llmux.completion(
            model="gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            stream=True,
            extra_headers={"x-fake-tool-calls": "2"},
        )
    )
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) > 2, "arguments must arrive in several chunks"
    rebuilt = llmux.stream_chunk_builder(chunks)
    calls = rebuilt.choices[0].message.tool_calls
    assert [c.id for c in calls] == ["call_fake_0", "call_fake_1"]
    assert {json.loads(c.function.arguments)["location"] for c in calls} == {"Paris", "Tokyo"}
    assert rebuilt.choices[0].finish_reason == "tool_calls"


async def test_async_unary_fan_out(fake, key):
    rs = await asyncio.gather(
        *[
            llmux.acompletion(
                model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key)
            )
            for _ in range(50)
        ]
    )
    assert all(r.choices[0].message.content == DEFAULT_REPLY for r in rs)
    assert len({r.id for r in rs}) == 50
    assert fake.stats(key)["completed"] == 50


async def test_async_stream(fake):
    s = await llmux.acompletion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, stream=True)
    assert isinstance(s, llmux.CustomStreamWrapper)
    text = ""
    async for c in s:
        text += c.choices[0].delta.content or ""
    assert text == DEFAULT_REPLY


async def test_async_stream_many_small_chunks(fake):
    s = await llmux.acompletion(
        model="gpt-4o-mini",
        messages=MSGS,
        api_base=fake.base_url,
        stream=True,
        extra_headers={"x-fake-chunks": "20"},
    )
    n = 0
    async for c in s:
        if c.choices and c.choices[0].delta.content:
            n += 1
    assert n == 20


def test_embedding_sync_and_async(fake, key):
    e = llmux.embedding(
        model="text-embedding-3-small",
        input=["a", "b"],
        dimensions=4,
        api_base=fake.base_url,
        extra_headers=hdr(key),
    )
    assert isinstance(e, llmux.EmbeddingResponse)
    assert len(e.data) == 2 and len(e.data[0]["embedding"]) == 4
    assert e["data"][1]["index"] == 1
    assert e.usage.prompt_tokens > 0
    assert fake.stats(key)["last_body"]["dimensions"] == 4
    e2 = asyncio.run(llmux.aembedding(model="text-embedding-3-small", input="hello", api_base=fake.base_url))
    assert len(e2.data) == 1


def test_mock_response_forms():
    r = llmux.completion(model="gpt-4o", messages=MSGS, mock_response="pong")
    assert r.choices[0].message.content == "pong"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (10, 20, 30)
    text = "".join(
        c.choices[0].delta.content or ""
        for c in llmux.completion(model="gpt-4o", messages=MSGS, mock_response="a longer reply", stream=True)
    )
    assert text == "a longer reply"
    with pytest.raises(llmux.RateLimitError):
        llmux.completion(model="gpt-4o", messages=MSGS, mock_response="litellm.RateLimitError")
    with pytest.raises(llmux.ContextWindowExceededError):
        llmux.completion(model="gpt-4o", messages=MSGS, mock_response="litellm.ContextWindowExceededError")
    with pytest.raises(ValueError, match="boom"):
        llmux.completion(model="gpt-4o", messages=MSGS, mock_response=ValueError("boom"))
    r = llmux.completion(
        model="gpt-4o", messages=MSGS, mock_response={"choices": [{"message": {"content": "d"}}]}
    )
    assert r.choices[0].message.content == "d"


def test_module_settings(fake, key, monkeypatch):
    monkeypatch.setattr(llmux, "api_base", fake.base_url)
    monkeypatch.setattr(llmux, "api_key", "sk-module-level-key")
    llmux.completion(model="gpt-4o-mini", messages=MSGS, extra_headers=hdr(key))
    assert fake.stats(key)["last_authorization"] == "Bearer sk-module-level-key"


def test_sync_call_releases_the_gil(fake):
    """While one thread waits on a slow upstream, Python code in another thread keeps running."""
    done = threading.Event()

    def call():
        llmux.completion(
            model="gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            extra_headers={"x-fake-delay-ms": "600"},
        )
        done.set()

    t = threading.Thread(target=call)
    t.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        if ticks % 1000 == 0:
            time.sleep(0)
    t.join()
    # With the GIL held for 600 ms this loop would get a handful of switch intervals (5 ms each).
    assert ticks > 100_000, ticks


def test_concurrent_sync_threads(fake, key):
    out = []

    def worker():
        for _ in range(5):
            out.append(
                llmux.completion(
                    model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key)
                )
            )

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 40 and fake.stats(key)["completed"] == 40


def test_event_loops_in_several_threads(fake, key):
    """Each thread's loop gets its own engine bridge; results never cross loops."""
    results: dict = {}

    async def many(tag: str) -> None:
        rs = await asyncio.gather(
            *[
                llmux.acompletion(
                    model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key)
                )
                for _ in range(100)
            ]
        )
        s = await llmux.acompletion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in s])
        results[tag] = (len(rs), text, threading.get_ident())

    threads = [threading.Thread(target=lambda t=t: asyncio.run(many(t))) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["a", "b", "c", "d"]
    assert all(n == 100 and text == DEFAULT_REPLY for n, text, _ in results.values())
    assert fake.stats(key)["completed"] == 400
