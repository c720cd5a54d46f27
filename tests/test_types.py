"""Tests for llmux.types and llmux._streaming.

Expected key sets / values were produced by litellm 1.110.2 for the same inputs
(``litellm.completion`` against a local OpenAI-compatible server, and
``litellm.stream_chunk_builder``) and are recorded here as literals.
"""

from __future__ import annotations

import copy
import json
import pickle

from llmux._streaming import stream_chunk_builder
from llmux.types import (
    ChatCompletionDeltaToolCall,
    ChatCompletionMessageToolCall,
    Choices,
    Delta,
    EmbeddingResponse,
    Function,
    Message,
    ModelResponse,
    ModelResponseStream,
    StreamingChoices,
    Usage,
)

FULL = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_123",
}

MINIMAL = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}

TOOLS = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                ],
            },
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}


def _mr(d):
    return ModelResponse._from_native(copy.deepcopy(d), {"h": 1}, 12.5)


# litellm 1.110.2: ModelResponse.model_dump() for FULL (verified by hand)
LITELLM_FULL_DUMP = {
    "id": "chatcmpl-abc",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "object": "chat.completion",
    "system_fingerprint": "fp_123",
    "choices": [
        {
            "finish_reason": "stop",
            "index": 0,
            "message": {
                "content": "Hello!",
                "role": "assistant",
                "tool_calls": None,
                "function_call": None,
                "annotations": [],
                "refusal": None,
            },
            "provider_specific_fields": {},
            "logprobs": None,
        }
    ],
    "usage": {
        "completion_tokens": 2,
        "prompt_tokens": 9,
        "total_tokens": 11,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
    },
    "service_tier": "default",
}


def test_full_response_dump_matches_litellm():
    assert _mr(FULL).model_dump() == LITELLM_FULL_DUMP


def test_minimal_response_key_sets():
    r = _mr(MINIMAL)
    d = r.model_dump()
    assert set(d) == {"id", "created", "model", "object", "choices", "usage"}
    assert set(d["choices"][0]) == {"finish_reason", "index", "message", "provider_specific_fields"}
    assert set(d["choices"][0]["message"]) == {"content", "role", "tool_calls", "function_call"}
    assert set(d["usage"]) == {
        "completion_tokens",
        "prompt_tokens",
        "total_tokens",
        "completion_tokens_details",
        "prompt_tokens_details",
    }
    assert d["usage"]["prompt_tokens_details"] is None


def test_attribute_and_item_access():
    r = _mr(FULL)
    assert r.choices[0].message.content == "Hello!"
    assert r["choices"][0]["message"]["content"] == "Hello!"
    assert r.get("choices")[0].get("message").get("role") == "assistant"
    assert r.get("nope", 5) == 5
    assert "usage" in r and "nope" not in r
    assert r.object == "chat.completion"
    assert r.system_fingerprint == "fp_123"
    assert r.usage.total_tokens == 11
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.prompt_tokens_details.text_tokens is None
    assert r._hidden_params == {"h": 1}
    assert r._response_ms == 12.5
    assert r.choices[0].message.provider_specific_fields is None


def test_lazy_choices_are_cached():
    r = _mr(MINIMAL)
    assert type(r._d["choices"][0]) is dict  # nothing wrapped yet
    c1 = r.choices
    assert r.choices is c1 and r.choices[0] is c1[0]
    assert isinstance(c1[0], Choices) and isinstance(c1[0].message, Message)


def test_finish_reason_mapping():
    d = copy.deepcopy(MINIMAL)
    d["choices"][0]["finish_reason"] = "end_turn"
    c = _mr(d).choices[0]
    assert c.finish_reason == "stop"
    assert c.provider_specific_fields == {"native_finish_reason": "end_turn"}
    for raw, mapped in [("max_tokens", "length"), ("tool_use", "tool_calls"), (None, "stop")]:
        d["choices"][0]["finish_reason"] = raw
        assert _mr(d).choices[0].finish_reason == mapped
    assert Choices(finish_reason="max_tokens").finish_reason == "length"
    assert StreamingChoices(finish_reason="tool_use").finish_reason == "tool_calls"


