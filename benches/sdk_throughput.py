#!/usr/bin/env python
"""Side-by-side SDK throughput benchmark: llmux vs litellm vs openai vs raw aiohttp.

All contenders talk to ONE fake OpenAI upstream (llmux's Rust fake server, 1 worker thread, zero
delay) started by this script. Every (scenario, contender) pair runs in its own fresh interpreter
for a warm-up then a fixed measuring window, and reports JSON back on stdout.

    python benches/sdk_throughput.py                       # everything from one interpreter
    python benches/sdk_throughput.py --peer-python /path/to/other/python   # peers elsewhere
    python benches/sdk_throughput.py --quick --json out.json

See benches/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

MODEL = "openai/gpt-4o-mini"  # SDKs with LiteLLM's model syntax
OPENAI_MODEL = "gpt-4o-mini"  # openai / aiohttp send the bare name
API_KEY = "sk-fake"
MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]
STREAM_CHUNKS = 20
UPSTREAM_THREADS = 1
SYNC_THREADS = 8

ASYNC_CONTENDERS = ["llmux", "litellm", "openai", "aiohttp"]
SYNC_CONTENDERS = ["llmux", "litellm", "openai"]
PEERS = ["litellm", "openai", "aiohttp"]
# Which interpreter runs a contender: "llmux" -> --llmux-python, the rest -> --peer-python.
CONTENDER_MODULE = {"llmux": "llmux", "litellm": "litellm", "openai": "openai", "aiohttp": "aiohttp"}

# Environment for every child: no network at litellm import, quiet logs, no proxies for 127.0.0.1.
CHILD_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "PYTHONWARNINGS": "ignore",
}


# --------------------------------------------------------------------------------------------
# Worker side (runs in a fresh interpreter, one contender, one scenario)
# --------------------------------------------------------------------------------------------


class Recorder:
    """Counts requests that finish inside [t0, t1] and keeps their latencies."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1
        self.lat: list[float] = []
        self.ttfc: list[float] = []
        self.errors = 0
        self.first_error: Optional[str] = None
        self.chunks: Optional[int] = None
        self.lock = threading.Lock()

    def ok(self, start: float, end: float, first: Optional[float] = None, n: Optional[int] = None) -> None:
        if self.chunks is None and n is not None:
            self.chunks = n
        if self.t0 <= end <= self.t1:  # completed inside the measuring window
            self.lat.append(end - start)
            if first is not None:
                self.ttfc.append(first - start)

    def err(self, e: BaseException) -> None:
        with self.lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(e).__name__}: {e}"[:300]


