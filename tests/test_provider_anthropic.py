"""The Anthropic dialect: the fake's wire format checked against the official ``anthropic`` SDK's
types, then llmux end to end (unary, streams, tool calls, errors, params, what is sent)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import llmux

from conftest import MSGS, hdr

DEFAULT_REPLY = (
    "Hello! This is the fake upstream speaking. Every answer you receive from me is exactly "
    "twenty words long and deterministic."
)
MODEL = "anthropic/claude-sonnet-4-5"
KEY = "sk-ant-test-0123456789"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
]


# ---------------------------------------------------------------------------
# The fake's raw wire format against the official SDK
# ---------------------------------------------------------------------------


def post(fake, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(
        fake.url + "/v1/messages",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-api-key": KEY, **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


BASE = {"model": "claude-sonnet-4-5", "max_tokens": 256, "messages": MSGS}


def test_unary_message_validates_against_sdk(fake):
    from anthropic.types import Message

    status, headers, body = post(fake, BASE)
    assert status == 200
    m = Message.model_validate_json(body)
    assert m.id.startswith("msg_fake_")
    assert m.type == "message" and m.role == "assistant"
    assert m.model == "claude-sonnet-4-5"
    assert m.content[0].type == "text" and m.content[0].text == DEFAULT_REPLY
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.output_tokens == 20
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0
    assert headers["request-id"].startswith("req_")
    assert "anthropic-ratelimit-requests-remaining" in headers

    m = Message.model_validate_json(post(fake, {**BASE, "max_tokens": 3})[2])
    assert m.stop_reason == "max_tokens" and m.content[0].text == "Hello! This is"

    body = {**BASE, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
    m = Message.model_validate_json(post(fake, {**body, "tool_choice": {"type": "any"}})[2])
    assert m.stop_reason == "tool_use"
    assert [b.type for b in m.content] == ["tool_use"]
    assert m.content[0].name == "get_weather" and m.content[0].input["unit"] == "celsius"
    m = Message.model_validate_json(
        post(fake, body, {"x-fake-tool-calls": "2", "x-fake-content": "Checking."})[2]
    )
    assert [b.type for b in m.content] == ["text", "tool_use", "tool_use"]


def test_stream_events_validate_against_sdk(fake):
    from anthropic.types import (
        RawContentBlockDeltaEvent,
        RawContentBlockStartEvent,
        RawContentBlockStopEvent,
        RawMessageDeltaEvent,
        RawMessageStartEvent,
        RawMessageStopEvent,
        RawMessageStreamEvent,
    )
    from pydantic import TypeAdapter

    adapter = TypeAdapter(RawMessageStreamEvent)
    by_name = {
        "message_start": RawMessageStartEvent,
        "content_block_start": RawContentBlockStartEvent,
        "content_block_delta": RawContentBlockDeltaEvent,
        "content_block_stop": RawContentBlockStopEvent,
        "message_delta": RawMessageDeltaEvent,
        "message_stop": RawMessageStopEvent,
    }
    for headers in ({}, {"x-fake-tool-calls": "2", "x-fake-content": "Let me look."}):
        status, h, raw = post(fake, {**BASE, "stream": True}, headers)
        assert status == 200 and h["content-type"].startswith("text/event-stream")
        events = sse_events(raw)
        names = [n for n, _ in events]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert "ping" in names
        text, args = "", {}
        for name, data in events:
            assert data["type"] == name
            if name == "ping":
                continue
            ev = by_name[name].model_validate(data)
            assert type(adapter.validate_python(data)) is by_name[name]
            if name == "content_block_delta" and ev.delta.type == "text_delta":
                text += ev.delta.text
            if name == "content_block_delta" and ev.delta.type == "input_json_delta":
                args[ev.index] = args.get(ev.index, "") + ev.delta.partial_json
            if name == "message_delta":
                assert ev.usage.output_tokens > 0
        if headers:
            assert text == "Let me look."
            assert len(args) == 2
            assert all(json.loads(a)["unit"] == "celsius" for a in args.values())
            assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        else:
            assert text == DEFAULT_REPLY


def test_stream_error_event_validates_against_sdk(fake):
    from anthropic.types import ErrorResponse

    status, _, raw = post(fake, {**BASE, "stream": True}, {"x-fake-stream-error-after": "2"})
    assert status == 200
    events = sse_events(raw)
    assert events[-1][0] == "error"
    err = ErrorResponse.model_validate(events[-1][1])
    assert err.error.type == "overloaded_error"
    assert "message_stop" not in [n for n, _ in events]


@pytest.mark.parametrize(
    "faults,status,etype",
    [
        ({"status": 400}, 400, "invalid_request_error"),
        ({"error_code": "prompt_too_long"}, 400, "invalid_request_error"),
        ({"status": 401}, 401, "authentication_error"),
        ({"status": 402}, 402, "billing_error"),
        ({"status": 403}, 403, "permission_error"),
        ({"status": 404}, 404, "not_found_error"),
        ({"status": 429}, 429, "rate_limit_error"),
        ({"status": 500}, 500, "api_error"),
        ({"status": 504}, 504, "timeout_error"),
        ({"status": 529}, 529, "overloaded_error"),
        ({"error_code": "overloaded_error"}, 529, "overloaded_error"),
    ],
)
def test_error_bodies_validate_against_sdk(fake, key, faults, status, etype):
    from anthropic.types import ErrorResponse

    code, headers, body = post(fake, BASE, hdr(key, **faults))
    assert code == status
    err = ErrorResponse.model_validate_json(body)
    assert err.type == "error" and err.error.type == etype
    assert err.request_id and err.error.message
    assert headers["request-id"] == err.request_id


def test_request_too_large_body(fake, key):
    """413 ``request_too_large`` is documented by Anthropic but absent from the SDK's error
    union; its envelope is checked field by field."""
    from anthropic.types import InvalidRequestErrorObject

    code, _, body = post(fake, BASE, hdr(key, status=413))
    assert code == 413
    data = json.loads(body)
    assert data["type"] == "error" and data["error"]["type"] == "request_too_large"
    InvalidRequestErrorObject.model_validate({**data["error"], "type": "invalid_request_error"})


def test_fake_rejects_what_the_api_rejects(fake):
    from anthropic.types import ErrorResponse

    no_max = {k: v for k, v in BASE.items() if k != "max_tokens"}
    code, _, body = post(fake, no_max)
    assert code == 400 and "max_tokens" in ErrorResponse.model_validate_json(body).error.message
    sys_role = {**BASE, "messages": [{"role": "system", "content": "x"}, *MSGS]}
    assert post(fake, sys_role)[0] == 400


# ---------------------------------------------------------------------------
# llmux end to end
# ---------------------------------------------------------------------------


def call(fake, key, faults=None, **kw):
    return llmux.completion(
        model=MODEL,
        messages=kw.pop("messages", MSGS),
        api_base=fake.url,
        api_key=KEY,
        extra_headers=hdr(key, **(faults or {})),
        **kw,
    )


def test_unary_and_what_is_sent(fake, key):
    msgs = [{"role": "system", "content": "Be brief."}, *MSGS]
    r = call(fake, key, messages=msgs, temperature=0.2, stop=["END"], user="u-1", max_tokens=300)
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.id.startswith("msg_fake_")
    assert r.model == "claude-sonnet-4-5"
    assert r.usage.completion_tokens == 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage["cache_read_input_tokens"] == 0
    assert r._hidden_params["custom_llm_provider"] == "anthropic"

    st = fake.stats(key)
    assert st["last_path"] == "/v1/messages"
    h = st["last_headers"]
    assert h["x-api-key"] == KEY and h["anthropic-version"] == "2023-06-01"
    assert "authorization" not in h
    b = st["last_body"]
    assert b["system"] == "Be brief."
    assert b["max_tokens"] == 300
    assert b["stop_sequences"] == ["END"]
    assert b["metadata"] == {"user_id": "u-1"}
    assert b["temperature"] == 0.2
    assert [m["role"] for m in b["messages"]] == ["user"]


def test_default_max_tokens_and_truncation(fake, key):
    call(fake, key)
    assert fake.stats(key)["last_body"]["max_tokens"] == 4096
    r = call(fake, key, max_completion_tokens=4)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == "Hello! This is the"


def test_tool_calls_unary(fake, key):
    r = call(fake, key, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    tc = r.choices[0].message.tool_calls
    assert len(tc) == 1 and tc[0].function.name == "get_weather"
    assert json.loads(tc[0].function.arguments) == {"location": "Paris", "unit": "celsius"}
    assert r.choices[0].finish_reason == "tool_calls"
    b = fake.stats(key)["last_body"]
    assert b["tools"][0]["input_schema"]["required"] == ["location"]
    assert b["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    r = call(fake, key, faults={"tool_calls": 3}, tools=TOOLS)
    tc = r.choices[0].message.tool_calls
    assert [json.loads(t.function.arguments)["location"] for t in tc] == ["Paris", "Tokyo", "Lima"]

    # The answer goes back: assistant tool_calls and tool results become Anthropic blocks.
    history = [
        *MSGS,
        r.choices[0].message.model_dump(),
        *[{"role": "tool", "tool_call_id": t.id, "content": "18C"} for t in tc],
    ]
    r2 = call(fake, key, messages=history, tools=TOOLS)
    assert r2.choices[0].message.content == DEFAULT_REPLY
    sent = fake.stats(key)["last_body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[1]["content"]] == ["tool_use"] * 3
    assert [b["type"] for b in sent[2]["content"]] == ["tool_result"] * 3


def test_stream_sync_text_and_usage(fake, key):
    chunks = list(call(fake, key, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT_REPLY
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == 20
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert fake.stats(key)["last_body"]["stream"] is True


async def test_stream_async(fake, key):
    stream = await llmux.acompletion(
        model=MODEL, messages=MSGS, api_base=fake.url, api_key=KEY, extra_headers=hdr(key), stream=True
    )
    text = ""
    async for c in stream:
        if c.choices:
            text += c.choices[0].delta.content or ""
    assert text == DEFAULT_REPLY


def test_stream_tool_calls_reassemble(fake, key):
    chunks = list(call(fake, key, faults={"tool_calls": 2}, tools=TOOLS, stream=True))
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) > 4, "arguments should arrive in several pieces"
    r = llmux.stream_chunk_builder(chunks)
    tc = r.choices[0].message.tool_calls
    assert len(tc) == 2
    assert [json.loads(t.function.arguments)["location"] for t in tc] == ["Paris", "Tokyo"]
    assert all(t.id.startswith("toolu_fake_") for t in tc)
    assert r.choices[0].finish_reason == "tool_calls"


def test_images_are_blocks(fake, key):
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is it"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/a.jpg"}},
            ],
        }
    ]
    call(fake, key, messages=msgs)
    blocks = fake.stats(key)["last_body"]["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.invalid/a.jpg"}}


ERRORS = [
    ({"status": 400}, llmux.BadRequestError, 400, "bad_request"),
    ({"error_code": "prompt_too_long"}, llmux.ContextWindowExceededError, 400, "context_window_exceeded"),
    ({"error_code": "content_filter"}, llmux.ContentPolicyViolationError, 400, "content_policy_violation"),
    ({"status": 401}, llmux.AuthenticationError, 401, "authentication"),
    ({"status": 403}, llmux.PermissionDeniedError, 403, "permission_denied"),
    ({"status": 404}, llmux.NotFoundError, 404, "not_found"),
    ({"status": 413}, llmux.BadRequestError, 413, "bad_request"),
    ({"status": 429}, llmux.RateLimitError, 429, "rate_limited"),
    ({"status": 500}, llmux.InternalServerError, 500, "internal"),
    ({"status": 529}, llmux.ServiceUnavailableError, 529, "service_unavailable"),
    ({"error_code": "overloaded_error"}, llmux.ServiceUnavailableError, 529, "service_unavailable"),
    ({"html": 1}, llmux.BadGatewayError, 502, "bad_gateway"),
]


@pytest.mark.parametrize("faults,cls,status,kind", ERRORS, ids=[f"{e[3]}-{e[2]}" for e in ERRORS])
def test_errors_map_to_litellm_classes(fake, key, faults, cls, status, kind):
    with pytest.raises(cls) as ei:
        call(fake, key, faults=faults)
    e = ei.value
    assert type(e).__name__ == cls.__name__
    assert e.status_code == status
    assert e.kind == kind
    assert e.llm_provider == "anthropic"
    assert "AnthropicException - " in e.message
    assert KEY not in str(e)


def test_overloaded_is_retried_and_auth_is_not(fake, key):
    r = call(fake, key, faults={"error_code": "overloaded_error", "fail_times": 2}, num_retries=3)
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert fake.stats(key)["requests"] == 3

    k2 = key + "-auth"
    with pytest.raises(llmux.AuthenticationError):
        call(fake, k2, faults={"status": 401}, num_retries=3)
    assert fake.stats(k2)["requests"] == 1


def test_in_stream_error_is_service_unavailable(fake, key):
    got = ""
    with pytest.raises(llmux.ServiceUnavailableError) as ei:
        for c in call(fake, key, faults={"stream_error_after": 3}, stream=True):
            if c.choices:
                got += c.choices[0].delta.content or ""
    assert got == "Hello! This is "
    assert ei.value.status_code == 529
    assert ei.value.llm_provider == "anthropic"


def test_truncated_stream_is_a_connection_error(fake, key):
    with pytest.raises(llmux.APIConnectionError):
        list(call(fake, key, faults={"cut_after": 2}, stream=True))


def test_unsupported_params(fake, key):
    with pytest.raises(llmux.UnsupportedParamsError) as ei:
        call(fake, key, frequency_penalty=0.5)
    assert "frequency_penalty" in str(ei.value)
    r = call(fake, key, frequency_penalty=0.5, seed=3, drop_params=True)
    assert r.choices[0].message.content == DEFAULT_REPLY
    b = fake.stats(key)["last_body"]
    assert "frequency_penalty" not in b and "seed" not in b


def test_response_format_json_schema(fake, key):
    rf = {
        "type": "json_schema",
        "json_schema": {
            "name": "w",
            "schema": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
    r = call(fake, key, response_format=rf)
    assert json.loads(r.choices[0].message.content)["location"] == "Paris"
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"