def test_tool_calls():
    r = _mr(TOOLS)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"  # "stop" with tool calls, like LiteLLM
    tc = c.message.tool_calls[0]
    assert isinstance(tc, ChatCompletionMessageToolCall)
    assert isinstance(tc.function, Function)
    assert (tc.id, tc.type, tc.function.name, tc.function.arguments) == ("call_1", "function", "f", '{"a":1}')
    assert tc["function"]["arguments"] == '{"a":1}'
    d = r.model_dump()
    assert set(d["choices"][0]) == {
        "finish_reason",
        "index",
        "message",
        "provider_specific_fields",
        "logprobs",
    }
    assert d["choices"][0]["message"]["tool_calls"] == [
        {"function": {"arguments": '{"a":1}', "name": "f"}, "id": "call_1", "type": "function"}
    ]


def test_reasoning_and_think_tags():
    d = copy.deepcopy(MINIMAL)
    d["choices"][0]["message"]["reasoning_content"] = "think"
    m = _mr(d).choices[0].message
    assert m.reasoning_content == "think"
    assert set(m.model_dump()) == {"content", "role", "tool_calls", "function_call", "reasoning_content"}
    d["choices"][0]["message"] = {"role": "assistant", "content": "<think>hm</think>ok"}
    m = _mr(d).choices[0].message
    assert (m.reasoning_content, m.content) == ("hm", "ok")
    plain = _mr(MINIMAL).choices[0].message
    assert "reasoning_content" not in plain


def test_attribute_assignment_reflects_in_dump():
    r = _mr(MINIMAL)
    r.model = "x"
    r.choices[0].message.content = "changed"
    r["id"] = "new-id"
    r.custom = 1
    d = r.model_dump()
    assert d["model"] == "x" and d["id"] == "new-id" and d["custom"] == 1
    assert d["choices"][0]["message"]["content"] == "changed"
    r.choices = [{"message": {"content": "c"}, "finish_reason": "stop"}]
    assert r.choices[0].message.content == "c"
    r._hidden_params["k"] = "v"
    assert r._hidden_params["k"] == "v" and "_hidden_params" not in r.model_dump()


def test_serialisation_helpers():
    r = _mr(FULL)
    assert r.json() == r.model_dump() == r.dict()
    s = r.model_dump_json()
    assert json.loads(s) == r.model_dump() and ", " not in s
    assert repr(r).startswith("ModelResponse(id='chatcmpl-abc', created=1700000000, model='gpt-4o-mini")
    assert "Message(content='Hello!', role='assistant'" in repr(r)
    assert r == _mr(FULL)
    assert r != _mr(MINIMAL)
    r2 = pickle.loads(pickle.dumps(r))
    assert r2 == r and r2._hidden_params == {"h": 1}
    assert copy.deepcopy(r) == r


def test_user_constructed_model_response():
    r = ModelResponse()
    assert r.id.startswith("chatcmpl-") and isinstance(r.created, int)
    d = r.model_dump()
    assert set(d) == {"id", "created", "model", "object", "choices"}
    assert d["choices"] == [
        {
            "finish_reason": "stop",
            "index": 0,
            "message": {"content": None, "role": "assistant", "tool_calls": None, "function_call": None},
        }
    ]
    r = ModelResponse(
        choices=[{"message": {"content": "hi"}, "finish_reason": "max_tokens"}],
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        system_fingerprint="fp",
        model="m",
    )
    d = r.model_dump()
    assert d["system_fingerprint"] == "fp" and d["usage"]["total_tokens"] == 2
    assert d["choices"][0]["finish_reason"] == "length"
    assert d["choices"][0]["provider_specific_fields"] == {"native_finish_reason": "max_tokens"}
    assert isinstance(r.usage, Usage)
    r = ModelResponse(choices=[Choices(message=Message(content="a"))], usage=Usage(prompt_tokens=2))
    assert r.choices[0].message.content == "a" and r.usage.prompt_tokens == 2


def test_usage_constructor():
    u = Usage(prompt_tokens=1, completion_tokens=5, total_tokens=6, reasoning_tokens=2)
    assert u.completion_tokens_details.reasoning_tokens == 2
    assert u.completion_tokens_details.text_tokens == 3
    assert Usage().model_dump() == {
        "completion_tokens": 0,
        "prompt_tokens": 0,
        "total_tokens": 0,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }


def _chunk(delta, fr=None, usage=None, choices=True):
    d = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1700000001,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fr}] if choices else [],
    }
    if usage is not None:
        d["usage"] = usage
    return d


TEXT_STREAM = [
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Hel"}),
    _chunk({"content": "lo"}),
    _chunk({}, "stop"),
    _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}, choices=False),
]


