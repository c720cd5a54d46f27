"""AWS Bedrock (Converse): the fake's wire format checked with botocore / boto3, then llmux end to end.

(1) The fake's raw answers are parsed with botocore's ``bedrock-runtime`` service model (rest-json
parser, event-stream decoder) and a real boto3 client is pointed at it: unary, stream events,
error types. (2) ``llmux.completion(model="bedrock/...")`` against the same fake: SigV4 headers,
unary, sync and async streams, tool calls, images, every error type to LiteLLM's classes,
unsupported params, embeddings.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import boto3
import botocore.config
import botocore.eventstream
import botocore.parsers
import botocore.session
import pytest
from botocore.exceptions import ClientError, EventStreamError

import llmux

from conftest import MSGS, hdr

MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
MODEL = "bedrock/" + MODEL_ID
AWS = {
    "aws_access_key_id": "AKIDEXAMPLE",
    "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "aws_region_name": "us-east-1",
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
]
SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
REPLY_WORDS = 20


def raw_post(fake, path: str, body: dict, headers: dict | None = None):
    req = urllib.request.Request(
        fake.url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def converse_body(**extra) -> dict:
    return {"messages": [{"role": "user", "content": [{"text": "hello there"}]}], **extra}


def client(fake, **faults):
    c = boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="x",
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )

    def add_headers(request, **_kw):
        for k, v in faults.items():
            request.headers["x-fake-" + k.replace("_", "-")] = str(v)

    c.meta.events.register("before-sign.bedrock-runtime.*", add_headers)
    return c


# ---------------------------------------------------------------------------
# (1) The fake's wire format, validated with botocore
# ---------------------------------------------------------------------------


def test_raw_converse_parses_with_botocore(fake):
    status, headers, body = raw_post(fake, f"/model/{MODEL_ID.replace(':', '%3A')}/converse", converse_body())
    assert status == 200
    op = SERVICE.operation_model("Converse")
    parsed = botocore.parsers.create_parser("rest-json").parse(
        {"status_code": 200, "headers": headers, "body": body}, op.output_shape
    )
    msg = parsed["output"]["message"]
    assert msg["role"] == "assistant"
    assert len(msg["content"][0]["text"].split()) == REPLY_WORDS
    assert parsed["stopReason"] == "end_turn"
    assert set(parsed["usage"]) == {"inputTokens", "outputTokens", "totalTokens"}
    assert parsed["metrics"]["latencyMs"] >= 0
    # Every key of the raw body is a member of the output shape.
    assert set(json.loads(body)) <= set(op.output_shape.members)


def _decode_frames(body: bytes):
    buf = botocore.eventstream.EventStreamBuffer()
    buf.add_data(body)
    return list(buf)


def test_raw_stream_frames_match_the_converse_stream_shape(fake):
    status, headers, body = raw_post(
        fake,
        "/model/m/converse-stream",
        converse_body(
            toolConfig={
                "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]
            }
        ),
        {"x-fake-tool-calls": "2"},
    )
    assert status == 200
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    stream_shape = SERVICE.operation_model("ConverseStream").output_shape.members["stream"]
    seen = []
    for msg in _decode_frames(body):
        h = msg.headers
        assert h[":message-type"] == "event"
        assert h[":content-type"] == "application/json"
        etype = h[":event-type"]
        assert etype in stream_shape.members
        payload = json.loads(msg.payload)
        members = set(stream_shape.members[etype].members)
        assert set(payload) - {"p"} <= members, (etype, payload)
        seen.append(etype)
    assert seen[0] == "messageStart" and seen[-2:] == ["messageStop", "metadata"]
    assert seen.count("contentBlockStart") == 2


def test_boto3_client_against_the_fake(fake):
    c = client(fake)
    r = c.converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert r["stopReason"] == "end_turn"
    assert r["usage"]["outputTokens"] == REPLY_WORDS
    r = c.converse_stream(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    events = list(r["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert len(text.split()) == REPLY_WORDS
    assert events[-1]["metadata"]["usage"]["totalTokens"] > 0
    r = client(fake, tool_calls=1).converse_stream(
        modelId=MODEL_ID,
        messages=[{"role": "user", "content": [{"text": "hi"}]}],
        toolConfig={"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]},
    )
    events = list(r["stream"])
    start = next(e for e in events if "contentBlockStart" in e)["contentBlockStart"]["start"]["toolUse"]
    assert start["name"] == "f" and start["toolUseId"]
    args = "".join(
        e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events if "contentBlockDelta" in e
    )
    assert json.loads(args)["location"] == "Paris"
    emb = c.invoke_model(
        modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "hello", "dimensions": 256})
    )
    assert len(json.loads(emb["body"].read())["embedding"]) == 256


@pytest.mark.parametrize(
    "faults,code,status",
    [
        ({"status": 429}, "ThrottlingException", 429),
        ({"status": 400}, "ValidationException", 400),
        ({"status": 403}, "AccessDeniedException", 403),
        ({"status": 404}, "ResourceNotFoundException", 404),
        ({"status": 424}, "ModelErrorException", 424),
        ({"status": 503}, "ServiceUnavailableException", 503),
        ({"error_code": "ServiceQuotaExceededException"}, "ServiceQuotaExceededException", 400),
        ({"error_code": "ModelNotReadyException"}, "ModelNotReadyException", 429),
        ({"error_code": "context_too_long"}, "ValidationException", 400),
        ({"error_code": "ExpiredTokenException"}, "ExpiredTokenException", 403),
    ],
)
def test_boto3_parses_error_answers(fake, faults, code, status):
    with pytest.raises(ClientError) as ei:
        client(fake, **faults).converse(modelId="m", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    err = ei.value.response
    assert err["Error"]["Code"] == code
    assert err["Error"]["Message"]
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status


@pytest.mark.parametrize("etype", ["throttlingException", "modelStreamErrorException"])
def test_boto3_sees_in_stream_exceptions(fake, etype):
    c = client(fake, stream_error_after=2, error_code=etype)
    r = c.converse_stream(modelId="m", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    with pytest.raises(EventStreamError) as ei:
        list(r["stream"])
    assert ei.value.response["Error"]["Code"] == etype


# ---------------------------------------------------------------------------
# (2) llmux end to end
# ---------------------------------------------------------------------------


def call(fake, key, stream=False, **kw):
    faults = kw.pop("faults", {})
    return llmux.completion(
        model=kw.pop("model", MODEL),
        messages=kw.pop("messages", MSGS),
        api_base=fake.url,
        extra_headers=hdr(key, **faults),
        stream=stream,
        **AWS,
        **kw,
    )


def test_unary_signed_and_shaped(fake, key):
    r = call(fake, key, max_tokens=100, temperature=0.3, top_k=5)
    assert len(r.choices[0].message.content.split()) == REPLY_WORDS
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == REPLY_WORDS
    assert r.id.startswith("chatcmpl-")
    st = fake.stats(key)
    assert st["last_path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    h = st["last_headers"]
    date = h["x-amz-date"][:8]
    assert h["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{date}/us-east-1/bedrock/aws4_request"
    )
    body = st["last_body"]
    assert body["messages"] == [{"role": "user", "content": [{"text": "hello there"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.3}
    assert body["additionalModelRequestFields"] == {"top_k": 5}


def test_session_token_and_bearer_key(fake, key):
    call(fake, key, aws_session_token="FQoGZXIvYXdzEXAMPLE", model="bedrock/converse/amazon.nova-pro-v1:0")
    h = fake.stats(key)["last_headers"]
    assert h["x-amz-security-token"] == "FQoGZXIvYXdzEXAMPLE"
    assert fake.stats(key)["last_path"] == "/model/amazon.nova-pro-v1%3A0/converse"
    llmux.completion(
        model=MODEL, messages=MSGS, api_base=fake.url, api_key="bedrock-key-123", extra_headers=hdr(key)
    )
    assert fake.stats(key)["last_headers"]["authorization"] == "Bearer bedrock-key-123"


def test_stream_sync(fake, key):
    chunks = list(call(fake, key, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == REPLY_WORDS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == REPLY_WORDS
    assert fake.stats(key)["last_path"].endswith("/converse-stream")


async def test_stream_async(fake, key):
    stream = await llmux.acompletion(
        model=MODEL, messages=MSGS, api_base=fake.url, extra_headers=hdr(key), stream=True, **AWS
    )
    text = ""
    async for c in stream:
        if c.choices:
            text += c.choices[0].delta.content or ""
    assert len(text.split()) == REPLY_WORDS


def test_tool_calls_unary_and_streamed(fake, key):
    r = call(fake, key, tools=TOOLS, tool_choice="required")
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments)["location"] == "Paris"
    assert r.choices[0].finish_reason == "tool_calls"
    assert fake.stats(key)["last_body"]["toolConfig"]["toolChoice"] == {"any": {}}

    r = call(fake, key, tools=TOOLS, faults={"tool_calls": 3})
    assert [json.loads(c.function.arguments)["location"] for c in r.choices[0].message.tool_calls] == [
        "Paris",
        "Tokyo",
        "Lima",
    ]

    chunks = list(call(fake, key, stream=True, tools=TOOLS, faults={"tool_calls": 2}))
    rebuilt = llmux.stream_chunk_builder(chunks)
    calls = rebuilt.choices[0].message.tool_calls
    assert len(calls) == 2
    assert [json.loads(c.function.arguments)["location"] for c in calls] == ["Paris", "Tokyo"]
    assert all(c.id.startswith("tooluse_") for c in calls)


def test_tool_history_and_image(fake, key):
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "tooluse_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tooluse_a", "content": "sunny"},
    ]
    call(fake, key, messages=messages, tools=TOOLS)
    body = fake.stats(key)["last_body"]
    assert body["system"] == [{"text": "Be brief."}]
    user, assistant, result = body["messages"]
    assert user["content"][1] == {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
    assert assistant["content"][0]["toolUse"] == {
        "toolUseId": "tooluse_a",
        "name": "get_weather",
        "input": {"location": "Paris"},
    }
    assert result == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "tooluse_a", "content": [{"text": "sunny"}]}}],
    }


ERRORS = [
    ({"status": 429}, llmux.RateLimitError, 429, "rate_limited"),
    ({"error_code": "ThrottlingException"}, llmux.RateLimitError, 429, "rate_limited"),
    ({"error_code": "ServiceQuotaExceededException"}, llmux.RateLimitError, 400, "quota_exceeded"),
    ({"error_code": "ModelNotReadyException"}, llmux.ServiceUnavailableError, 429, "service_unavailable"),
    ({"error_code": "context_too_long"}, llmux.ContextWindowExceededError, 400, "context_window_exceeded"),
    ({"status": 400}, llmux.BadRequestError, 400, "bad_request"),
    ({"status": 403}, llmux.PermissionDeniedError, 403, "permission_denied"),
    ({"error_code": "ExpiredTokenException"}, llmux.AuthenticationError, 403, "authentication"),
    ({"error_code": "UnrecognizedClientException"}, llmux.AuthenticationError, 403, "authentication"),
    ({"status": 404}, llmux.NotFoundError, 404, "not_found"),
    ({"status": 408}, llmux.Timeout, 408, "timeout"),
    ({"status": 424}, llmux.InternalServerError, 424, "internal"),
    ({"status": 500}, llmux.InternalServerError, 500, "internal"),
    ({"status": 503}, llmux.ServiceUnavailableError, 503, "service_unavailable"),
    ({"html": 1}, llmux.BadGatewayError, 502, "bad_gateway"),
]


@pytest.mark.parametrize("faults,cls,status,kind", ERRORS, ids=[e[3] + "-" + str(e[2]) for e in ERRORS])
def test_errors_map_to_litellm_classes(fake, key, faults, cls, status, kind):
    with pytest.raises(cls) as ei:
        call(fake, key, faults=faults)
    e = ei.value
    assert e.status_code == status
    assert e.llm_provider == "bedrock"
    assert e.kind == kind
    assert "BedrockException - " in str(e)


def test_throttling_retried_quota_not(fake, key):
    r = call(
        fake,
        key,
        num_retries=3,
        faults={"error_code": "ThrottlingException", "fail_times": 2, "retry_after_ms": 10},
    )
    assert r.choices[0].message.content
    assert fake.stats(key)["requests"] == 3
    k2 = key + "-q"
    with pytest.raises(llmux.RateLimitError):
        call(fake, k2, num_retries=3, faults={"error_code": "ServiceQuotaExceededException"})
    assert fake.stats(k2)["requests"] == 1


def test_in_stream_exception_and_cut(fake, key):
    with pytest.raises(llmux.RateLimitError) as ei:
        list(call(fake, key, stream=True, faults={"stream_error_after": 3}))
    assert ei.value.llm_provider == "bedrock"
    with pytest.raises(llmux.APIConnectionError):
        list(call(fake, key, stream=True, faults={"cut_after": 3}))


def test_unsupported_params_and_drop(fake, key):
    with pytest.raises(llmux.UnsupportedParamsError) as ei:
        call(fake, key, frequency_penalty=0.5)
    assert "frequency_penalty" in str(ei.value)
    call(fake, key, frequency_penalty=0.5, drop_params=True)
    assert "frequency_penalty" not in json.dumps(fake.stats(key)["last_body"])


def test_response_format_json(fake, key):
    schema = {"type": "object", "properties": {"location": {"type": "string"}}}
    r = call(
        fake, key, response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    )
    assert json.loads(r.choices[0].message.content)["location"] == "Paris"
    assert r.choices[0].message.tool_calls is None


def test_embeddings(fake, key):
    r = llmux.embedding(
        model="bedrock/amazon.titan-embed-text-v2:0",
        input="hello world",
        dimensions=256,
        api_base=fake.url,
        extra_headers=hdr(key),
        **AWS,
    )
    assert len(r.data[0]["embedding"]) == 256
    assert r.usage.prompt_tokens == 2
    assert fake.stats(key)["last_body"] == {"inputText": "hello world", "dimensions": 256, "normalize": True}
    r = llmux.embedding(
        model="bedrock/cohere.embed-english-v3",
        input=["a b", "c d"],
        api_base=fake.url,
        extra_headers=hdr(key),
        **AWS,
    )
    assert [d["index"] for d in r.data] == [0, 1]


def test_sigv4_signature_matches_botocore(fake, key):
    """Recomputes the signature of what llmux sent with botocore's own SigV4 signer."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    call(fake, key, aws_session_token="tok-123", max_tokens=10)
    st = fake.stats(key)
    h = st["last_headers"]
    auth_header = h["authorization"]
    signed = auth_header.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "content-type", "x-amz-security-token"} <= set(signed)
    # serde_json writes object keys sorted and compact.
    raw = json.dumps(st["last_body"], separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    req = AWSRequest(
        method="POST",
        url=fake.url + st["last_path"],
        data=raw,
        headers={k: h[k] for k in signed if k != "host"},
    )
    req.context["timestamp"] = h["x-amz-date"]
    signer = SigV4Auth(
        Credentials(AWS["aws_access_key_id"], AWS["aws_secret_access_key"], "tok-123"), "bedrock", "us-east-1"
    )
    canonical = signer.canonical_request(req)
    signature = signer.signature(signer.string_to_sign(req, canonical), req)
    assert auth_header.endswith("Signature=" + signature)
