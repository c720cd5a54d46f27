"""A separate OS process using llmux.Router, for the multi-process tests.

Usage: python router_worker.py '<json>' with keys model_list, router (Router kwargs), mode:
  "seq":   n sequential calls (after `start_at`, a time.time() to wait for)
  "hold":  one call that is expected to be killed mid-flight (prints STARTED first)
  "stdin": prints READY, then one call per line read (the line names the group, or empty)
Prints one JSON line: the list of results (model_id, or the exception class name).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OPENAI_API_KEY", "sk-worker")

import llmux  # noqa: E402


def main() -> None:
    cfg = json.loads(sys.argv[1])
    router = llmux.Router(model_list=cfg["model_list"], **cfg.get("router", {}))
    msgs = [{"role": "user", "content": "hi"}]
    if cfg.get("start_at"):
        time.sleep(max(0.0, cfg["start_at"] - time.time()))
    kwargs = cfg.get("kwargs", {})
    if cfg["mode"] == "stdin":
        # One call per input line, answered at once: lets the parent time calls precisely.
        print("READY", flush=True)
        for line in sys.stdin:
            group = line.strip() or cfg["group"]
            try:
                r = router.completion(model=group, messages=msgs, **kwargs)
                print(json.dumps(r._hidden_params["model_id"]), flush=True)
            except Exception as e:  # noqa: BLE001 - reported to the parent test
                print(json.dumps(type(e).__name__), flush=True)
        return
    if cfg["mode"] == "hold":
        print("STARTED", flush=True)
        router.completion(model=cfg["group"], messages=msgs, **kwargs)
        return
    out = []
    for _ in range(cfg.get("n", 1)):
        try:
            r = router.completion(model=cfg["group"], messages=msgs, **kwargs)
            out.append(r._hidden_params["model_id"])
        except Exception as e:  # noqa: BLE001 - reported to the parent test
            out.append(type(e).__name__)
        if cfg.get("pause"):
            time.sleep(cfg["pause"])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