def _tc(i, id_, name, args):
    out = {"index": i, "function": {"arguments": args}}
    if id_:
        out["id"] = id_
        out["type"] = "function"
    if name:
        out["function"]["name"] = name
    return out


TOOL_STREAM = [
    _chunk({"role": "assistant", "content": None, "tool_calls": [_tc(0, "call_a", "get_w", "")]}),
    _chunk({"tool_calls": [_tc(0, None, None, '{"ci')]}),
    _chunk({"tool_calls": [_tc(0, None, None, 'ty":"x"}')]}),
    _chunk({"tool_calls": [_tc(1, "call_b", "get_t", "{}")]}),
    _chunk({}, "tool_calls"),
]


def _stream(chunks):
    return [ModelResponseStream._from_native(copy.deepcopy(c), {}) for c in chunks]


def test_stream_chunk_shapes_match_litellm():
    s = _stream(TEXT_STREAM)
    d0 = s[0].model_dump()
    # litellm 1.110.2 key sets (openai SDK-only fields like "obfuscation" excluded)
    assert set(d0) == {
        "id",
        "created",
        "model",
        "object",
        "system_fingerprint",
        "choices",
        "provider_specific_fields",
    }
    assert set(d0["choices"][0]) == {"finish_reason", "index", "delta", "logprobs"}
    assert set(d0["choices"][0]["delta"]) == {
        "refusal",
        "content",
        "role",
        "function_call",
        "tool_calls",
        "audio",
    }
    assert s[1].choices[0].delta.content == "Hel" and s[1].choices[0].delta.role is None
    final = s[3].model_dump()["choices"][0]
    assert final["finish_reason"] == "stop"
    assert final["delta"] == {
        "content": None,
        "role": None,
        "function_call": None,
        "tool_calls": None,
        "audio": None,
    }
    assert s[3].choices[0].delta.content is None
    last = s[4]
    assert last.choices == [] and last.usage.total_tokens == 7
    assert "usage" not in s[0] and s[0].object == "chat.completion.chunk"
    assert isinstance(s[0].choices[0], StreamingChoices) and isinstance(s[0].choices[0].delta, Delta)
    assert s[0]["choices"][0]["delta"]["role"] == "assistant"


def test_stream_tool_call_delta():
    s = _stream(TOOL_STREAM)
    tc = s[1].choices[0].delta.tool_calls[0]
    assert isinstance(tc, ChatCompletionDeltaToolCall)
    assert (tc.index, tc.id, tc.type, tc.function.name, tc.function.arguments) == (
        0,
        None,
        "function",
        None,
        '{"ci',
    )
    assert s[1].model_dump()["choices"][0]["delta"]["tool_calls"] == [
        {"id": None, "function": {"arguments": '{"ci', "name": None}, "type": "function", "index": 0}
    ]


def test_user_constructed_stream_chunk():
    c = ModelResponseStream(id="a", created=1, model="m", choices=[{"index": 0, "delta": {"content": "hi"}}])
    assert c.model_dump() == {
        "id": "a",
        "created": 1,
        "model": "m",
        "object": "chat.completion.chunk",
        "choices": [
            {
                "finish_reason": None,
                "index": 0,
                "delta": {
                    "content": "hi",
                    "role": None,
                    "function_call": None,
                    "tool_calls": None,
                    "audio": None,
                },
                "logprobs": None,
            }
        ],
        "provider_specific_fields": None,
    }


# litellm.stream_chunk_builder output for TEXT_STREAM (cost field removed)
LITELLM_TEXT_BUILT = {
    "id": "chatcmpl-s",
    "created": 1700000001,
    "model": "gpt-4o-mini",
    "object": "chat.completion",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "finish_reason": "stop",
            "index": 0,
            "message": {"content": "Hello", "role": "assistant", "tool_calls": None, "function_call": None},
        }
    ],
    "usage": {
        "completion_tokens": 2,
        "prompt_tokens": 5,
        "total_tokens": 7,
        "completion_tokens_details": {
            "accepted_prediction_tokens": None,
            "audio_tokens": None,
            "reasoning_tokens": 0,
            "rejected_prediction_tokens": None,
            "text_tokens": 2,
            "image_tokens": None,
            "video_tokens": None,
        },
        "prompt_tokens_details": None,
    },
}


def test_stream_chunk_builder_text_matches_litellm():
    msgs = [{"role": "user", "content": "hi"}]
    built = stream_chunk_builder(_stream(TEXT_STREAM), messages=msgs)
    assert isinstance(built, ModelResponse)
    assert built.model_dump() == LITELLM_TEXT_BUILT
    # plain dict chunks work too
    assert stream_chunk_builder(copy.deepcopy(TEXT_STREAM), messages=msgs).model_dump() == LITELLM_TEXT_BUILT


