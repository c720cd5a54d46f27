"""A separate OS process calling ``llmux.acompletion`` under a distributed rate limit, for the
multi-process limit tests.

Usage: python limit_worker.py '<json>' with keys rate_limit, redis, base_url, key, callers,
interval (seconds between one caller's calls), start_at and stop_at (time.time() values).
Prints one JSON line: the send times of the admitted calls, and the count refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

os.environ.setdefault("OPENAI_API_KEY", "sk-worker")

import llmux  # noqa: E402
from llmux.exceptions import RateLimitError  # noqa: E402


async def caller(cfg: dict, offset: float, admitted: list, refused: list) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    nxt = cfg["start_at"] + offset
    while True:
        await asyncio.sleep(max(0.0, nxt - time.time()))
        if time.time() >= cfg["stop_at"]:
            return
        sent = time.time()
        try:
            await llmux.acompletion(
                model="openai/gpt-4o-mini",
                messages=msgs,
                api_base=cfg["base_url"],
                extra_headers={"x-fake-key": cfg["key"]},
            )
            admitted.append(sent)
        except RateLimitError:
            refused.append(sent)
        nxt += cfg["interval"]


async def main() -> None:
    cfg = json.loads(sys.argv[1])
    llmux.set_rate_limit(cfg["rate_limit"], cfg["redis"])
    admitted: list = []
    refused: list = []
    n = cfg["callers"]
    # Callers spread evenly over one interval, so the offered load is steady.
    await asyncio.gather(*(caller(cfg, cfg["interval"] * i / n, admitted, refused) for i in range(n)))
    print(json.dumps({"admitted": admitted, "refused": len(refused), "stats": llmux.rate_limit_stats()}))


if __name__ == "__main__":
    asyncio.run(main())
