"""Four OS processes x 16 concurrent callers on one key for two minutes, offering ten times the
limit through one Redis: every 60-second window admits at most L + burst, and the total is
within 1% of what the limit allows."""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import time

import pytest
from redis_server import RedisServer

WORKER = os.path.join(os.path.dirname(__file__), "limit_worker.py")

LIMIT = 600  # requests per minute
BURST = 60
PROCESSES = 4
CALLERS = 16
DURATION = 120.0
# Send times are read on the client, a millisecond or so before Redis admits: a window is
# counted over 60 s minus this skew.
SKEW = 0.02


def run_workers(fake, key, limit, burst, processes, callers, offered_per_minute, duration):
    """Runs ``processes`` workers of ``callers`` each on one Redis, offering
    ``offered_per_minute`` in all for ``duration`` seconds on a limit of ``limit`` per minute
    plus ``burst``. Returns the sorted send times of the admitted calls, the number refused, and
    the calls admitted from blocks."""
    with RedisServer() as redis:
        start = time.time() + 3.0
        cfg = {
            "rate_limit": {
                "requests_per_minute": limit,
                "request_burst": burst,
                "distributed": True,
                "key_strategy": "model",
                "on_redis_failure": "closed",
            },
            "redis": {"url": redis.url, "command_timeout": 2},
            "base_url": fake.base_url,
            "key": key,
            "callers": callers,
            "interval": 60.0 * processes * callers / offered_per_minute,
            "start_at": start,
            "stop_at": start + duration,
        }
        procs = [
            subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
            for _ in range(processes)
        ]
        admitted: list = []
        refused = prefetched = 0
        for p in procs:
            out, _ = p.communicate(timeout=duration + 60)
            assert p.returncode == 0, out
            r = json.loads(out.strip().splitlines()[-1])
            admitted += r["admitted"]
            refused += r["refused"]
            prefetched += r["stats"]["prefetched"]
            assert r["stats"]["redis_errors"] == 0, r["stats"]
    admitted.sort()
    return admitted, refused, prefetched


def busiest(admitted, window):
    """The most calls admitted in any ``window`` seconds (less the send-time skew)."""
    return max(bisect.bisect_left(admitted, t + window - SKEW) - i for i, t in enumerate(admitted))


@pytest.mark.timeout(DURATION + 120)
def test_four_processes_share_one_limit_exactly(fake, key):
    admitted, refused, _ = run_workers(fake, key, LIMIT, BURST, PROCESSES, CALLERS, 10 * LIMIT, DURATION)
    worst = busiest(admitted, 60.0)
    allowed = BURST + LIMIT * DURATION / 60.0
    total = len(admitted)
    print(
        f"\n{PROCESSES} processes x {CALLERS} callers, {DURATION:.0f} s, limit {LIMIT}/min + burst {BURST}: "
        f"offered {total + refused}, admitted {total} (allowed {allowed:.0f}, "
        f"{100.0 * (total - allowed) / allowed:+.2f}%), busiest 60 s window {worst} (bound {LIMIT + BURST})"
    )
    assert total + refused >= 9 * allowed, "the offered load was not ten times the limit"
    assert worst <= LIMIT + BURST
    assert abs(total - allowed) <= 0.01 * allowed
    assert fake.stats(key)["requests"] == total


@pytest.mark.timeout(120)
def test_blocks_across_processes_keep_the_limit(fake, key):
    """Two OS processes x 32 callers offering twice a fast limit (1000 a second, burst 3000):
    while the bucket is under half full they admit from blocks fetched ahead, and still every
    5-second window admits at most burst + 5 s of the rate, and the total is what the limit
    allows."""
    limit, burst, procs_n, callers, duration = 60_000, 3000, 2, 32, 12.0
    admitted, refused, prefetched = run_workers(
        fake, key, limit, burst, procs_n, callers, 2 * limit, duration
    )
    window = 5.0
    worst = busiest(admitted, window)
    bound = burst + 1 + limit * window / 60.0
    allowed = burst + limit * duration / 60.0
    total = len(admitted)
    print(
        f"\nblocks: {procs_n} processes x {callers} callers, {duration:.0f} s, limit {limit}/min + burst "
        f"{burst}: offered {total + refused}, admitted {total} ({prefetched} from blocks; allowed "
        f"{allowed:.0f}), busiest {window:.0f} s window {worst} (bound {bound:.0f})"
    )
    assert prefetched > 0, "no call was admitted from a block"
    assert refused > 0, "the limit was never reached"
    assert worst <= bound
    assert total <= allowed + 1
    # What blocks leave unused comes out of the burst while it is under half full: a little.
    assert total >= 0.97 * allowed
    assert fake.stats(key)["requests"] == total
