"""Built-in hooks from Python: the spend budget (in process and shared through Redis) and the
redacted request log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from redis_server import RedisServer

import llmux

from conftest import MSGS, hdr

COST = 0.000225  # a mock gpt-4o answer: 10 prompt + 20 completion tokens


@pytest.fixture(autouse=True)
def no_budget():
    yield
    llmux.max_budget = None
    llmux.set_budget(None)
    llmux.set_request_log(None)


def test_max_budget_like_litellm():
    llmux.max_budget = 0.0005
    for _ in range(3):  # spent 0, 0.000225, 0.00045: each still under the limit
        llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi")
    with pytest.raises(llmux.BudgetExceededError, match="Budget has been exceeded"):
        llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi")
    assert llmux.current_spend() == pytest.approx(3 * COST)
    llmux.max_budget = None
    assert llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi").choices


def test_per_user_budgets():
    llmux.set_budget(0.0003, per_user=True)
    llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi", user="alice")
    llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi", user="alice")
    with pytest.raises(llmux.BudgetExceededError):
        llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi", user="alice")
    assert llmux.completion(model="gpt-4o", messages=MSGS, mock_response="hi", user="bob").choices
    assert llmux.current_spend("alice") == pytest.approx(2 * COST)


WORKER = """
import json, sys, llmux
llmux.set_budget(0.001, redis_url=sys.argv[1])
out = []
for _ in range(8):
    try:
        llmux.completion(model="gpt-4o", messages=[{"role": "user", "content": "x"}], mock_response="hi")
        out.append("ok")
    except llmux.BudgetExceededError:
        out.append("over")
print(json.dumps(out))
"""


def test_budget_is_shared_by_processes_on_one_redis():
    with RedisServer() as redis:
        procs = [
            subprocess.Popen([sys.executable, "-c", WORKER, redis.url], stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    admitted = sum(o.count("ok") for o in outs)
    # 0.001 / 0.000225: calls are admitted while the spend is under the limit, i.e. 5 in all
    # (one more may slip in while the other process's last call is being charged).
    assert 5 <= admitted <= 6, outs
    assert all(o.count("ok") + o.count("over") == 8 for o in outs)


def test_request_log_is_redacted(fake, key, tmp_path):
    log = tmp_path / "requests.jsonl"
    llmux.set_request_log(str(log))
    secret = "sk-live-abcdefghijklmnop"
    llmux.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"my key is {secret}, keep it"}],
        api_base=fake.base_url,
        api_key="sk-caller-secret-0001",
        extra_headers=hdr(key),
        temperature=0.3,
    )
    with pytest.raises(llmux.RateLimitError):
        llmux.completion(
            model="gpt-4o-mini", messages=MSGS, api_base=fake.base_url, extra_headers=hdr(key, status=429)
        )
    text = log.read_text()
    assert secret not in text and "sk-caller-secret" not in text
    ok, failed = [json.loads(line) for line in text.splitlines()]
    assert ok["status"] == "success" and "[REDACTED]" in ok["request"]["messages"][0]["content"]
    assert ok["request"]["params"]["temperature"] == 0.3
    assert ok["response"]["usage"]["total_tokens"] > 0 and ok["latency_ms"] > 0
    assert failed["status"] == "failure" and failed["error"]["kind"] == "rate_limited"
    assert os.path.getsize(log) > 0


def test_streams_are_charged_to_the_budget(fake):
    import time

    llmux.set_budget(0.0003)
    for _ in range(2):
        chunks = list(
            llmux.completion(model="openai/gpt-4o", messages=MSGS, api_base=fake.base_url, stream=True)
        )
        assert chunks
        deadline = time.monotonic() + 5
        while not llmux.current_spend():
            assert time.monotonic() < deadline, "the stream was never charged"
            time.sleep(0.01)
    time.sleep(0.1)
    assert llmux.current_spend() > 0.0003
    with pytest.raises(llmux.BudgetExceededError):
        llmux.completion(model="openai/gpt-4o", messages=MSGS, api_base=fake.base_url, stream=True)
