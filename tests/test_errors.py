"""Errors from the fake upstream mapped to LiteLLM's classes; retries; cancellation."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import pytest

import llmux
from llmux import _llmux

from conftest import MSGS, hdr


def call(fake, key, **kw):
    headers = hdr(key, **kw.pop("faults", {}))
    return llmux.completion(
        model="openai/gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=headers, **kw
    )


# (faults, expected class, status, kind, retryable)
CASES = [
    ({"status": 400}, llmux.BadRequestError, 400, "bad_request"),
    ({"status": 401}, llmux.AuthenticationError, 401, "authentication"),
    ({"status": 403}, llmux.PermissionDeniedError, 403, "permission_denied"),
    ({"status": 404}, llmux.NotFoundError, 404, "not_found"),
    ({"status": 408}, llmux.Timeout, 408, "timeout"),
    ({"status": 409}, llmux.APIError, 409, "api_error"),
    ({"status": 422}, llmux.UnprocessableEntityError, 422, "unprocessable_entity"),
    ({"status": 429}, llmux.RateLimitError, 429, "rate_limited"),
    ({"status": 429, "error_code": "insufficient_quota"}, llmux.RateLimitError, 429, "quota_exceeded"),
    (
        {"status": 400, "error_code": "context_length_exceeded"},
        llmux.ContextWindowExceededError,
        400,
        "context_window_exceeded",
    ),
    (
        {"status": 400, "error_code": "content_policy_violation"},
        llmux.ContentPolicyViolationError,
        400,
        "content_policy_violation",
    ),
    ({"status": 404, "error_code": "model_not_found"}, llmux.NotFoundError, 404, "not_found"),
    ({"status": 500}, llmux.InternalServerError, 500, "internal"),
    ({"status": 502}, llmux.BadGatewayError, 502, "bad_gateway"),
    ({"status": 503}, llmux.ServiceUnavailableError, 503, "service_unavailable"),
    ({"status": 529}, llmux.ServiceUnavailableError, 529, "service_unavailable"),
    ({"status": 504}, llmux.Timeout, 504, "timeout"),
    ({"status": 502, "html": 1}, llmux.BadGatewayError, 502, "bad_gateway"),
    ({"malformed": 1}, llmux.APIResponseValidationError, 502, "invalid_response"),
]


@pytest.mark.parametrize("faults,cls,status,kind", CASES, ids=[c[3] + "-" + str(c[2]) for c in CASES])
def test_error_kinds_map_to_litellm_classes(fake, key, faults, cls, status, kind):
    with pytest.raises(cls) as ei:
        call(fake, key, faults=faults)
    e = ei.value
    assert type(e).__name__ == cls.__name__
    assert e.status_code == status
    assert e.kind == kind
    assert e.llm_provider == "openai"
    assert e.model == "gpt-4o-mini"
    assert str(e).startswith(f"llmux.{cls.__name__}: ")
    assert "OpenAIException" in e.message


def test_html_error_is_reported_with_an_excerpt(fake, key):
    with pytest.raises(llmux.BadGatewayError) as ei:
        call(fake, key, faults={"status": 502, "html": 1})
    assert "non-JSON body (text/html" in ei.value.message
    assert "Bad Gateway" in ei.value.message and "<" not in ei.value.message


def test_mapping_is_total():
    kinds = _llmux.error_kinds()
    assert len(kinds) == len({k for k, *_ in kinds}) >= 19
    for code, cls_name, retryable, _status in kinds:
        assert hasattr(llmux.exceptions, cls_name), cls_name
        if code in ("quota_exceeded", "authentication", "bad_request", "content_policy_violation"):
            assert not retryable, code


def test_connection_refused_is_api_connection_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(llmux.APIConnectionError) as ei:
        llmux.completion(model="gpt-4o-mini", messages=MSGS, api_base=f"http://127.0.0.1:{port}/v1")
    assert ei.value.kind == "connection"


def test_timeout(fake, key):
    t0 = time.monotonic()
    with pytest.raises(llmux.Timeout):
        call(fake, key, faults={"delay_ms": 3000}, timeout=0.3)
    assert time.monotonic() - t0 < 2.5


def test_bad_input_is_classified_without_network():
    with pytest.raises(llmux.BadRequestError, match="LLM Provider NOT provided"):
        llmux.completion(model="nosuchprovider/model", messages=MSGS)
    with pytest.raises(llmux.BadRequestError, match="messages"):
        llmux.completion(model="gpt-4o-mini", messages=[], api_key="sk-x")
    with pytest.raises(TypeError, match="messages"):
        llmux.completion(model="gpt-4o-mini", messages="hi", api_key="sk-x")
    with pytest.raises(TypeError, match="timeout"):
        llmux.completion(model="gpt-4o-mini", messages=MSGS, timeout="soon")


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    with pytest.raises(llmux.AuthenticationError, match="GROQ_API_KEY"):
        llmux.completion(model="groq/llama-3.1-8b-instant", messages=MSGS)


def test_secret_never_in_errors(fake, key):
    secret = "sk-supersecret-value-1234"
    with pytest.raises(llmux.AuthenticationError) as ei:
        llmux.completion(
            model="gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            api_key=secret,
            extra_headers=hdr(key, status=401, error_message=f"Incorrect API key provided: {secret}"),
        )
    e = ei.value
    assert secret not in str(e) and secret not in repr(e) and secret not in e.message
    assert secret not in repr(e.__dict__)


# --- retries ---------------------------------------------------------------------------


def test_retries_until_success(fake, key):
    r = call(fake, key, faults={"status": 503, "fail_times": 2}, num_retries=3)
    assert r.choices[0].message.content
    assert r._hidden_params["attempts"] == 3
    assert fake.stats(key)["requests"] == 3


def test_retries_exhausted_reports_attempts(fake, key):
    with pytest.raises(llmux.InternalServerError) as ei:
        call(fake, key, faults={"status": 500}, num_retries=2)
    assert ei.value.attempts == 3
    assert fake.stats(key)["requests"] == 3


@pytest.mark.parametrize(
    "faults",
    [
        {"status": 429, "error_code": "insufficient_quota"},
        {"status": 401},
        {"status": 400},
        {"status": 400, "error_code": "content_policy_violation"},
    ],
    ids=["quota", "auth", "bad_request", "content_policy"],
)
def test_never_retried(fake, key, faults):
    with pytest.raises((llmux.RateLimitError, llmux.AuthenticationError, llmux.BadRequestError)) as ei:
        call(fake, key, faults=faults, num_retries=3)
    assert ei.value.attempts == 1
    assert fake.stats(key)["requests"] == 1


def test_retry_waits_at_least_the_hint(fake, key):
    t0 = time.monotonic()
    r = call(fake, key, faults={"status": 429, "fail_times": 1, "retry_after_ms": 400}, num_retries=2)
    assert r.choices
    assert time.monotonic() - t0 >= 0.4
    assert fake.stats(key)["requests"] == 2


def test_retry_after_seconds_header(fake, key):
    t0 = time.monotonic()
    call(fake, key, faults={"status": 503, "fail_times": 1, "retry_after": 1}, num_retries=1)
    assert time.monotonic() - t0 >= 1.0


def test_hint_longer_than_timeout_surfaces_at_once(fake, key):
    t0 = time.monotonic()
    with pytest.raises(llmux.RateLimitError) as ei:
        call(fake, key, faults={"status": 429, "retry_after": 30}, num_retries=5, timeout=3)
    assert time.monotonic() - t0 < 2.0
    assert ei.value.retry_after == pytest.approx(30.0)
    assert fake.stats(key)["requests"] == 1


async def test_async_retries(fake, key):
    r = await llmux.acompletion(
        model="gpt-4o-mini",
        messages=MSGS,
        api_base=fake.base_url,
        num_retries=2,
        extra_headers=hdr(key, status=502, fail_times=1),
    )
    assert r.choices and fake.stats(key)["requests"] == 2


def test_stream_open_is_retried(fake, key):
    chunks = list(
        llmux.completion(
            model="gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            stream=True,
            num_retries=2,
            extra_headers=hdr(key, status=503, fail_times=1),
        )
    )
    assert chunks and fake.stats(key)["requests"] == 2


# --- streams that fail ------------------------------------------------------------------


def test_stream_cut_is_a_classified_error_not_a_short_answer(fake, key):
    got = []
    with pytest.raises(llmux.APIConnectionError) as ei:
        for c in llmux.completion(
            model="gpt-4o-mini",
            messages=MSGS,
            api_base=fake.base_url,
            stream=True,
            extra_headers=hdr(key, cut_after=3),
        ):
            got.append(c.choices[0].delta.content or "")
    assert len([g for g in got if g]) == 3
    assert "stream" in ei.value.message


async def test_in_stream_error_event(fake, key):
    s = await llmux.acompletion(
        model="gpt-4o-mini",
        messages=MSGS,
        api_base=fake.base_url,
        stream=True,
        extra_headers=hdr(key, stream_error_after=2),
    )
    n = 0
    with pytest.raises(llmux.InternalServerError, match="error in stream"):
        async for _ in s:
            n += 1
    assert n >= 2


# --- cancellation frees the connection ----------------------------------------------------


def wait_for(pred, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


async def test_cancelling_the_task_closes_the_connection(fake, key):
    task = asyncio.ensure_future(
        llmux.acompletion(
            model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key, delay_ms=5000)
        )
    )
    await asyncio.sleep(0.3)
    assert fake.stats(key)["requests"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(wait_for, lambda: fake.stats(key)["aborted"] == 1)


async def test_breaking_out_of_an_async_stream_closes_it(fake, key):
    s = await llmux.acompletion(
        model="gpt-4o-mini",
        messages=MSGS,
        api_base=fake.base_url,
        stream=True,
        extra_headers=hdr(key, chunk_delay_ms=100),
    )
    async for _ in s:
        break
    await s.aclose()
    assert await asyncio.to_thread(wait_for, lambda: fake.stats(key)["aborted"] == 1)
    assert fake.stats(key)["completed"] == 0


def test_closing_a_sync_stream_early_closes_it(fake, key):
    with llmux.completion(
        model="gpt-4o-mini",
        messages=MSGS,
        api_base=fake.base_url,
        stream=True,
        extra_headers=hdr(key, chunk_delay_ms=100),
    ) as s:
        next(iter(s))
    assert wait_for(lambda: fake.stats(key)["aborted"] == 1)


def test_ctrl_c_interrupts_a_sync_call(fake, key, tmp_path):
    script = tmp_path / "sigint.py"
    script.write_text(
        "import os, signal, threading, time, llmux\n"
        # A runner that starts tests in the background hands them SIGINT ignored; Ctrl-C is
        # what is tested, so restore Python's own handler.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
        "t0 = time.monotonic()\n"
        "try:\n"
        f"    llmux.completion(model='gpt-4o-mini', messages=[{{'role':'user','content':'x'}}], api_base='{fake.base_url}',"
        f" api_key='sk-x', extra_headers={{'x-fake-key': '{key}', 'x-fake-delay-ms': '20000'}})\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', round(time.monotonic() - t0, 1))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=15)
    assert out.stdout.startswith("interrupted"), out.stdout + out.stderr
    assert float(out.stdout.split()[1]) < 5
    assert wait_for(lambda: fake.stats(key)["aborted"] == 1)
