"""Price table and cost: figures compared with LiteLLM's on the same usage."""

from __future__ import annotations

import json

import pytest

import llmux
from llmux import _llmux

from conftest import MSGS, hdr

MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "gemini/gemini-2.5-flash",
    "deepseek/deepseek-chat",
    "azure/gpt-4o",
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
]


@pytest.fixture(scope="module")
def litellm():
    try:
        import litellm
    except ImportError as exc:  # pragma: no cover - the test venv installs it
        raise AssertionError("litellm is not installed in the test venv; `make test` installs it") from exc
    litellm.suppress_debug_info = True
    return litellm


@pytest.mark.parametrize("model", MODELS)
def test_cost_per_token_matches_litellm(litellm, model):
    ours = llmux.cost_per_token(model=model, prompt_tokens=1234, completion_tokens=567)
    theirs = litellm.cost_per_token(model=model, prompt_tokens=1234, completion_tokens=567)
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours[0] > 0 and ours[1] > 0


def test_mock_response_cost_and_completion_cost(litellm):
    r = llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi")
    assert r._hidden_params["response_cost"] == pytest.approx(0.000225)
    assert llmux.completion_cost(completion_response=r) == pytest.approx(0.000225)
    theirs = litellm.completion(model="gpt-4o", messages=MSGS, mock_response="hi")
    assert litellm.completion_cost(completion_response=theirs) == pytest.approx(0.000225)


def test_real_call_is_priced_from_usage(fake, key):
    r = llmux.completion(
        model="openai/gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key)
    )
    expected = sum(llmux.cost_per_token("gpt-4o-mini", r.usage.prompt_tokens, r.usage.completion_tokens))
    assert r._hidden_params["response_cost"] == pytest.approx(expected)
    assert llmux.completion_cost(completion_response=r) == pytest.approx(expected)
    e = llmux.embedding(model="text-embedding-3-small", input=["a b c"], api_base=fake.base_url)
    assert e._hidden_params["response_cost"] == pytest.approx(e.usage.prompt_tokens * 2e-08)


def test_unknown_models_cost_nothing_and_are_counted(fake):
    before = _llmux.unpriced_count()
    r = llmux.completion(model="openai/my-finetune-xyz", messages=MSGS, api_base=fake.base_url)
    assert r.choices[0].message.content
    assert r._hidden_params["response_cost"] is None
    assert llmux.completion_cost(completion_response=r) == 0.0
    assert _llmux.unpriced_count() > before


def test_register_model_and_price_file(tmp_path):
    llmux.register_model({"my-private-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}})
    assert llmux.cost_per_token("my-private-model", 10, 10) == pytest.approx((1e-5, 2e-5))
    # Override one field of a bundled model; the others stay.
    before = llmux.get_model_info("gpt-4o-mini")
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"gpt-4o-mini": {"input_cost_per_token": 1e-3}}))
    llmux.register_model(str(f))
    after = llmux.get_model_info("gpt-4o-mini")
    assert after["input_cost_per_token"] == 1e-3
    assert after["output_cost_per_token"] == before["output_cost_per_token"]
    llmux.register_model({"gpt-4o-mini": {"input_cost_per_token": before["input_cost_per_token"]}})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(llmux.BadRequestError, match="price table"):
        llmux.register_model(str(bad))


def test_model_info_like_litellm(litellm):
    ours = llmux.get_model_info("gpt-4o")
    theirs = litellm.get_model_info("gpt-4o")
    for k in ("max_input_tokens", "max_output_tokens", "input_cost_per_token", "output_cost_per_token"):
        assert ours[k] == theirs[k], k
    assert llmux.supports_vision("gpt-4o") and llmux.supports_function_calling("gpt-4o")
    assert llmux.get_max_tokens("gpt-4o") == theirs["max_output_tokens"]
    with pytest.raises(Exception, match="isn't mapped"):
        llmux.get_model_info("no-such-model-abc")
    assert "gpt-4o" in llmux.model_cost


def _tiktoken(name):
    import os

    import litellm

    os.environ.setdefault(
        "TIKTOKEN_CACHE_DIR",
        os.path.join(os.path.dirname(litellm.__file__), "litellm_core_utils", "tokenizers"),
    )
    import tiktoken

    return tiktoken.get_encoding(name)


TEXTS = ["hello world", "Grüße, 世界 🌍 — tokens!", "def f(x):\n    return x ** 2\n" * 5, ""]


@pytest.mark.parametrize("model,encoding", [("gpt-4", "cl100k_base"), ("gpt-4o", "o200k_base")])
def test_token_counts_match_tiktoken(litellm, model, encoding):
    enc = _tiktoken(encoding)
    for t in TEXTS:
        assert llmux.token_counter(model=model, text=t) == len(enc.encode(t)), t


def test_message_token_counts_match_litellm(litellm):
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan?", "name": "bob"},
    ]
    assert llmux.token_counter(model="gpt-4", messages=msgs) == litellm.token_counter(
        model="gpt-4", messages=msgs
    )
    with_image = msgs + [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        }
    ]
    assert (
        llmux.token_counter(model="gpt-4", messages=with_image)
        > llmux.token_counter(model="gpt-4", messages=msgs) + 85
    )


def test_pricing_file_hot_reload(tmp_path):
    import os
    import time

    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"hot-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 0}}))
    assert llmux.set_pricing_file(f) == 1
    assert llmux.cost_per_token("hot-model", 1000, 0)[0] == pytest.approx(1e-3)
    f.write_text(json.dumps({"hot-model": {"input_cost_per_token": 3e-6, "output_cost_per_token": 0}}))
    later = time.time() + 5
    os.utime(f, (later, later))
    deadline = time.monotonic() + 5
    while llmux.cost_per_token("hot-model", 1000, 0)[0] != pytest.approx(3e-3):
        assert time.monotonic() < deadline, "the changed price file was not reloaded"
        time.sleep(0.1)
