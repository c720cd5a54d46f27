"""Several OS processes routing through one Redis act as one router."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from redis_server import RedisServer

import llmux

from conftest import MSGS

WORKER = os.path.join(os.path.dirname(__file__), "router_worker.py")


@pytest.fixture(scope="module")
def redis():
    with RedisServer() as r:
        yield r


def dep(fake, group, key, dep_id, **extra):
    faults = extra.pop("faults", {})
    headers = {"x-fake-key": key, **{"x-fake-" + k.replace("_", "-"): str(v) for k, v in faults.items()}}
    params = {
        "model": "openai/gpt-4o-mini",
        "api_base": fake.base_url,
        "api_key": "sk-x",
        "extra_headers": headers,
    }
    params.update(extra)
    return {"model_name": group, "litellm_params": params, "model_info": {"id": dep_id}}


def spawn(cfg):
    return subprocess.Popen(
        [sys.executable, WORKER, json.dumps(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def results(procs, timeout=60):
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, stdout
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_least_busy_balances_in_flight_across_processes(fake, redis, key):
    model_list = [dep(fake, "g", f"{key}-{i}", f"d{i}", faults={"delay_ms": 1500}) for i in range(3)]
    start = time.time() + 2.0
    procs = [
        spawn(
            {
                "model_list": model_list,
                "router": {"routing_strategy": "least-busy", "redis_url": redis.url},
                "mode": "seq",
                "group": "g",
                "start_at": start + i * 0.15,
            }
        )
        for i in range(6)
    ]
    got = Counter(r[0] for r in results(procs))
    # Each process alone sees nothing in flight and would pick at random; together they see
    # every in-flight request and fill the deployments evenly.
    assert got == {"d0": 2, "d1": 2, "d2": 2}, got


def test_a_cooldown_set_by_one_process_is_seen_by_another_at_once(fake, redis, key):
    model_list = [
        dep(fake, "g", key + "-x", "x", faults={"status": 429}),
        dep(fake, "g", key + "-y", "y"),
        {"model_name": "warm", "litellm_params": {"model": "gpt-4o", "mock_response": "ok"}},
    ]
    settings = {"redis_url": redis.url, "num_retries": 0, "cooldown_time": 30}
    other = spawn({"model_list": model_list, "router": settings, "mode": "stdin", "group": "g"})
    assert other.stdout.readline().strip() == "READY"
    other.stdin.write("warm\n")
    other.stdin.flush()
    assert json.loads(other.stdout.readline())  # warmed up: connected, nothing routed to g yet
    here = llmux.Router(model_list=model_list, **settings)
    for _ in range(50):
        try:
            here.completion(model="g", messages=MSGS)
        except llmux.RateLimitError:
            break
    else:
        raise AssertionError("deployment x was never picked")
    assert fake.stats(key + "-x")["requests"] == 1
    t0 = time.monotonic()
    other.stdin.write("g\n" * 20)
    other.stdin.flush()
    first = json.loads(other.stdout.readline())
    assert time.monotonic() - t0 < 0.1 + 0.1, "the other process answered late"
    rest = [json.loads(other.stdout.readline()) for _ in range(19)]
    other.stdin.close()
    other.wait(10)
    assert [first, *rest] == ["y"] * 20
    assert fake.stats(key + "-x")["requests"] == 1, "the other process never tried the cooled-down deployment"


def wait_for_fresh_minute():
    # Per-minute usage windows: start well inside a minute so the test does not straddle two.
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def test_tpm_limit_holds_across_processes(fake, redis, key):
    wait_for_fresh_minute()
    model_list = [dep(fake, "g", key, "only", tpm=100)]
    cfg = {
        "model_list": model_list,
        "router": {"routing_strategy": "usage-based-routing-v2", "redis_url": redis.url, "num_retries": 0},
        "mode": "seq",
        "group": "g",
        "n": 5,
        "pause": 0.05,
        "kwargs": {"max_tokens": 20},
        "start_at": time.time() + 1.5,
    }
    out = results([spawn(cfg), spawn(cfg)])
    admitted = sum(r == "only" for rs in out for r in rs)
    refused = sum(r == "RateLimitError" for rs in out for r in rs)
    # Each call uses 24 tokens and is admitted while used + 21 (its estimate) <= 100: 4 calls
    # in the minute, plus at most one admitted concurrently before the other settled.
    assert 4 <= admitted <= 5, out
    assert admitted + refused == 10
    assert fake.stats(key)["requests"] == admitted


def test_a_killed_process_leaves_no_phantom_in_flight(fake, redis, key):
    model_list = [dep(fake, "g", key, "only", faults={"delay_ms": 20000})]
    settings = {"redis_url": redis.url, "stats_lease_ttl": 2}
    victim = spawn({"model_list": model_list, "router": settings, "mode": "hold", "group": "g"})
    assert victim.stdout.readline().strip() == "STARTED"
    watcher = llmux.Router(model_list=model_list, **settings)

    def in_flight():
        return next(s["in_flight"] for s in watcher.get_deployment_stats() if s["model_id"] == "only")

    deadline = time.monotonic() + 5
    while in_flight() != 1:
        assert time.monotonic() < deadline, "the victim's request never showed as in flight"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    while in_flight() != 0:
        assert time.monotonic() - killed_at < 5, "the dead process's lease never expired"
        time.sleep(0.1)


def test_upstream_outage_no_retry_storm_and_traffic_moves(fake, key):
    """One deployment answers 503 for the whole run: the upstream sees at most the budget's
    share of retries above the offered requests, and traffic moves to the healthy one."""
    seconds = float(os.environ.get("LLMUX_OUTAGE_SECONDS", "30"))
    r = llmux.Router(
        model_list=[
            dep(fake, "g", key + "-down", "down", faults={"status": 503}),
            dep(fake, "g", key + "-up", "up"),
        ],
        num_retries=3,
        allowed_fails=3,
        cooldown_time=5,
        retry_budget={"ratio": 0.2, "min_per_window": 3, "window": 10},
    )
    offered = ok = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        offered += 1
        try:
            r.completion(model="g", messages=MSGS)
            ok += 1
        except llmux.ServiceUnavailableError:
            pass
        time.sleep(0.01)
    down = fake.stats(key + "-down")["requests"]
    up = fake.stats(key + "-up")["requests"]
    assert down + up <= offered * 1.2 + 3 * (seconds / 10 + 1), (offered, down, up)
    assert up >= offered * 0.9, (offered, down, up)
    assert ok >= offered * 0.95
    print(f"outage: offered={offered} upstream attempts={down + up} (down={down}, up={up}) ok={ok}")
