"""Rate limits from Python: the SDK's ``rate_limit`` and the Router's deployment and call
limits, in process and across OS processes on a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from redis_server import RedisServer

import llmux
from llmux.exceptions import BadRequestError, RateLimitError

from conftest import MSGS, hdr

WORKER = os.path.join(os.path.dirname(__file__), "router_worker.py")


@pytest.fixture(autouse=True)
def no_limit():
    yield
    llmux.rate_limit = None
    llmux.set_rate_limit(None)


@pytest.fixture(scope="module")
def redis():
    with RedisServer() as r:
        yield r


def call(fake, key, **kw):
    return llmux.completion(
        model="openai/gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key), **kw
    )


def test_sdk_requests_per_minute_admits_the_burst_then_refuses_with_the_wait(fake, key):
    llmux.rate_limit = {"requests_per_minute": 5}
    outcomes = []
    for _ in range(12):
        try:
            call(fake, key)
            outcomes.append("ok")
        except RateLimitError as e:
            outcomes.append(e)
    assert outcomes.count("ok") == 5
    refused = [o for o in outcomes if o != "ok"]
    assert all(isinstance(e, RateLimitError) for e in refused)
    # 5 per minute: the next one in about 12 s.
    assert 10 <= refused[0].retry_after <= 12.5, refused[0].retry_after
    assert "requests per minute" in str(refused[0])
    # Refused calls never reached the upstream.
    assert fake.stats(key)["requests"] == 5
    stats = llmux.rate_limit_stats()
    assert stats["admitted"] == 5 and stats["denied"] == 7


def test_key_strategy_user_gives_each_user_a_bucket(fake, key):
    llmux.set_rate_limit({"requests_per_minute": 2, "key_strategy": "user"})
    passed = {"alice": 0, "bob": 0}
    for _ in range(4):
        for user in passed:
            try:
                call(fake, key, user=user)
                passed[user] += 1
            except RateLimitError:
                pass
    assert passed == {"alice": 2, "bob": 2}


def test_tpm_reserves_the_larger_cap_and_settles_with_real_usage(fake, key):
    llmux.set_rate_limit({"tokens_per_minute": 3000})
    # 2500 reserved (max_completion_tokens wins over max_tokens): a second call does not fit...
    first = call(fake, key, max_tokens=1, max_completion_tokens=2500)
    # ...unless the first was settled with its real usage (a few tokens): it was.
    time.sleep(0.05)
    second = call(fake, key, max_tokens=2500)
    assert first.usage.total_tokens < 100 and second.usage.total_tokens < 100
    # Without the refund both reservations would not fit: prove it with one held open.
    import threading

    slow = threading.Thread(
        target=lambda: llmux.completion(
            model="openai/gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            extra_headers=hdr(key, delay_ms=600),
            max_tokens=2900,
        )
    )
    slow.start()
    time.sleep(0.2)
    with pytest.raises(RateLimitError) as e:
        call(fake, key, max_tokens=2900)
    assert "tokens per minute" in str(e.value)
    slow.join()
    time.sleep(0.05)
    call(fake, key, max_tokens=2900)


async def test_async_calls_and_parallel_limit(fake, key):
    llmux.set_rate_limit({"max_parallel_requests": 3})

    async def one():
        try:
            await llmux.acompletion(
                model="openai/gpt-4o-mini",
                messages=MSGS,
                api_base=fake.base_url,
                extra_headers=hdr(key, delay_ms=300),
            )
            return "ok"
        except RateLimitError:
            return "limited"

    out = await asyncio.gather(*(one() for _ in range(8)))
    assert out.count("ok") == 3 and out.count("limited") == 5
    # Slots come back when calls end.
    assert await one() == "ok"


def test_a_bad_rate_limit_block_is_refused_with_its_key():
    with pytest.raises(BadRequestError, match="requests_per_min"):
        llmux.set_rate_limit({"requests_per_min": 5})
    with pytest.raises(BadRequestError, match="distributed"):
        llmux.set_rate_limit({"requests_per_minute": 5, "distributed": True})
    with pytest.raises(BadRequestError, match="on_redis_failure"):
        llmux.set_rate_limit({"requests_per_minute": 5, "on_redis_failure": "sometimes"})


def test_distributed_sdk_limit_is_shared_with_another_process(fake, redis, key):
    cfg = {
        "requests_per_minute": 6,
        "distributed": True,
        "key_strategy": "model",
        "redis": {"url": redis.url, "command_timeout": 2},
    }
    llmux.set_rate_limit(cfg)
    assert sum(1 for _ in range(4) if _try(lambda: call(fake, key))) == 4
    # Another OS process on the same Redis gets what is left: 2.
    script = (
        "import json, sys, llmux\n"
        "from llmux.exceptions import RateLimitError\n"
        f"llmux.set_rate_limit({cfg!r})\n"
        "ok = 0\n"
        "for _ in range(5):\n"
        "    try:\n"
        f"        llmux.completion(model='openai/gpt-4o-mini', messages=[{{'role': 'user', 'content': 'x'}}], "
        f"api_base={fake.base_url!r}, extra_headers={{'x-fake-key': {key!r}}})\n"
        "        ok += 1\n"
        "    except RateLimitError:\n"
        "        pass\n"
        "print(ok)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    assert fake.stats(key)["requests"] == 6


async def test_busy_calls_are_admitted_from_blocks_unless_prefetch_is_off(fake, redis, key):
    """A busy scope far from its limits admits calls from blocks fetched ahead from Redis (no
    round trip each); ``prefetch_ms: 0`` asks Redis for every call. Every call is admitted and
    reaches the upstream either way."""
    base = {
        "requests_per_minute": 10**6,
        "tokens_per_minute": 10**9,
        "max_parallel_requests": 10**4,
        "distributed": True,
        "key_strategy": "user",
        "redis": {"url": redis.url, "command_timeout": 2},
    }

    async def one():
        await llmux.acompletion(
            model="openai/gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            extra_headers=hdr(key),
            user=key,
        )

    sent = 0
    for cfg, from_blocks in ((base, True), ({**base, "prefetch_ms": 0}, False)):
        llmux.set_rate_limit(cfg)
        # Busy for a second: blocks start once a whole 50 ms window of demand has been seen.
        calls, stop = 0, time.monotonic() + 1.0
        while time.monotonic() < stop:
            await asyncio.gather(*(one() for _ in range(64)))
            calls += 64
        sent += calls
        s = llmux.rate_limit_stats()
        assert s["admitted"] == calls and s["denied"] == 0 and s["redis_errors"] == 0, s
        if from_blocks:
            assert s["blocks"] > 0 and s["prefetched"] > 0, s
        else:
            assert s["blocks"] == 0 and s["prefetched"] == 0, s
    assert fake.stats(key)["requests"] == sent


def _try(f):
    try:
        f()
        return True
    except RateLimitError:
        return False


def dep(fake, key, dep_id, **extra):
    params = {"model": "openai/gpt-4o-mini", "api_base": fake.base_url, "api_key": "sk-x"}
    params["extra_headers"] = {"x-fake-key": key}
    params.update(extra)
    return {"model_name": "g", "litellm_params": params, "model_info": {"id": dep_id}}


def test_router_deployment_rpm_moves_traffic_then_refuses(fake, key):
    router = llmux.Router(model_list=[dep(fake, key, "small", rpm=2), dep(fake, key, "big", rpm=4)])
    used = []
    for _ in range(9):
        try:
            used.append(router.completion(model="g", messages=MSGS)._hidden_params["model_id"])
        except RateLimitError as e:
            used.append("limited")
            assert e.retry_after and e.retry_after > 0
    assert used.count("small") == 2 and used.count("big") == 4 and used.count("limited") == 3
    assert router.rate_limit_stats()["admitted"] == 6


def test_router_rate_limit_block_limits_each_caller(fake, key):
    router = llmux.Router(
        model_list=[dep(fake, key, "d")], rate_limit={"requests_per_minute": 3, "key_strategy": "user"}
    )
    ok = sum(1 for _ in range(5) if _try(lambda: router.completion(model="g", messages=MSGS, user="u1")))
    assert ok == 3
    assert _try(lambda: router.completion(model="g", messages=MSGS, user="u2"))


def test_router_deployment_limits_hold_across_processes(fake, redis, key):
    # Two OS processes, one Redis: the deployment's 10 rpm is admitted 10 times in all.
    model_list = [dep(fake, key, "only", rpm=10)]
    cfg = {
        "model_list": model_list,
        "router": {"redis": {"url": redis.url, "command_timeout": 2}},
        "group": "g",
        "mode": "seq",
        "n": 12,
    }
    cfg["start_at"] = time.time() + 2.0
    procs = [
        subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        assert p.returncode == 0, stdout
        results += json.loads(stdout.strip().splitlines()[-1])
    assert results.count("only") == 10, results
    assert results.count("RateLimitError") == 14
    assert fake.stats(key)["requests"] == 10


def test_a_small_tpm_deployment_still_takes_a_call_without_max_tokens(fake, key):
    # The default output reserve (1024) is capped at the limit: a 500-TPM deployment is not
    # refused for good (LiteLLM's default reservation once 429'd every key under 1024 TPM).
    router = llmux.Router(model_list=[dep(fake, key, "small", tpm=500)])
    r = router.completion(model="g", messages=MSGS)
    assert r._hidden_params["model_id"] == "small"
    # The real usage (a few tokens) was settled: a call reserving 100 more fits at once, where
    # the whole 500 reserved by the first call would not have.
    time.sleep(0.05)
    assert router.completion(model="g", messages=MSGS, max_tokens=100)._hidden_params["model_id"] == "small"
    # A second full-size reservation waits for the tokens the first call used to flow back.
    with pytest.raises(RateLimitError) as e:
        router.completion(model="g", messages=MSGS)
    assert 0 < e.value.retry_after < 60
