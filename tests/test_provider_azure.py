"""Azure OpenAI through the SDK against the fake upstream's Azure paths."""

from __future__ import annotations

import pytest

import llmux

from conftest import MSGS, hdr


def test_unary_path_version_and_key_header(fake, key):
    r = llmux.completion(
        model="azure/gpt4o-eu",
        messages=MSGS,
        api_base=fake.url,
        api_key="azure-key-0001",
        api_version="2024-10-21",
        extra_headers=hdr(key),
    )
    assert r.choices[0].message.content
    assert r._hidden_params["custom_llm_provider"] == "azure"
    s = fake.stats(key)
    assert s["last_path"] == "/openai/deployments/gpt4o-eu/chat/completions?api-version=2024-10-21"
    assert s["last_headers"]["api-key"] == "azure-key-0001"
    assert "authorization" not in s["last_headers"]
    assert s["last_body"]["model"] == "gpt4o-eu"


def test_environment_and_ad_token(fake, key, monkeypatch):
    monkeypatch.setenv("AZURE_API_BASE", fake.url)
    monkeypatch.setenv("AZURE_API_VERSION", "2025-01-01-preview")
    monkeypatch.delenv("AZURE_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with pytest.raises(llmux.AuthenticationError, match="AZURE_API_KEY"):
        llmux.completion(model="azure/dep", messages=MSGS)
    llmux.completion(model="azure/dep", messages=MSGS, azure_ad_token="ad-token-xyz", extra_headers=hdr(key))
    s = fake.stats(key)
    assert s["last_headers"]["authorization"] == "Bearer ad-token-xyz"
    assert s["last_path"].endswith("api-version=2025-01-01-preview")


def test_stream_and_embeddings(fake, key):
    chunks = list(
        llmux.completion(model="azure/dep", messages=MSGS, api_base=fake.url, api_key="k", stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Hello!")
    e = llmux.embedding(
        model="azure/emb", input=["a", "b"], api_base=fake.url, api_key="k", extra_headers=hdr(key)
    )
    assert len(e.data) == 2
    assert fake.stats(key)["last_path"].startswith("/openai/deployments/emb/embeddings?api-version=")


def test_content_filter_error_and_filtered_finish(fake, key):
    with pytest.raises(llmux.ContentPolicyViolationError) as ei:
        llmux.completion(
            model="azure/dep",
            messages=MSGS,
            api_base=fake.url,
            api_key="k",
            num_retries=3,
            extra_headers=hdr(key, error_code="content_filter"),
        )
    assert ei.value.status_code == 400 and ei.value.llm_provider == "azure"
    assert fake.stats(key)["requests"] == 1, "a content filter refusal is never retried"
    r = llmux.completion(
        model="azure/dep",
        messages=MSGS,
        api_base=fake.url,
        api_key="k",
        extra_headers={"x-fake-finish-reason": "content_filter"},
    )
    assert r.choices[0].finish_reason == "content_filter"


def test_gateway_html_in_front_of_azure(fake, key):
    with pytest.raises(llmux.BadGatewayError, match="non-JSON body"):
        llmux.completion(
            model="azure/dep", messages=MSGS, api_base=fake.url, api_key="k", extra_headers=hdr(key, html=1)
        )
