"""The response cache from Python, against the fake upstream: LiteLLM's ``Cache`` and per-call
controls, hits that never reach the upstream (the fake's own counters say so), TTLs, streams
replayed from the cache and stored when they complete, tenant isolation, and a Redis cache
shared by two OS processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from redis_server import RedisServer, free_port

import llmux

from conftest import hdr

REPLY = "Hello! This is the fake upstream speaking. Every answer you receive from me is exactly twenty words long and deterministic."


@pytest.fixture(autouse=True)
def no_cache():
    yield
    llmux.flush_callbacks(5)
    llmux.success_callback = []
    llmux.disable_cache()


def msgs(key: str) -> list:
    # Each test asks its own question: answers cached by one test never serve another.
    return [{"role": "user", "content": f"question {key}"}]


def ask(fake, key, **kw):
    kw.setdefault("messages", msgs(key))
    kw.setdefault("extra_headers", hdr(key))
    return llmux.completion(model="gpt-4o-mini", api_base=fake.base_url, **kw)


def calls(fake, key) -> int:
    return fake.stats(key)["requests"]


def streamed(s) -> tuple:
    chunks = list(s)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_hit_skips_the_upstream_is_marked_and_costs_nothing(fake, key):
    llmux.cache = llmux.Cache()
    first = ask(fake, key, temperature=0)
    second = ask(fake, key, temperature=0)
    assert calls(fake, key) == 1
    assert second._hidden_params["cache_hit"] is True
    assert second._hidden_params["response_cost"] == 0.0
    assert llmux.completion_cost(second) == 0.0
    assert "cache_hit" not in first._hidden_params and first._hidden_params["response_cost"] > 0
    assert second.id == first.id and second.choices[0].message.content == REPLY
    assert second.usage.total_tokens == first.usage.total_tokens
    assert second._hidden_params["custom_llm_provider"] == "openai"
    stats = llmux._llmux.cache_stats()
    assert stats is not None and (stats["hits"], stats["misses"], stats["stores"]) == (1, 1, 1)


def test_different_parameters_messages_or_models_miss(fake, key):
    llmux.cache = llmux.Cache()
    ask(fake, key, temperature=0)
    ask(fake, key, temperature=0.5)
    ask(fake, key, temperature=0, max_tokens=5)
    ask(fake, key, temperature=0, messages=msgs(key) + [{"role": "user", "content": "more"}])
    llmux.completion(
        model="gpt-4o", api_base=fake.base_url, extra_headers=hdr(key), messages=msgs(key), temperature=0
    )
    assert calls(fake, key) == 5
    # Keyword order and bookkeeping options do not matter.
    r = llmux.completion(
        temperature=0, messages=msgs(key), model="gpt-4o-mini", api_base=fake.base_url,
        extra_headers=hdr(key), metadata={"run": 1}, num_retries=2, timeout=30,
    )  # fmt: skip
    assert r._hidden_params.get("cache_hit") is True
    assert calls(fake, key) == 5


def test_no_cache_no_store_and_caching_false(fake, key):
    llmux.cache = llmux.Cache()
    ask(fake, key, cache={"no-store": True})
    ask(fake, key, cache={"no-store": True})
    assert calls(fake, key) == 2, "no-store: nothing was stored"
    ask(fake, key)
    fresh = ask(fake, key, cache={"no-cache": True})
    assert calls(fake, key) == 4, "no-cache: the stored answer was not used"
    assert not fresh._hidden_params.get("cache_hit")
    ask(fake, key, caching=False)
    assert calls(fake, key) == 5
    hit = ask(fake, key)
    assert hit._hidden_params["cache_hit"] is True and hit.id == fresh.id, "no-cache still stored"
    assert calls(fake, key) == 5


def test_ttl_expiry_and_s_maxage(fake, key):
    llmux.cache = llmux.Cache(ttl=60)
    ask(fake, key, cache={"ttl": 0.4})
    assert ask(fake, key)._hidden_params.get("cache_hit") is True
    time.sleep(0.5)
    assert not ask(fake, key)._hidden_params.get("cache_hit"), "expired after its own ttl"
    assert calls(fake, key) == 2
    time.sleep(0.2)
    assert not ask(fake, key, cache={"s-maxage": 0.1})._hidden_params.get("cache_hit")
    assert calls(fake, key) == 3
    assert ask(fake, key, cache={"s-maxage": 30})._hidden_params.get("cache_hit") is True
    assert calls(fake, key) == 3


def test_cache_default_ttl(fake, key):
    llmux.cache = llmux.Cache(default_in_memory_ttl=0.3)
    ask(fake, key)
    assert ask(fake, key)._hidden_params.get("cache_hit") is True
    time.sleep(0.4)
    assert not ask(fake, key)._hidden_params.get("cache_hit")
    assert calls(fake, key) == 2


def test_a_stream_is_replayed_from_a_unary_answer(fake, key):
    llmux.cache = llmux.Cache()
    unary = ask(fake, key)
    s = ask(fake, key, stream=True)
    assert s._hidden_params["cache_hit"] is True and s._hidden_params["response_cost"] == 0.0
    text, chunks = streamed(s)
    assert text == unary.choices[0].message.content == REPLY
    assert len(chunks) >= 3, "role, content and finish chunks"
    assert chunks[-1].choices[0].finish_reason == "stop"
    rebuilt = llmux.stream_chunk_builder(chunks, messages=msgs(key))
    assert rebuilt.choices[0].message.content == REPLY
    assert rebuilt.usage.total_tokens == unary.usage.total_tokens
    assert calls(fake, key) == 1


def test_a_completed_stream_is_stored_and_served(fake, key):
    llmux.cache = llmux.Cache()
    text, _ = streamed(ask(fake, key, stream=True))
    assert text == REPLY
    hit = ask(fake, key)
    assert hit._hidden_params["cache_hit"] is True
    assert hit.choices[0].message.content == REPLY and hit.choices[0].finish_reason == "stop"
    assert hit.usage.completion_tokens > 0
    s = ask(fake, key, stream=True)
    assert s._hidden_params["cache_hit"] is True
    assert streamed(s)[0] == REPLY
    assert calls(fake, key) == 1


def test_an_abandoned_stream_is_not_stored(fake, key):
    llmux.cache = llmux.Cache()
    # Slow chunks: the stream is still running when the caller closes it.
    s = ask(fake, key, stream=True, extra_headers=hdr(key, chunk_delay_ms=50))
    next(iter(s))
    s.close()
    assert not ask(fake, key)._hidden_params.get("cache_hit")
    assert calls(fake, key) == 2


async def test_async_calls_hit_too(fake, key):
    llmux.cache = llmux.Cache()
    kw = dict(model="gpt-4o-mini", api_base=fake.base_url, extra_headers=hdr(key), messages=msgs(key))
    await llmux.acompletion(**kw)
    hit = await llmux.acompletion(**kw)
    assert hit._hidden_params["cache_hit"] is True
    s = await llmux.acompletion(stream=True, **kw)
    text = ""
    async for c in s:
        text += c.choices[0].delta.content or ""
    assert text == REPLY and s._hidden_params["cache_hit"] is True
    assert calls(fake, key) == 1


def test_tenants_are_isolated(fake, key):
    llmux.cache = llmux.Cache()
    ask(fake, key, user="alice")
    assert not ask(fake, key, user="bob")._hidden_params.get("cache_hit"), "bob never sees alice's answer"
    assert not ask(fake, key)._hidden_params.get("cache_hit")
    assert ask(fake, key, user="alice")._hidden_params.get("cache_hit") is True
    assert ask(fake, key, user="bob")._hidden_params.get("cache_hit") is True
    assert calls(fake, key) == 3


def test_namespaces(fake, key):
    llmux.cache = llmux.Cache(namespace="a")
    ask(fake, key)
    assert not ask(fake, key, cache={"namespace": "b"})._hidden_params.get("cache_hit")
    assert ask(fake, key, cache={"namespace": "b"})._hidden_params.get("cache_hit") is True
    assert ask(fake, key)._hidden_params.get("cache_hit") is True
    assert calls(fake, key) == 2


def test_default_off_and_supported_call_types(fake, key):
    llmux.cache = llmux.Cache(mode="default_off")
    ask(fake, key)
    assert not ask(fake, key)._hidden_params.get("cache_hit")
    ask(fake, key, caching=True)
    assert ask(fake, key, cache={"use-cache": True})._hidden_params.get("cache_hit") is True
    assert calls(fake, key) == 3

    llmux.cache = llmux.Cache(supported_call_types=["acompletion"])
    ask(fake, key)
    assert not ask(fake, key)._hidden_params.get("cache_hit"), "sync completion is not a cached call type"
    assert calls(fake, key) == 5


def test_callbacks_see_the_hit(fake, key):
    llmux.cache = llmux.Cache()
    got = []
    llmux.success_callback = [lambda kw, resp, start, end: got.append(kw)]
    ask(fake, key)
    ask(fake, key)
    assert streamed(ask(fake, key, stream=True))[0] == REPLY
    assert llmux.flush_callbacks(5)
    miss, hit, stream_hit = got
    assert miss["cache_hit"] is False and miss["standard_logging_object"]["cache_hit"] is False
    for kw in (hit, stream_hit):
        assert kw["cache_hit"] is True and kw["standard_logging_object"]["cache_hit"] is True
        assert kw["response_cost"] == 0.0 and kw["standard_logging_object"]["response_cost"] == 0.0
    assert "cache" not in hit["optional_params"]
    assert calls(fake, key) == 1


def test_controls_are_never_sent_upstream(fake, key):
    assert llmux.cache is None
    ask(fake, key, caching=True, cache={"no-cache": True, "ttl": 5})
    body = fake.stats(key)["last_body"]
    assert "cache" not in body and "caching" not in body
    llmux.cache = llmux.Cache()
    ask(fake, key, caching=True, cache={"ttl": 5}, temperature=0.3)
    body = fake.stats(key)["last_body"]
    assert "cache" not in body and "caching" not in body and body["temperature"] == 0.3


def test_malformed_controls_are_bad_requests(fake, key):
    llmux.cache = llmux.Cache()
    with pytest.raises(llmux.BadRequestError, match="ttl"):
        ask(fake, key, cache={"ttl": "ten"})
    with pytest.raises(llmux.BadRequestError, match="cache must be a dict"):
        ask(fake, key, cache="no-cache")
    with pytest.raises(llmux.BadRequestError, match="caching"):
        ask(fake, key, caching="yes")
    assert calls(fake, key) == 0


def test_constructor_like_litellm_and_secrets_stay_hidden(monkeypatch):
    with pytest.raises(ValueError, match="not supported"):
        llmux.Cache(type="redis-semantic")
    with pytest.raises(ValueError, match="not supported"):
        llmux.Cache(type="s3")
    with pytest.raises(ValueError, match="embedding"):
        llmux.Cache(supported_call_types=["completion", "embedding"])
    with pytest.raises(ValueError, match="mode"):
        llmux.Cache(mode="sometimes")
    with pytest.raises(ValueError, match="ttl"):
        llmux.Cache(ttl=-1)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_HOST", raising=False)
    with pytest.raises(ValueError, match="REDIS_HOST"):
        llmux.Cache(type="redis")
    c = llmux.Cache(
        type="redis", host="cache.internal", port=6380, password="s3cret-pw", namespace="n", ttl=5
    )
    assert (c.type, c.host, c.port, c.namespace, c.ttl) == ("redis", "cache.internal", 6380, "n", 5.0)
    assert "s3cret" not in repr(c) and "s3cret" not in str(vars(c))
    assert "cache.internal:6380" in repr(c)
    monkeypatch.setenv("REDIS_URL", "redis://:env-pw@envhost:6390/2")
    c = llmux.Cache(type="redis")
    assert (c.host, c.port) == ("envhost", 6390) and "env-pw" not in repr(c)
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("REDIS_HOST", "h2")
    monkeypatch.setenv("REDIS_PORT", "7000")
    assert (llmux.Cache(type="redis").host, llmux.Cache(type="redis").port) == ("h2", 7000)


def test_enable_and_disable_cache(fake, key):
    llmux.enable_cache()
    assert isinstance(llmux.cache, llmux.Cache)
    first = llmux.cache
    llmux.enable_cache()
    assert llmux.cache is first, "enable_cache keeps a cache already set"
    ask(fake, key)
    assert ask(fake, key)._hidden_params.get("cache_hit") is True
    llmux.update_cache(type="local")
    assert llmux.cache is not first
    assert not ask(fake, key)._hidden_params.get("cache_hit"), "a new local cache starts empty"
    llmux.disable_cache()
    assert llmux.cache is None and llmux._llmux.cache_stats() is None
    assert not ask(fake, key)._hidden_params.get("cache_hit")
    assert calls(fake, key) == 3


def test_unreachable_redis_costs_misses_only(fake, key):
    llmux.cache = llmux.Cache(type="redis", host="127.0.0.1", port=free_port())
    started = time.monotonic()
    for _ in range(3):
        r = ask(fake, key)
        assert r.choices[0].message.content == REPLY and not r._hidden_params.get("cache_hit")
    assert time.monotonic() - started < 5
    assert calls(fake, key) == 3
    assert llmux._llmux.cache_stats()["degraded"] >= 1


WORKER = """
import json, sys, llmux
base_url, key = sys.argv[1], sys.argv[2]
llmux.cache = llmux.Cache(type="redis", namespace="shared")  # REDIS_HOST / REDIS_PORT from the environment
r = llmux.completion(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "question " + key}],
    api_base=base_url, extra_headers={"x-fake-key": key},
)
print(json.dumps({"hit": r._hidden_params.get("cache_hit", False), "text": r.choices[0].message.content,
                  "cost": r._hidden_params.get("response_cost")}))
