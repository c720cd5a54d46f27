"""What rate limiting costs: llmux.acompletion throughput with no limit, with an in-process
limit, and with a distributed limit in Redis (rpm + tpm + parallel requests, with blocks
fetched ahead, the default, and with every call decided in Redis, `prefetch_ms: 0`; rpm + tpm;
rpm only), every limit high enough never to refuse, so every call is admitted (and settled when
it has tokens or a parallel slot to give back).

Each configuration runs in its own interpreter against one fake upstream, at concurrency 64,
after a warm-up; the table gives requests/s and the ratio to the run without a limit. The
Redis run uses a redis-server started here on a free port (or REDIS_URL).

    python benches/rate_limit_overhead.py [--duration 8] [--warmup 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, sys, time
    import llmux

    base, mode, redis_url = sys.argv[1], sys.argv[2], sys.argv[3]
    warm, dur, conc = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    rpm = {"requests_per_minute": 10**9}
    tpm = {**rpm, "tokens_per_minute": 10**12}
    full = {**tpm, "max_parallel_requests": 10**6}
    shared = {"distributed": True, "on_redis_failure": "closed"}
    if mode == "local":
        llmux.set_rate_limit(full)
    elif mode == "redis":
        llmux.set_rate_limit({**full, **shared}, {"url": redis_url})
    elif mode == "redis-each":
        llmux.set_rate_limit({**full, **shared, "prefetch_ms": 0}, {"url": redis_url})
    elif mode == "redis-rpm-tpm":
        llmux.set_rate_limit({**tpm, **shared}, {"url": redis_url})
    elif mode == "redis-rpm-only":
        llmux.set_rate_limit({**rpm, **shared}, {"url": redis_url})
    msgs = [{"role": "user", "content": "hi"}]

    async def worker(stop, counts):
        while time.perf_counter() < stop:
            await llmux.acompletion(model="openai/gpt-4o-mini", messages=msgs, api_base=base, api_key="sk-x")
            counts[0] += 1

    async def run(seconds):
        counts = [0]
        stop = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(stop, counts) for _ in range(conc)])
        return counts[0] / (time.perf_counter() - t0), counts[0]

    asyncio.run(run(warm))
    stats = llmux.rate_limit_stats()
    before = stats["admitted"] if stats else 0
    pref_before = stats.get("prefetched", 0) if stats else 0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    rate, n = asyncio.run(run(dur))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_us = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1e6 / n
    sleeps = (r1.ru_nvcsw - r0.ru_nvcsw) / n
    stats = llmux.rate_limit_stats()
    if stats is not None:
        assert stats["redis_errors"] == 0 and stats["denied"] == 0, stats
    calls = stats.get("script_calls", 0) if stats else 0
    per_call = (stats["admitted"] - before) and stats["admitted"] / calls if calls else None
    blocks = None
    if stats and stats["admitted"] > before:
        blocks = (stats.get("prefetched", 0) - pref_before) / (stats["admitted"] - before)
    row = {
        "mode": mode, "rps": rate, "per_call": per_call, "cpu_us": cpu_us, "sleeps": sleeps,
        "blocks": blocks,
    }
    print(json.dumps({**row, "n": n}))
    """
)


def start_redis():
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server), or set REDIS_URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    time.sleep(0.3)
    return f"redis://127.0.0.1:{port}", proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2, help="alternate the modes this many times")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--modes", default="off,local,redis,redis-each,redis-rpm-tpm,redis-rpm-only")
    a = p.parse_args()
    from llmux.testing import FakeUpstream

    modes = a.modes.split(",")
    best: dict = {}
    rows: dict = {}
    redis_url, redis_proc = start_redis()
    try:
        with FakeUpstream(threads=1) as fake:
            for _ in range(a.rounds):
                for mode in modes:
                    r0 = cpu_seconds(redis_proc.pid) if redis_proc else 0.0
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-c",
                            CHILD,
                            fake.base_url,
                            mode,
                            redis_url,
                            str(a.warmup),
                            str(a.duration),
                            str(a.concurrency),
                        ],
                        capture_output=True,
                        text=True,
                        timeout=a.duration + a.warmup + 60,
                        env=dict(os.environ),
                    )
                    if out.returncode != 0:
                        raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    # Redis's CPU over the whole child run (warm-up included) per request.
                    total = row["n"] * (a.duration + a.warmup) / a.duration
                    r1 = cpu_seconds(redis_proc.pid) if redis_proc else 0.0
                    row["redis_us"] = (r1 - r0) * 1e6 / total if mode.startswith("redis") else 0.0
                    if row["rps"] > best.get(mode, 0.0):
                        best[mode], rows[mode] = row["rps"], row
    finally:
        if redis_proc is not None:
            redis_proc.kill()
    base = best["off"]
    print(
        f"# rate limit overhead (async unary, concurrency {a.concurrency}, "
        f"best of {a.rounds} rounds of {a.duration:g} s)\n"
    )
    print(
        "| configuration | req/s | vs no limit | client CPU µs/req | redis-server CPU µs/req "
        "| admissions per Redis call | admitted from blocks | client thread sleeps / request |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        r = rows[mode]
        pc, bl = r["per_call"], r.get("blocks")
        print(
            f"| {mode} | {best[mode]:,.0f} | {best[mode] / base:.3f}x | {r['cpu_us']:.0f} | "
            f"{r['redis_us']:.1f} | {'' if pc is None else f'{pc:.1f}'} | "
            f"{'' if bl is None else f'{bl:.1%}'} | {r['sleeps']:.2f} |"
        )


if __name__ == "__main__":
    main()
