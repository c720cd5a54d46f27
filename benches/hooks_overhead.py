"""What hooks and callbacks cost: llmux.acompletion throughput with no hooks, with one native
hook (the spend budget: a check before and a charge after every call), and with one Python
async callback (a CustomLogger's async_log_success_event).

Each configuration runs in its own interpreter against one fake upstream, at concurrency 64,
after a warm-up; the table gives requests/s and the ratio to the no-hook run.

    python benches/hooks_overhead.py [--duration 8] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    import llmux

    base, mode, warm, dur = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    if mode == "native-hook":
        llmux.set_budget(1e9)
    elif mode == "python-callback":
        class Sink(llmux.CustomLogger):
            async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
                pass
        llmux.callbacks = [Sink()]
    msgs = [{"role": "user", "content": "hi"}]

    async def worker(stop, counts):
        while time.perf_counter() < stop:
            await llmux.acompletion(model="openai/gpt-4o-mini", messages=msgs, api_base=base, api_key="sk-x")
            counts[0] += 1

    async def run(seconds):
        counts = [0]
        stop = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(stop, counts) for _ in range(64)])
        return counts[0] / (time.perf_counter() - t0)

    asyncio.run(run(warm))
    rate = asyncio.run(run(dur))
    if mode == "python-callback":
        llmux.flush_callbacks(10)
    print(json.dumps({"mode": mode, "rps": rate}))
    """
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=2, help="alternate the modes this many times")
    a = p.parse_args()
    from llmux.testing import FakeUpstream

    modes = ["no-hooks", "native-hook", "python-callback"]
    best: dict = {}
    with FakeUpstream(threads=1) as fake:
        for _ in range(a.rounds):
            for mode in modes:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, fake.base_url, mode, str(a.warmup), str(a.duration)],
                    capture_output=True,
                    text=True,
                    timeout=a.duration + a.warmup + 60,
                    env=dict(os.environ),
                )
                if out.returncode != 0:
                    raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
                rps = json.loads(out.stdout.strip().splitlines()[-1])["rps"]
                best[mode] = max(best.get(mode, 0.0), rps)
    base = best["no-hooks"]
    print(f"# hooks overhead (async unary, concurrency 64, best of {a.rounds} rounds of {a.duration:g} s)\n")
    print("| configuration | req/s | vs no hooks |")
    print("|---|---:|---:|")
    for mode in modes:
        print(f"| {mode} | {best[mode]:,.0f} | {best[mode] / base:.3f}x |")


if __name__ == "__main__":
    main()