"""


def test_redis_cache_is_shared_by_processes(fake, key):
    with RedisServer() as redis:
        llmux.cache = llmux.Cache(type="redis", host="127.0.0.1", port=redis.port, namespace="shared", ttl=60)
        stored = ask(fake, key)
        assert not stored._hidden_params.get("cache_hit")
        env = dict(os.environ, REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis.port))
        env.pop("REDIS_URL", None)
        out = subprocess.run(
            [sys.executable, "-c", WORKER, fake.base_url, key],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        got = json.loads(out.stdout)
        assert got == {"hit": True, "text": stored.choices[0].message.content, "cost": 0.0}, out.stderr
        assert calls(fake, key) == 1, "the second process was served from Redis"
        # And the other way round: a stream in a second process stores, this process hits.
        other = key + "-2"
        worker = WORKER.replace("r = llmux.completion(", "r = llmux.completion(stream=True,").replace(
            'print(json.dumps({"hit"', 'r = llmux.stream_chunk_builder(list(r))\nprint(json.dumps({"hit"'
        )
        out = subprocess.run(
            [sys.executable, "-c", worker, fake.base_url, other],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert json.loads(out.stdout)["text"] == REPLY, out.stderr
        hit = ask(fake, other)
        assert hit._hidden_params["cache_hit"] is True and hit.choices[0].message.content == REPLY
        assert calls(fake, other) == 1


def test_router_calls_use_the_module_cache(fake, key):
    # Set before any plain call: the Router hands the module's cache to the engine itself.
    llmux.cache = llmux.Cache()
    params = {
        "model": "openai/gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": "sk-x",
        "extra_headers": hdr(key),
    }
    router = llmux.Router(model_list=[{"model_name": "g", "litellm_params": params}])
    router.completion(model="g", messages=msgs(key))
    second = router.completion(model="g", messages=msgs(key))
    assert second._hidden_params["cache_hit"] is True
    assert calls(fake, key) == 1
