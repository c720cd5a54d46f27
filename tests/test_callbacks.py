"""Callbacks: LiteLLM's surface, run off the request path."""

from __future__ import annotations

import asyncio
import datetime
import queue
import threading

import pytest

import llmux
from llmux import _callbacks

from conftest import MSGS, hdr


@pytest.fixture(autouse=True)
def clean_callbacks():
    yield
    llmux.flush_callbacks(5)
    llmux.callbacks = []
    llmux.success_callback = []
    llmux.failure_callback = []
    llmux.input_callback = []


class Recorder(llmux.CustomLogger):
    def __init__(self):
        self.events = []

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append(("success", kwargs, response_obj, start_time, end_time))

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append(("failure", kwargs, response_obj, start_time, end_time))

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append(("async_success", kwargs, response_obj, start_time, end_time))

    def log_stream_event(self, kwargs, response_obj, start_time, end_time):
        self.events.append(("chunk", kwargs, response_obj, start_time, end_time))


def kinds(rec):
    return sorted(e[0] for e in rec.events)


def test_function_callback_shape_like_litellm(fake):
    got = []
    llmux.success_callback = [lambda kw, resp, start, end: got.append((kw, resp, start, end))]
    r = llmux.completion(
        model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, temperature=0.1, metadata={"tags": ["t1"]}
    )
    assert llmux.flush_callbacks(5)
    ((kw, resp, start, end),) = got
    assert resp is r
    assert isinstance(start, datetime.datetime) and isinstance(end, datetime.datetime) and end >= start
    assert kw["model"] == "gpt-4o-mini" and kw["messages"] == MSGS
    assert kw["optional_params"] == {"temperature": 0.1}
    slo = kw["standard_logging_object"]
    assert slo["status"] == "success" and slo["total_tokens"] == r.usage.total_tokens
    assert slo["response_cost"] == pytest.approx(r._hidden_params["response_cost"])
    assert slo["request_tags"] == ["t1"] and slo["custom_llm_provider"] == "openai"
    for secret_place in (kw, kw["litellm_params"], slo):
        assert "api_key" not in secret_place
    # Our keys are a subset of LiteLLM's for the same call (recorded from litellm 1.110.2).
    litellm_kwargs = {
        "cache_hit",
        "call_type",
        "custom_llm_provider",
        "end_time",
        "litellm_call_id",
        "litellm_params",
        "messages",
        "model",
        "model_id",
        "optional_params",
        "response_cost",
        "standard_logging_object",
        "start_time",
        "stream",
    }
    assert set(kw) <= litellm_kwargs | {"exception"}
    litellm_slo = {
        "api_base",
        "cache_hit",
        "call_type",
        "completion_tokens",
        "custom_llm_provider",
        "endTime",
        "error_information",
        "error_str",
        "hidden_params",
        "id",
        "litellm_call_id",
        "messages",
        "metadata",
        "model",
        "model_group",
        "model_id",
        "prompt_tokens",
        "request_tags",
        "response",
        "response_cost",
        "response_time",
        "startTime",
        "status",
        "stream",
        "total_tokens",
    }
    assert set(slo) <= litellm_slo


def test_logger_sync_and_async_fire_for_sync_and_async_calls(fake):
    rec = Recorder()
    llmux.callbacks = [rec]
    llmux.completion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url)
    asyncio.run(llmux.acompletion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url))
    assert llmux.flush_callbacks(5)
    deadline = 50
    while kinds(rec).count("async_success") < 2 and deadline:
        threading.Event().wait(0.02)
        deadline -= 1
    assert kinds(rec) == ["async_success", "async_success", "success", "success"]


def test_failure_event_carries_the_exception(fake, key):
    rec = Recorder()
    llmux.callbacks = [rec]
    failures = []
    llmux.failure_callback = [lambda kw, resp, s, e: failures.append(kw)]
    with pytest.raises(llmux.RateLimitError):
        llmux.completion(
            model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key, status=429)
        )
    assert llmux.flush_callbacks(5)
    ((kind, kw, resp, _, _),) = [e for e in rec.events if e[0] == "failure"]
    assert resp is None and isinstance(kw["exception"], llmux.RateLimitError)
    assert kw["standard_logging_object"]["status"] == "failure"
    assert kw["standard_logging_object"]["error_information"]["error_code"] == 429
    assert len(failures) == 1


def test_stream_events_and_final_success(fake):
    rec = Recorder()
    llmux.callbacks = [rec]
    chunks = list(llmux.completion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, stream=True))
    assert llmux.flush_callbacks(5)
    assert kinds(rec).count("chunk") == len(chunks)
    ((_, kw, built, _, _),) = [e for e in rec.events if e[0] == "success"]
    assert built.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in chunks)
    assert kw["standard_logging_object"]["total_tokens"] == built.usage.total_tokens > 0


def test_raising_and_slow_callbacks_do_not_touch_requests(fake):
    release = threading.Event()
    seen = []

    def slow(kw, resp, s, e):
        release.wait(10)
        seen.append(1)

    def boom(kw, resp, s, e):
        raise RuntimeError("callback bug")

    before = _callbacks.stats()["failed"]
    llmux.success_callback = [boom, slow]
    rs = [llmux.completion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url) for _ in range(5)]
    assert all(r.choices for r in rs)
    assert seen == [], "the requests finished while the slow callback was still blocked"
    release.set()
    assert llmux.flush_callbacks(5)
    assert len(seen) == 5
    assert _callbacks.stats()["failed"] - before == 5


def test_full_queue_drops_and_counts(fake, monkeypatch):
    release = threading.Event()
    llmux.success_callback = [lambda *a: release.wait(10)]
    monkeypatch.setattr(_callbacks, "_queue", queue.Queue(maxsize=2))
    llmux.completion(model="gpt-4o-mini", messages=MSGS, mock_response="x")  # occupies the worker
    threading.Event().wait(0.1)
    before = _callbacks.stats()["dropped"]
    for _ in range(5):
        llmux.completion(model="gpt-4o-mini", messages=MSGS, mock_response="x")
    assert _callbacks.stats()["dropped"] - before >= 3
    release.set()


class Hooks(llmux.CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        if "forbidden" in data["messages"][-1]["content"]:
            return "this request is not allowed"
        data["messages"] = data["messages"] + [{"role": "user", "content": "(added by hook)"}]
        return data


def test_pre_call_hook_modifies_and_rejects(fake, key):
    llmux.callbacks = [Hooks()]
    llmux.completion(model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key))
    assert fake.stats(key)["last_body"]["messages"][-1]["content"] == "(added by hook)"
    with pytest.raises(llmux.RejectedRequestError, match="not allowed"):
        llmux.completion(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "forbidden"}], api_base=fake.base_url
        )

    async def go():
        with pytest.raises(llmux.RejectedRequestError):
            await llmux.acompletion(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "forbidden"}],
                api_base=fake.base_url,
            )
        await llmux.acompletion(
            model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key)
        )

    asyncio.run(go())
    assert fake.stats(key)["requests"] == 2