def proc_cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """user+sys CPU seconds of a process (Linux /proc), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def snapshot(upstream_pid: Optional[int]) -> tuple:
    return os.times(), proc_cpu_seconds(upstream_pid)


def pct(xs: list[float], q: float) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    i = min(len(s) - 1, max(0, int(round(q / 100.0 * len(s) + 0.5)) - 1))  # nearest rank
    return s[i] * 1000.0


def make_async_call(name: str, url: str, stream: bool):
    """Returns (setup coroutine fn, call coroutine fn -> (first_chunk_time|None, n_chunks|None), close)."""
    state: dict[str, Any] = {}

    if name == "llmux":
        import llmux

        async def call():
            if not stream:
                r = await llmux.acompletion(model=MODEL, messages=MESSAGES, api_base=url, api_key=API_KEY)
                _ = r.choices[0].message.content
                return None, None
            s = await llmux.acompletion(
                model=MODEL, messages=MESSAGES, api_base=url, api_key=API_KEY, stream=True
            )
            first, n = None, 0
            async for c in s:
                if first is None:
                    first = time.perf_counter()
                n += 1
                if c.choices:
                    _ = c.choices[0].delta.content
            return first, n

        return None, call, None

    if name == "litellm":
        import litellm

        litellm.suppress_debug_info = True
        litellm.set_verbose = False
        if hasattr(litellm, "telemetry"):
            litellm.telemetry = False

        async def call():
            if not stream:
                r = await litellm.acompletion(model=MODEL, messages=MESSAGES, api_base=url, api_key=API_KEY)
                _ = r.choices[0].message.content
                return None, None
            s = await litellm.acompletion(
                model=MODEL, messages=MESSAGES, api_base=url, api_key=API_KEY, stream=True
            )
            first, n = None, 0
            async for c in s:
                if first is None:
                    first = time.perf_counter()
                n += 1
                if c.choices:
                    _ = c.choices[0].delta.content
            return first, n

        return None, call, None

    if name == "openai":
        import httpx
        import openai

        async def setup():
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
            state["client"] = openai.AsyncOpenAI(
                base_url=url,
                api_key=API_KEY,
                max_retries=0,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits),
            )

        async def call():
            client = state["client"]
            if not stream:
                r = await client.chat.completions.create(model=OPENAI_MODEL, messages=MESSAGES)
                _ = r.choices[0].message.content
                return None, None
            s = await client.chat.completions.create(model=OPENAI_MODEL, messages=MESSAGES, stream=True)
            first, n = None, 0
            async for c in s:
                if first is None:
                    first = time.perf_counter()
                n += 1
                if c.choices:
                    _ = c.choices[0].delta.content
            return first, n

        async def close():
            await state["client"].close()

        return setup, call, close

    if name == "aiohttp":
        import aiohttp

        endpoint = url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {API_KEY}"}

        async def setup():
            state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def call():
            body = {"model": OPENAI_MODEL, "messages": MESSAGES}
            if stream:
                body["stream"] = True
            async with state["session"].post(endpoint, json=body, headers=headers) as resp:
                resp.raise_for_status()
                if not stream:
                    d = await resp.json()
                    _ = d["choices"][0]["message"]["content"]
                    return None, None
                first, n = None, 0
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    c = json.loads(data)
                    if first is None:
                        first = time.perf_counter()
                    n += 1
                    if c.get("choices"):
                        _ = c["choices"][0]["delta"].get("content")
                return first, n

        async def close():
            await state["session"].close()

        return setup, call, close

    raise ValueError(f"unknown contender {name}")


async def run_async(
    name: str, url: str, stream: bool, conc: int, warmup: float, duration: float, up_pid: Optional[int]
) -> dict:
    setup, call, close = make_async_call(name, url, stream)
    if setup is not None:
        await setup()
    now = time.perf_counter()
    rec = Recorder(now + warmup, now + warmup + duration)

    async def loop() -> None:
        while True:
            start = time.perf_counter()
            if start >= rec.t1:
                return
            try:
                first, n = await call()
            except Exception as e:  # noqa: BLE001 - report, keep going
                rec.err(e)
                await asyncio.sleep(0.001)
                continue
            rec.ok(start, time.perf_counter(), first, n)

    cpu0 = None

    async def cpu_probe() -> None:
        nonlocal cpu0
        await asyncio.sleep(max(0.0, rec.t0 - time.perf_counter()))
        cpu0 = snapshot(up_pid)

    probe = asyncio.ensure_future(cpu_probe())
    await asyncio.gather(*(loop() for _ in range(conc)))
    cpu1 = snapshot(up_pid)
    await probe
    if close is not None:
        await close()
    return summarize(rec, duration, cpu0, cpu1)


def make_sync_call(name: str, url: str):
    if name == "llmux":
        import llmux

        def call():
            r = llmux.completion(model=MODEL, messages=MESSAGES, api_base=url, api_key=API_KEY)
            _ = r.choices[0].message.content

        return call
    if name == "litellm":
        import litellm

        litellm.suppress_debug_info = True
        litellm.set_verbose = False
        if hasattr(litellm, "telemetry"):
            litellm.telemetry = False

        def call():
            r = litellm.completion(model=MODEL, messages=MESSAGES, api_base=url, api_key=API_KEY)
            _ = r.choices[0].message.content

        return call
    if name == "openai":
        import httpx
        import openai

        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        client = openai.OpenAI(
            base_url=url, api_key=API_KEY, max_retries=0, http_client=openai.DefaultHttpxClient(limits=limits)
        )

        def call():
            r = client.chat.completions.create(model=OPENAI_MODEL, messages=MESSAGES)
            _ = r.choices[0].message.content

        return call
    raise ValueError(f"unknown sync contender {name}")


def run_sync(
    name: str, url: str, threads: int, warmup: float, duration: float, up_pid: Optional[int]
) -> dict:
    call = make_sync_call(name, url)
    now = time.perf_counter()
    rec = Recorder(now + warmup, now + warmup + duration)
    per_thread: list[list[float]] = [[] for _ in range(threads)]

    def loop(i: int) -> None:
        mine = per_thread[i]
        while True:
            start = time.perf_counter()
            if start >= rec.t1:
                return
            try:
                call()
            except Exception as e:  # noqa: BLE001
                rec.err(e)
                time.sleep(0.001)
                continue
            end = time.perf_counter()
            if rec.t0 <= end <= rec.t1:
                mine.append(end - start)

    ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    time.sleep(max(0.0, rec.t0 - time.perf_counter()))
    cpu0 = snapshot(up_pid)
    for t in ts:
        t.join()
    cpu1 = snapshot(up_pid)
    for m in per_thread:
        rec.lat.extend(m)
    return summarize(rec, duration, cpu0, cpu1)


def summarize(rec: Recorder, duration: float, cpu0: Any, cpu1: Any) -> dict:
    out: dict[str, Any] = {
        "requests": len(rec.lat),
        "rps": len(rec.lat) / duration,
        "p50_ms": pct(rec.lat, 50),
        "p99_ms": pct(rec.lat, 99),
        "ttfc_p50_ms": pct(rec.ttfc, 50),
        "errors": rec.errors,
        "first_error": rec.first_error,
        "chunks_per_stream": rec.chunks,
    }
    if cpu0 is not None:
        (t0, u0), (t1, u1) = cpu0, cpu1
        wall = max(1e-9, t1.elapsed - t0.elapsed)
        out["client_cpu_pct"] = 100.0 * ((t1.user - t0.user) + (t1.system - t0.system)) / wall
        if u0 is not None and u1 is not None:
            out["upstream_cpu_pct"] = 100.0 * (u1 - u0) / wall
    return out


def worker_main(spec: dict) -> None:
    name = spec["contender"]
    try:
        __import__(CONTENDER_MODULE[name])
    except ImportError as e:
        print("RESULT " + json.dumps({"error": "not installed", "detail": str(e)}), flush=True)
        return
    if name == "litellm":
        import logging

        logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    url, conc, warmup, duration = spec["url"], spec["concurrency"], spec["warmup"], spec["duration"]
    up_pid = spec.get("upstream_pid")
    if spec["mode"] == "sync":
        res = run_sync(name, url, conc, warmup, duration, up_pid)
    else:
        res = asyncio.run(run_async(name, url, spec["stream"], conc, warmup, duration, up_pid))
    print("RESULT " + json.dumps(res), flush=True)
    sys.stdout.flush()
    os._exit(0)  # don't wait for SDK background threads (e.g. litellm's logging workers)


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


def child_env() -> dict:
    env = dict(os.environ)
    env.update(CHILD_ENV)
    return env


class Upstream:
    """The fake upstream, started from the llmux interpreter (``python -m llmux.testing``)."""

    def __init__(self, python: str, threads: int) -> None:
        self.proc = subprocess.Popen(
            [python, "-m", "llmux.testing", "--port", "0", "--threads", str(threads)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_worker(python: str, spec: dict, timeout: float) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=child_env(),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timeout after {timeout:.0f}s"}
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = err.decode(errors="replace").strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[:300]}


def import_time(python: str, module: str, reps: int) -> dict:
    def best(code: str) -> Optional[float]:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            r = subprocess.run([python, "-c", code], env=child_env(), capture_output=True)
            times.append(time.perf_counter() - t)
            if r.returncode != 0:
                return None
        return min(times)

    base = best("pass")
    t = best(f"import {module}")
    if t is None or base is None:
        return {"error": "not installed"}
    return {"ms": (t - base) * 1000.0, "baseline_ms": base * 1000.0}


def versions(python: str, dists: list[str]) -> dict:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for d in {dists!r}:\n"
        "    try: out[d] = m.version(d)\n"
        "    except Exception: out[d] = None\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([python, "-c", code], env=child_env(), capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": r.stderr.strip()[-200:]}


def fmt(x: Optional[float], nd: int = 1) -> str:
    return "—" if x is None else f"{x:,.{nd}f}"


def scenario_table(title: str, results: dict, contenders: list[str], stream: bool) -> list[str]:
    lines = [f"### {title}", ""]
    head = ["contender", "req/s", "p50 ms", "p99 ms"]
    if stream:
        head.append("TTFC p50 ms")
        head.append("chunks/stream")
    head += ["llmux / X (req/s)", "client CPU %", "upstream CPU %", "errors"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    base = results.get("llmux", {}).get("rps") if "error" not in results.get("llmux", {}) else None
    for c in contenders:
        r = results.get(c, {"error": "not run"})
        if "error" in r:
            row = [c, r["error"]] + [""] * (len(head) - 2)
        else:
            ratio = "—"
            if c != "llmux" and base and r["rps"]:
                ratio = f"{base / r['rps']:.2f}×"
            row = [c, fmt(r["rps"], 0), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2)]
            if stream:
                row += [fmt(r.get("ttfc_p50_ms"), 2), str(r.get("chunks_per_stream"))]
            err = str(r["errors"])
            if r["errors"] and r.get("first_error"):
                err += f" ({r['first_error'][:80]})"
            row += [
                ratio,
                fmt(r.get("client_cpu_pct"), 0),
                fmt(r.get("upstream_cpu_pct"), 0),
                err,
            ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def parent_main(a: argparse.Namespace) -> int:
    warmup, duration = (0.5, 2.0) if a.quick else (a.warmup, a.duration)
    if a.duration_set and a.quick:
        duration = a.duration
    timeout = a.timeout or (warmup + duration + 60.0)
    llmux_py, peer_py = a.llmux_python, a.peer_python
    python_for = {c: (llmux_py if c == "llmux" else peer_py) for c in CONTENDER_MODULE}

    cmdline = " ".join(shlex.quote(x) for x in [sys.executable] + sys.argv)
    print("# llmux SDK throughput benchmark\n")
    print(f"Command: `{cmdline}`\n")
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    ncpu = os.cpu_count()
    aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else ncpu
    v_llmux = versions(llmux_py, ["llmux"])
    v_peer = versions(peer_py, ["litellm", "openai", "httpx", "aiohttp"])
    facts = {
        "nproc": aff,
        "cpu_count": ncpu,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "llmux_python": {"path": llmux_py, **v_llmux},
        "peer_python": {"path": peer_py, **v_peer},
        "upstream_threads": UPSTREAM_THREADS,
        "warmup_s": warmup,
        "duration_s": duration,
        "timeout_s": timeout,
    }
    print("Machine and setup:\n")
    print(f"- nproc: {aff} (cpu_count {ncpu}); CPU: {cpu_model or '?'}; {platform.platform()}")
    print(f"- llmux interpreter: `{llmux_py}` (Python {v_llmux.get('python')}), llmux {v_llmux.get('llmux')}")
    print(
        f"- peer interpreter: `{peer_py}` (Python {v_peer.get('python')}), litellm {v_peer.get('litellm')}, "
        f"openai {v_peer.get('openai')}, httpx {v_peer.get('httpx')}, aiohttp {v_peer.get('aiohttp')}"
    )
    print(
        f"- fake upstream: llmux's Rust fake OpenAI server, {UPSTREAM_THREADS} worker thread, zero delay, "
        f"{STREAM_CHUNKS} content chunks per stream; one server shared by all contenders"
    )
    print(
        f"- each contender: fresh interpreter, default asyncio loop, {warmup:g} s warm-up + "
        f"{duration:g} s measured, hard timeout {timeout:g} s; openai clients use "
        "httpx.Limits(max_connections=1000, max_keepalive_connections=1000), aiohttp TCPConnector(limit=0)"
    )
    print("- req/s counts requests completed inside the measured window; p50/p99 are over those\n")
    sys.stdout.flush()

    scenarios = []
    for stream in (False, True):
        for conc in (64, 1):
            kind = "streaming" if stream else "unary"
            scenarios.append((f"async {kind}, concurrency {conc}", "async", stream, conc, ASYNC_CONTENDERS))
    sync_title = f"sync completion, {SYNC_THREADS} threads"
    scenarios.append((sync_title, "sync", False, SYNC_THREADS, SYNC_CONTENDERS))
    if a.only:
        scenarios = [s for s in scenarios if any(o in s[0] for o in a.only)]

    report: dict[str, Any] = {"command": cmdline, "facts": facts, "scenarios": {}, "import_ms": {}}
    lines: list[str] = []
    upstream = Upstream(llmux_py, UPSTREAM_THREADS)
    try:
        for title, mode, stream, conc, contenders in scenarios:
            results: dict[str, dict] = {}
            for c in contenders:
                spec = {
                    "contender": c,
                    "mode": mode,
                    "stream": stream,
                    "concurrency": conc,
                    "url": upstream.base_url,
                    "upstream_pid": upstream.proc.pid,
                    "warmup": warmup,
                    "duration": duration,
                }
                print(f"running: {title} / {c} ...", file=sys.stderr, flush=True)
                results[c] = run_worker(python_for[c], spec, timeout)
            report["scenarios"][title] = results
            lines += scenario_table(title, results, contenders, stream)
    finally:
        upstream.stop()

    if not a.skip_import:
        print("running: import times ...", file=sys.stderr, flush=True)
        lines += [
            "### import time (best of 5, `python -c 'import X'` minus `python -c pass`)",
            "",
            "| module | import ms | llmux / X | interpreter startup ms |",
            "|---|---:|---:|---:|",
        ]
        imp = {m: import_time(python_for[m], m, 5) for m in ["llmux", "litellm", "openai"]}
        report["import_ms"] = imp
        lx = imp["llmux"].get("ms")
        for m, r in imp.items():
            if "error" in r:
                lines.append(f"| {m} | {r['error']} | | |")
                continue
            ratio = "—" if m == "llmux" or not lx else f"{lx / r['ms']:.2f}"
            lines.append(f"| {m} | {fmt(r['ms'])} | {ratio} | {fmt(r['baseline_ms'])} |")
        lines.append("")

    print("\n".join(lines))
    print(
        "llmux / X is llmux's req/s divided by X's (above 1 = llmux faster); for import time it is "
        "llmux's ms divided by X's (below 1 = llmux faster). CPU % is user+sys over the measured window "
        f"(100 % = one core); the upstream has {UPSTREAM_THREADS} thread, so ~100 % there would mean "
        "the server, not the client, is the bottleneck. chunks/stream counts every chunk the client "
        "yielded (role + content + finish [+ usage])."
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nJSON written to {a.json}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llmux-python", default=sys.executable, help="interpreter with llmux (default: this)")
    p.add_argument("--peer-python", default=sys.executable, help="interpreter with litellm/openai/aiohttp")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per run (default 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run (default 2)")
    p.add_argument("--quick", action="store_true", help="short run: 0.5 s warm-up, 2 s measured")
    p.add_argument("--timeout", type=float, default=None, help="hard per-run timeout (default: run + 60 s)")
    p.add_argument("--only", action="append", help="only scenarios whose title contains this (repeatable)")
    p.add_argument("--skip-import", action="store_true", help="skip the import-time measurement")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker_main(json.loads(a.worker))
        return 0
    a.duration_set = a.duration is not None
    if a.duration is None:
        a.duration = 8.0
    return parent_main(a)


if __name__ == "__main__":
    sys.exit(main())
