"""The Gemini dialect: the fake's wire format checked against the official ``google-genai`` SDK
types, then llmux end to end (unary, streams, tools, errors, params, embeddings)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import llmux

from conftest import hdr

genai_types = pytest.importorskip("google.genai.types")
genai_errors = pytest.importorskip("google.genai.errors")

MODEL = "gemini-2.5-flash"
KEY = "AIza-fake-gemini-0123456789"
MSGS = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": ["string", "null"]}},
                "required": ["location"],
                "additionalProperties": False,
            },
        },
    }
]
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}


def post(fake, path, body, **faults):
    """POSTs to the fake like the SDK would; returns (status, content type, raw body)."""
    headers = {"content-type": "application/json", "x-goog-api-key": KEY}
    headers.update(hdr("raw", **faults))
    req = urllib.request.Request(fake.url + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()


def sse_data(raw: bytes) -> list[dict]:
    events = [e for e in raw.decode().split("\r\n\r\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [json.loads(e[len("data: ") :]) for e in events]


def call(fake, key, **kw):
    faults = kw.pop("faults", {})
    return llmux.completion(
        model=f"gemini/{MODEL}",
        messages=kw.pop("messages", MSGS),
        api_base=fake.url,
        api_key=KEY,
        extra_headers=hdr(key, **faults),
        **kw,
    )


# ---------------------------------------------------------------------------
# The fake's wire format, validated by the official SDK
# ---------------------------------------------------------------------------


def test_sdk_validates_unary_answers(fake):
    for body in (
        GEMINI_BODY,
        {**GEMINI_BODY, "generationConfig": {"thinkingConfig": {"includeThoughts": True}}},
        {
            **GEMINI_BODY,
            "tools": [{"functionDeclarations": [{"name": "get_weather"}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
            "cachedContent": "cachedContents/x",
        },
    ):
        status, ctype, raw = post(fake, f"/v1beta/models/{MODEL}:generateContent", body)
        assert status == 200 and ctype == "application/json"
        r = genai_types.GenerateContentResponse.model_validate(json.loads(raw))
        assert r.candidates[0].content.role == "model"
        assert r.candidates[0].finish_reason == genai_types.FinishReason.STOP
        assert r.usage_metadata.prompt_token_count == 2
        assert r.model_version == MODEL and r.response_id
    assert r.function_calls[0].name == "get_weather"
    assert r.function_calls[0].args == {"location": "Paris", "unit": "celsius"}
    assert r.usage_metadata.cached_content_token_count == 1


def test_sdk_validates_every_stream_fragment(fake):
    for faults in ({}, {"tool_calls": 3}, {"chunks": 3}):
        status, ctype, raw = post(
            fake, f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", GEMINI_BODY, **faults
        )
        assert status == 200 and ctype == "text/event-stream"
        frags = [genai_types.GenerateContentResponse.model_validate(d) for d in sse_data(raw)]
        assert all(f.candidates[0].finish_reason is None for f in frags[:-1])
        assert frags[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
        assert frags[-1].usage_metadata.candidates_token_count > 0
    assert len(frags) == 3
    text = "".join(f.text for f in frags)
    assert text.startswith("Hello! This is") and text.endswith("deterministic.")


def test_sdk_validates_safety_block_and_error_bodies(fake):
    status, _, raw = post(fake, f"/v1beta/models/{MODEL}:generateContent", GEMINI_BODY, error_code="safety")
    r = genai_types.GenerateContentResponse.model_validate(json.loads(raw))
    assert status == 200 and not r.candidates
    assert r.prompt_feedback.block_reason == genai_types.BlockedReason.SAFETY

    cases = [
        ({"status": 400}, 400, "INVALID_ARGUMENT"),
        ({"status": 401}, 401, "UNAUTHENTICATED"),
        ({"status": 403}, 403, "PERMISSION_DENIED"),
        ({"status": 404}, 404, "NOT_FOUND"),
        ({"status": 429}, 429, "RESOURCE_EXHAUSTED"),
        ({"status": 500}, 500, "INTERNAL"),
        ({"status": 503}, 503, "UNAVAILABLE"),
        ({"status": 504}, 504, "DEADLINE_EXCEEDED"),
        ({"error_code": "per_day_quota"}, 429, "RESOURCE_EXHAUSTED"),
        ({"error_code": "per_minute_quota", "retry_after": "7"}, 429, "RESOURCE_EXHAUSTED"),
        ({"error_code": "api_key_invalid"}, 400, "INVALID_ARGUMENT"),
        ({"error_code": "context_too_long"}, 400, "INVALID_ARGUMENT"),
    ]
    for faults, code, rpc in cases:
        status, ctype, raw = post(fake, f"/v1beta/models/{MODEL}:generateContent", GEMINI_BODY, **faults)
        assert status == code and ctype == "application/json", faults
        cls = genai_errors.ClientError if code < 500 else genai_errors.ServerError
        err = cls(status, json.loads(raw))
        assert err.code == code and err.status == rpc and err.message, faults
        details = json.loads(raw)["error"].get("details", [])
        if faults.get("error_code") == "per_minute_quota":
            retry = [d for d in details if d["@type"].endswith("RetryInfo")]
            assert retry[0]["retryDelay"] == "7s"
            assert "PerMinute" in details[0]["violations"][0]["quotaId"]
        if faults.get("error_code") == "per_day_quota":
            assert "PerDay" in details[0]["violations"][0]["quotaId"]
            assert not [d for d in details if d["@type"].endswith("RetryInfo")]
        if faults.get("error_code") == "api_key_invalid":
            assert details[0]["reason"] == "API_KEY_INVALID"

    # An unknown (OpenAI) field is refused like the real API refuses it.
    status, _, raw = post(fake, f"/v1beta/models/{MODEL}:generateContent", {**GEMINI_BODY, "max_tokens": 3})
    assert status == 400 and "max_tokens" in json.loads(raw)["error"]["message"]


def test_sdk_validates_embeddings(fake):
    status, _, raw = post(
        fake,
        "/v1beta/models/text-embedding-004:embedContent",
        {
            "model": "models/text-embedding-004",
            "content": {"parts": [{"text": "hi"}]},
            "outputDimensionality": 4,
        },
    )
    assert status == 200
    e = genai_types.ContentEmbedding.model_validate(json.loads(raw)["embedding"])
    assert len(e.values) == 4
    body = {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": t}]}} for t in ("a", "b")
        ]
    }
    status, _, raw = post(fake, "/v1beta/models/text-embedding-004:batchEmbedContents", body)
    data = json.loads(raw)
    assert genai_types.EmbedContentResponse.model_validate(data).embeddings[1].values
    assert [len(genai_types.ContentEmbedding.model_validate(x).values) for x in data["embeddings"]] == [8, 8]


# ---------------------------------------------------------------------------
# llmux end to end
# ---------------------------------------------------------------------------


def test_unary_and_wire_shape(fake, key):
    r = call(fake, key, max_tokens=50, temperature=0.2, stop="END", seed=3)
    assert r.choices[0].message.content.startswith("Hello! This is the fake")
    assert r.choices[0].finish_reason == "stop"
    assert r.model == MODEL
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 20
    st = fake.stats(key)
    assert st["last_path"] == f"/v1beta/models/{MODEL}:generateContent"
    assert st["last_headers"]["x-goog-api-key"] == KEY
    assert "key=" not in st["last_path"]
    b = st["last_body"]
    assert b["systemInstruction"] == {"parts": [{"text": "Be nice."}]}
    assert b["contents"] == [{"role": "user", "parts": [{"text": "hello there"}]}]
    assert b["generationConfig"] == {
        "maxOutputTokens": 50,
        "temperature": 0.2,
        "stopSequences": ["END"],
        "seed": 3,
    }


def test_usage_cached_and_reasoning(fake, key):
    r = call(fake, key, reasoning_effort="low", cached_content="cachedContents/abc")
    assert r.choices[0].message.reasoning_content == "Considering the question."
    assert r.usage.prompt_tokens_details.cached_tokens == 2
    assert r.usage.completion_tokens_details.reasoning_tokens == 3
    assert r.usage.completion_tokens == 23
    assert fake.stats(key)["last_body"]["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 1024


def test_stream_sync_and_usage(fake, key):
    chunks = list(call(fake, key, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello! This is the fake") and len(text.split()) == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage.completion_tokens == 20
    assert fake.stats(key)["last_path"].endswith(":streamGenerateContent?alt=sse")
    built = llmux.stream_chunk_builder(chunks)
    assert built.choices[0].message.content == text


async def test_stream_async(fake, key):
    stream = await llmux.acompletion(
        model=f"gemini/{MODEL}",
        messages=MSGS,
        api_base=fake.url,
        api_key=KEY,
        stream=True,
        extra_headers=hdr(key, chunks=4),
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert len([p for p in parts if p]) == 4
    assert "".join(parts).endswith("deterministic.")


def test_tool_calls_unary_and_follow_up(fake, key):
    r = call(fake, key, tools=TOOLS, tool_choice="required")
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"location": "Paris", "unit": "celsius"}
    decl = fake.stats(key)["last_body"]["tools"][0]["functionDeclarations"][0]
    assert "additionalProperties" not in decl["parameters"]
    assert decl["parameters"]["properties"]["unit"] == {"type": "string", "nullable": True}
    follow = [
        *MSGS,
        {"role": "assistant", "content": None, "tool_calls": [msg.tool_calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": '{"temp": 21}'},
    ]
    r = call(fake, key, messages=follow, tools=TOOLS)
    assert r.choices[0].finish_reason == "stop"
    contents = fake.stats(key)["last_body"]["contents"]
    assert contents[1]["role"] == "model" and contents[1]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert contents[2]["parts"][0]["functionResponse"] == {
        "name": "get_weather",
        "response": {"content": {"temp": 21}},
    }


@pytest.mark.parametrize("n", [1, 3])
def test_streamed_tool_calls_reassemble(fake, key, n):
    chunks = list(call(fake, key, tools=TOOLS, stream=True, faults={"tool_calls": n}))
    built = llmux.stream_chunk_builder(chunks)
    calls = built.choices[0].message.tool_calls
    assert len(calls) == n
    assert [json.loads(c.function.arguments)["location"] for c in calls] == ["Paris", "Tokyo", "Lima"][:n]
    assert len({c.id for c in calls}) == n
    assert built.choices[0].finish_reason == "tool_calls"


def test_image_is_inline_data(fake, key):
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is it"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            ],
        }
    ]
    call(fake, key, messages=msgs)
    parts = fake.stats(key)["last_body"]["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}}


ERRORS = [
    ({"status": 400}, llmux.BadRequestError, 400, "bad_request"),
    ({"status": 401}, llmux.AuthenticationError, 401, "authentication"),
    ({"status": 403}, llmux.PermissionDeniedError, 403, "permission_denied"),
    ({"status": 404}, llmux.NotFoundError, 404, "not_found"),
    ({"status": 429}, llmux.RateLimitError, 429, "rate_limited"),
    ({"error_code": "per_day_quota"}, llmux.RateLimitError, 429, "quota_exceeded"),
    ({"error_code": "api_key_invalid"}, llmux.AuthenticationError, 400, "authentication"),
    ({"error_code": "context_too_long"}, llmux.ContextWindowExceededError, 400, "context_window_exceeded"),
    ({"error_code": "safety"}, llmux.ContentPolicyViolationError, 400, "content_policy_violation"),
    ({"status": 500}, llmux.InternalServerError, 500, "internal"),
    ({"status": 503}, llmux.ServiceUnavailableError, 503, "service_unavailable"),
    ({"status": 504}, llmux.Timeout, 504, "timeout"),
    ({"status": 502, "html": 1}, llmux.BadGatewayError, 502, "bad_gateway"),
]


@pytest.mark.parametrize("faults,cls,status,kind", ERRORS, ids=[e[3] + "-" + str(e[2]) for e in ERRORS])
def test_errors_map_to_litellm_classes(fake, key, faults, cls, status, kind):
    with pytest.raises(cls) as ei:
        call(fake, key, faults=faults)
    e = ei.value
    assert e.status_code == status
    assert e.kind == kind
    assert e.llm_provider == "gemini"
    assert "GeminiException" in e.message
    assert KEY not in str(e)


def test_quota_kinds_retry_decisions(fake, key):
    with pytest.raises(llmux.RateLimitError):
        call(fake, key + "-day", num_retries=2, faults={"error_code": "per_day_quota"})
    assert fake.stats(key + "-day")["requests"] == 1
    r = call(
        fake,
        key + "-min",
        num_retries=2,
        faults={"error_code": "per_minute_quota", "retry_after": "0.2", "fail_times": 1},
    )
    assert r.choices[0].message.content
    assert fake.stats(key + "-min")["requests"] == 2


def test_stream_in_stream_error_and_cut(fake, key):
    with pytest.raises(llmux.ServiceUnavailableError) as ei:
        for _ in call(fake, key, stream=True, faults={"stream_error_after": 2}):
            pass
    assert "high demand" in ei.value.message
    got = []
    with pytest.raises(llmux.APIConnectionError):
        for c in call(fake, key, stream=True, faults={"cut_after": 3}):
            got.append(c)
    assert len(got) == 3
    with pytest.raises(llmux.ContentPolicyViolationError):
        list(call(fake, key, stream=True, faults={"error_code": "safety"}))


def test_unsupported_params_and_drop(fake, key):
    with pytest.raises(llmux.UnsupportedParamsError, match="logit_bias"):
        call(fake, key, logit_bias={"1": 2})
    r = call(fake, key, logit_bias={"1": 2}, drop_params=True)
    assert r.choices[0].message.content
    assert "logit_bias" not in json.dumps(fake.stats(key)["last_body"])
    # Accepted and not sent, as LiteLLM does.
    call(fake, key, parallel_tool_calls=True, tools=TOOLS, user="u-1")
    assert "parallel" not in json.dumps(fake.stats(key)["last_body"])


def test_response_format_json_schema(fake, key):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    call(fake, key, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    gc = fake.stats(key)["last_body"]["generationConfig"]
    assert gc["responseMimeType"] == "application/json" and gc["responseJsonSchema"] == schema


def test_embeddings(fake, key):
    r = llmux.embedding(
        model="gemini/text-embedding-004",
        input="hello",
        api_base=fake.url,
        api_key=KEY,
        extra_headers=hdr(key),
    )
    assert len(r.data) == 1 and len(r.data[0]["embedding"]) == 8
    assert fake.stats(key)["last_path"] == "/v1beta/models/text-embedding-004:embedContent"
    r = llmux.embedding(
        model="gemini/text-embedding-004",
        input=["a b", "c"],
        dimensions=4,
        api_base=fake.url,
        api_key=KEY,
        extra_headers=hdr(key),
    )
    assert [d["index"] for d in r.data] == [0, 1]
    assert all(len(d["embedding"]) == 4 for d in r.data)
    body = fake.stats(key)["last_body"]
    assert body["requests"][1] == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "c"}]},
        "outputDimensionality": 4,
    }
