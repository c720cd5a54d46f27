"""llmux.Router against the fake upstream: strategies, retries, cooldowns, fallbacks, streams."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import llmux

from conftest import MSGS


def dep(fake, group, key, dep_id=None, **extra):
    faults = extra.pop("faults", {})
    headers = {"x-fake-key": key, **{"x-fake-" + k.replace("_", "-"): str(v) for k, v in faults.items()}}
    params = {
        "model": "openai/gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": "sk-x",
        "extra_headers": headers,
    }
    params.update(extra)
    entry = {"model_name": group, "litellm_params": params}
    if dep_id:
        entry["model_info"] = {"id": dep_id}
    return entry


def ids(responses):
    return Counter(r._hidden_params["model_id"] for r in responses)


def test_shuffle_spreads_and_reports_the_deployment(fake, key):
    r = llmux.Router(model_list=[dep(fake, "g", key + "a", "a"), dep(fake, "g", key + "b", "b")])
    rs = [r.completion(model="g", messages=MSGS) for _ in range(40)]
    got = ids(rs)
    assert set(got) == {"a", "b"} and min(got.values()) >= 5, got
    assert rs[0]._hidden_params["model_group"] == "g"
    assert fake.stats(key + "a")["requests"] + fake.stats(key + "b")["requests"] == 40
    assert r.get_model_names() == ["g"]


def test_weights(fake, key):
    r = llmux.Router(
        model_list=[dep(fake, "g", key + "a", "a", weight=1), dep(fake, "g", key + "b", "b", weight=9)]
    )
    got = ids(r.completion(model="g", messages=MSGS) for _ in range(100))
    assert got["b"] > got["a"] * 2, got


def test_retry_moves_to_a_healthy_deployment_and_cools_the_bad_one(fake, key):
    r = llmux.Router(
        model_list=[
            # Weighted so that it is picked first (and so met for sure).
            dep(fake, "g", key + "bad", "bad", faults={"status": 429}, weight=1000),
            dep(fake, "g", key + "ok", "ok"),
        ],
        num_retries=2,
        cooldown_time=30,
    )
    rs = [r.completion(model="g", messages=MSGS) for _ in range(10)]
    assert set(ids(rs)) == {"ok"}
    assert fake.stats(key + "bad")["requests"] == 1, "cooled down after its first 429"
    stats = {s["model_id"]: s for s in r.get_deployment_stats()}
    assert stats["bad"]["cooldown_remaining"] > 20
    assert stats["ok"]["successes"] == 10


def test_all_cooling_down_says_when_to_come_back(fake, key):
    r = llmux.Router(
        model_list=[dep(fake, "g", key, "only", faults={"status": 429})], num_retries=0, cooldown_time=30
    )
    with pytest.raises(llmux.RateLimitError):
        r.completion(model="g", messages=MSGS)
    with pytest.raises(llmux.RateLimitError, match="No deployments available") as ei:
        r.completion(model="g", messages=MSGS)
    assert 20 < ei.value.retry_after <= 30
    assert fake.stats(key)["requests"] == 1


def test_non_retryable_errors_are_not_retried(fake, key):
    r = llmux.Router(
        model_list=[
            dep(fake, "g", key, "a", faults={"status": 400}),
            dep(fake, "g", key, "b", faults={"status": 400}),
        ],
        num_retries=3,
    )
    with pytest.raises(llmux.BadRequestError):
        r.completion(model="g", messages=MSGS)
    assert fake.stats(key)["requests"] == 1


def test_fallbacks_by_kind(fake, key):
    r = llmux.Router(
        model_list=[
            dep(fake, "main", key + "m", "m", faults={"status": 500}),
            dep(fake, "small", key + "s", "s", faults={"error_code": "context_length_exceeded"}),
            dep(fake, "strict", key + "p", "p", faults={"error_code": "content_policy_violation"}),
            dep(fake, "backup", key + "b", "b"),
            dep(fake, "big", key + "big", "big"),
            dep(fake, "lenient", key + "l", "l"),
        ],
        num_retries=1,
        fallbacks=[{"main": ["backup"]}],
        context_window_fallbacks=[{"small": ["big"]}],
        content_policy_fallbacks=[{"strict": ["lenient"]}],
    )
    out = r.completion(model="main", messages=MSGS)
    assert out._hidden_params["model_id"] == "b"
    assert out._hidden_params["additional_headers"]["x-litellm-attempted-fallbacks"] == 1
    assert fake.stats(key + "m")["requests"] == 2, "the group's own retries first"
    assert r.completion(model="small", messages=MSGS)._hidden_params["model_id"] == "big"
    assert fake.stats(key + "s")["requests"] == 1, "a context error is not retried"
    assert r.completion(model="strict", messages=MSGS)._hidden_params["model_id"] == "l"


def test_mock_testing_fallbacks(fake, key):
    r = llmux.Router(
        model_list=[dep(fake, "a", key + "a", "a"), dep(fake, "b", key + "b", "b")], fallbacks=[{"a": ["b"]}]
    )
    out = r.completion(model="a", messages=MSGS, mock_testing_fallbacks=True)
    assert out._hidden_params["model_id"] == "b"
    assert fake.stats(key + "a")["requests"] == 0


def test_least_busy_balances_in_flight(fake, key):
    r = llmux.Router(
        model_list=[
            dep(fake, "g", key + "a", "a", faults={"delay_ms": 300}),
            dep(fake, "g", key + "b", "b", faults={"delay_ms": 300}),
        ],
        routing_strategy="least-busy",
    )

    async def go():
        return await asyncio.gather(*[r.acompletion(model="g", messages=MSGS) for _ in range(10)])

    got = ids(asyncio.run(go()))
    assert got["a"] == 5 and got["b"] == 5, got


def test_rpm_limits_are_hard(fake, key):
    r = llmux.Router(
        model_list=[dep(fake, "g", key + "a", "a", rpm=3), dep(fake, "g", key + "b", "b", rpm=2)]
    )
    got = ids(r.completion(model="g", messages=MSGS) for _ in range(5))
    assert got == {"a": 3, "b": 2}
    with pytest.raises(llmux.RateLimitError, match="No deployments available"):
        r.completion(model="g", messages=MSGS)


def test_tags_filter_deployments(fake, key):
    r = llmux.Router(
        model_list=[dep(fake, "g", key + "a", "a", tags=["eu"]), dep(fake, "g", key + "b", "b", tags=["us"])]
    )
    got = ids(r.completion(model="g", messages=MSGS, metadata={"tags": ["eu"]}) for _ in range(8))
    assert got == {"a": 8}


def test_streams_fail_over_before_the_first_chunk_only(fake, key):
    r = llmux.Router(
        model_list=[dep(fake, "g", key + "a", "a", faults={"status": 503}), dep(fake, "g", key + "b", "b")],
        routing_strategy="least-busy",
    )
    chunks = list(r.completion(model="g", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Hello!")
    r2 = llmux.Router(model_list=[dep(fake, "g", key + "c", "c", faults={"cut_after": 3})], num_retries=3)
    got = []
    with pytest.raises(llmux.APIConnectionError):
        for c in r2.completion(model="g", messages=MSGS, stream=True):
            got.append(c.choices[0].delta.content or "")
    assert len([g for g in got if g]) == 3
    assert fake.stats(key + "c")["requests"] == 1, "no silent restart after the first chunk"


async def test_async_stream_and_embeddings(fake, key):
    r = llmux.Router(
        model_list=[
            dep(fake, "g", key, "a"),
            dep(fake, "e", key, "emb", model="openai/text-embedding-3-small"),
        ]
    )
    s = await r.acompletion(model="g", messages=MSGS, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in s])
    assert text.startswith("Hello!")
    e = await r.aembedding(model="e", input=["a", "b"])
    assert len(e.data) == 2 and e._hidden_params["model_id"] == "emb"
    assert len(r.embedding(model="e", input="x").data) == 1


def test_retry_budget_stops_retry_storms(fake, key):
    r = llmux.Router(
        model_list=[
            dep(fake, "g", key + "a", "a", faults={"status": 500}),
            dep(fake, "g", key + "b", "b", faults={"status": 500}),
        ],
        num_retries=5,
        allowed_fails=1000,
        retry_budget={"ratio": 0.1, "min_per_window": 0, "window": 10},
    )
    for _ in range(20):
        with pytest.raises(llmux.InternalServerError):
            r.completion(model="g", messages=MSGS)
    sent = fake.stats(key + "a")["requests"] + fake.stats(key + "b")["requests"]
    assert sent <= 20 + 2, f"{sent} upstream attempts for 20 requests with a 10% budget"
    assert r.get_retry_budget()["exhausted"] > 0


def test_configuration_errors():
    with pytest.raises(llmux.BadRequestError, match="Invalid model name"):
        llmux.Router(
            model_list=[{"model_name": "g", "litellm_params": {"model": "gpt-4o", "mock_response": "x"}}]
        ).completion(model="nope", messages=MSGS)
    with pytest.raises(ValueError, match="redis_password"):
        llmux.Router(model_list=[], redis_password="x")
    with pytest.raises(TypeError, match="cache_responses"):
        llmux.Router(model_list=[], cache_responses=True)
    with pytest.raises(ValueError, match="routing_strategy"):
        llmux.Router(model_list=[], routing_strategy="fastest")
    with pytest.raises(ValueError, match="not in model_list"):
        llmux.Router(
            model_list=[{"model_name": "g", "litellm_params": {"model": "gpt-4o"}}],
            fallbacks=[{"g": ["missing"]}],
        )


def test_mock_response_in_litellm_params():
    r = llmux.Router(
        model_list=[{"model_name": "g", "litellm_params": {"model": "gpt-4o", "mock_response": "canned"}}]
    )
    assert r.completion(model="g", messages=MSGS).choices[0].message.content == "canned"


def test_a_stream_left_early_is_no_longer_in_flight(fake, key):
    import time

    r = llmux.Router(model_list=[dep(fake, "g", key, "only", faults={"chunk_delay_ms": 50})])
    s = r.completion(model="g", messages=MSGS, stream=True)
    next(iter(s))
    assert r.get_deployment_stats()[0]["in_flight"] == 1
    s.close()
    deadline = time.monotonic() + 3
    while r.get_deployment_stats()[0]["in_flight"] != 0:
        assert time.monotonic() < deadline, "a closed stream still counts as in flight"
        time.sleep(0.02)


def test_a_deployments_own_prices_decide_its_cost(fake, key):
    priced = dep(fake, "p", key, "p", input_cost_per_token=0.001, output_cost_per_token=0.002)
    r = llmux.Router(model_list=[priced, dep(fake, "table", key + "t", "t")])
    out = r.completion(model="p", messages=MSGS)
    u = out.usage
    assert out._hidden_params["response_cost"] == pytest.approx(
        u.prompt_tokens * 0.001 + u.completion_tokens * 0.002
    )
    emb = r.embedding(model="p", input="a b c")
    assert emb._hidden_params["response_cost"] == pytest.approx(emb.usage.prompt_tokens * 0.001)
    # Without prices of its own, the price table's (gpt-4o-mini) applies.
    table = r.completion(model="table", messages=MSGS)._hidden_params["response_cost"]
    assert 0 < table < out._hidden_params["response_cost"] / 100