def test_stream_chunk_builder_tool_calls():
    built = stream_chunk_builder(_stream(TOOL_STREAM), messages=[{"role": "user", "content": "hi"}])
    d = built.model_dump()
    # LiteLLM gives the same except usage, which it counts with tiktoken (8 / 49)
    assert d["choices"] == [
        {
            "finish_reason": "tool_calls",
            "index": 0,
            "message": {
                "content": None,
                "role": "assistant",
                "tool_calls": [
                    {
                        "function": {"arguments": '{"city":"x"}', "name": "get_w"},
                        "id": "call_a",
                        "type": "function",
                    },
                    {"function": {"arguments": "{}", "name": "get_t"}, "id": "call_b", "type": "function"},
                ],
                "function_call": None,
            },
        }
    ]
    assert d["usage"]["completion_tokens_details"] is None
    assert d["usage"]["total_tokens"] == d["usage"]["prompt_tokens"] + d["usage"]["completion_tokens"] > 0
    assert built.choices[0].message.tool_calls[0].function.arguments == '{"city":"x"}'


def test_stream_chunk_builder_usage_from_hidden_params():
    chunks = _stream(TEXT_STREAM[:4])
    chunks[-1]._hidden_params["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    u = stream_chunk_builder(chunks).usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (11, 3, 14)


def test_stream_chunk_builder_estimates_usage():
    msgs = [{"role": "user", "content": "x" * 40}]
    built = stream_chunk_builder(_stream(TEXT_STREAM[:4]), messages=msgs)
    u = built.usage
    # ~4 chars/token: 40 chars -> 10, +3 per message +3 reply priming; "Hello" -> 2
    assert u.prompt_tokens == 16
    assert u.completion_tokens == 2
    assert u.total_tokens == 18
    assert stream_chunk_builder(_stream(TEXT_STREAM[:4])).usage.prompt_tokens == 0


def test_stream_chunk_builder_empty_and_reasoning():
    assert stream_chunk_builder([]) is None
    chunks = [
        _chunk({"role": "assistant", "reasoning_content": "hmm"}),
        _chunk({"content": "ok"}),
        _chunk({}, "length"),
    ]
    d = stream_chunk_builder(chunks).model_dump()
    assert d["choices"][0]["message"]["reasoning_content"] == "hmm"
    assert d["choices"][0]["finish_reason"] == "length"
    assert set(d["usage"]["completion_tokens_details"]) == {
        "accepted_prediction_tokens",
        "audio_tokens",
        "reasoning_tokens",
        "rejected_prediction_tokens",
        "text_tokens",
        "image_tokens",
        "video_tokens",
    }


def test_embedding_response():
    d = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    r = EmbeddingResponse._from_native(copy.deepcopy(d), {}, 3.0)
    assert r.data[0]["embedding"] == [0.1, 0.2]
    assert r["data"][0]["embedding"] == [0.1, 0.2]
    assert r.data[0].embedding == [0.1, 0.2] and isinstance(r.data[0], dict)
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 0
    # litellm 1.110.2 EmbeddingResponse.model_dump() for the same response
    assert r.model_dump() == {
        "model": "text-embedding-3-small",
        "data": [{"embedding": [0.1, 0.2], "index": 0, "object": "embedding"}],
        "object": "list",
        "usage": {
            "completion_tokens": 0,
            "prompt_tokens": 2,
            "total_tokens": 2,
            "completion_tokens_details": None,
            "prompt_tokens_details": None,
        },
    }
    json.dumps(r.data)  # items are real dicts
    assert EmbeddingResponse().model_dump()["object"] == "list"


def test_message_constructor_and_delta_constructor():
    m = Message(content="hi", tool_calls=[{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}])
    assert m.tool_calls[0].function.arguments == '{"a": 1}'
    assert m.tool_calls[0].type == "function"
    assert set(Message().model_dump()) == {"content", "role", "tool_calls", "function_call"}
    dl = Delta(content="x", tool_calls=[{"function": {"name": "f", "arguments": ""}}])
    assert dl.tool_calls[0].index == 0 and dl.tool_calls[0].type == "function"
    assert set(Delta().model_dump()) == {"content", "role", "function_call", "tool_calls", "audio"}
