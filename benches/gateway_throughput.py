#!/usr/bin/env python3
"""Side-by-side gateway benchmark: the fake upstream directly vs `llmux serve` vs the LiteLLM proxy.

One run starts llmux's fake OpenAI upstream (`llmux-fake-upstream`), then measures, one contender
after the other, with the same upstream behind every gateway:

* throughput: `wrk`, 64 connections, a small unary chat completion (req/s, p50, p99, ratio to the
  fake upstream directly, non-2xx responses, socket errors), with the contender's RSS at rest and
  its RSS peak under load;
* moderate load: `wrk`, 8 connections each pausing 4 ms between requests (about 2k req/s):
  p99 through the gateway minus p99 direct ("added latency");
* 1000 concurrent streams (slowed by the fake upstream so that they stay open): the contender's
  RSS while all of them are open, and whether every stream got every chunk and `[DONE]`.

    python3 benches/gateway_throughput.py                      # all three contenders
    python3 benches/gateway_throughput.py --duration 3 --contenders fake,litellm --json out.json

The parent needs only the standard library; the stream client needs aiohttp (taken from this
interpreter or from the LiteLLM proxy venv). See benches/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASTER_KEY = "sk-bench-master"
UPSTREAM_KEY = "sk-fake"
MODEL = "gpt-4o-mini"
STREAM_MODEL = "gpt-4o-mini-stream"  # same upstream, with the fake's slow-stream headers
STREAM_STATS_KEY = "bench-stream"  # x-fake-key of the streams, for the fake's /__stats
CHAT_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Hello, how are you today?"}]},
    separators=(",", ":"),
)
WORKLOAD = "unary chat completion"
CONTENDERS = ["fake", "llmux", "litellm"]
LABELS = {
    "fake": "fake upstream (direct)",
    "llmux": "llmux serve",
    "litellm": "LiteLLM proxy",
}
PROXY_REQUIREMENTS = os.path.join(REPO, "benches", "requirements-proxy.txt")

# The LiteLLM proxy's environment: no network at start-up (local cost map), no telemetry, quiet
# SDK logs, nothing proxied for 127.0.0.1.
PROXY_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_TELEMETRY_DISABLED": "True",
    "LITELLM_LOG": "ERROR",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes: every child in its own process group, all killed on exit
# --------------------------------------------------------------------------------------------

_CHILDREN: list[subprocess.Popen] = []
_CHILDREN_LOCK = threading.Lock()


def spawn(argv: list[str], **kw: Any) -> subprocess.Popen:
    """Popen in a new session (so the whole group can be killed), remembered for cleanup."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, start_new_session=True, **kw)
    with _CHILDREN_LOCK:
        _CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace` seconds."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    # Stragglers of the group (workers whose parent died first).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    with _CHILDREN_LOCK:
        if proc in _CHILDREN:
            _CHILDREN.remove(proc)


def stop_all() -> None:
    """Stops every child still running, newest first (clients before gateways)."""
    with _CHILDREN_LOCK:
        procs = [p for p in reversed(_CHILDREN) if p.poll() is None]
    if procs:
        log(f"stopping {len(procs)} child process group(s)")
    for p in procs:
        stop(p, grace=3.0)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: str, lines: int = 25, chars: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


# --------------------------------------------------------------------------------------------
# /proc: memory and CPU of a process tree
# --------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is not None:
            children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS (KiB) of `pids`; processes that are gone count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            total += (int(f[11]) + int(f[12])) / tck
    return total


class Sampler:
    """Samples the summed RSS of a process tree in a thread; keeps the peak."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root, self.interval = root, interval
        self.peak_kib = 0
        self.last_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        kib = rss_kib(tree_pids(self.root))
        self.last_kib = kib
        self.peak_kib = max(self.peak_kib, kib)
        return kib

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024.0


# --------------------------------------------------------------------------------------------
# HTTP helpers (stdlib)
# --------------------------------------------------------------------------------------------


def http(
    method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout=10.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def auth_headers(key: str, extra: dict | None = None) -> dict:
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    h.update(extra or {})
    return h


def parse_sse(raw: bytes) -> tuple[str, int, bool]:
    """(content text, content-bearing chunks, saw [DONE]) of an SSE chat completion body."""
    text, n, done = [], 0, False
    for line in raw.decode(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        for ch in json.loads(data).get("choices") or []:
            c = (ch.get("delta") or {}).get("content")
            if c:
                text.append(c)
                n += 1
    return "".join(text), n, done


def preflight(base: str, key: str) -> str | None:
    """One unary chat completion; None if it is a 200 with a chat completion body."""
    try:
        status, body = http(
            "POST", f"{base}/v1/chat/completions", CHAT_BODY.encode(), auth_headers(key), 30.0
        )
    except OSError as e:
        return f"preflight request failed: {e}"
    if status != 200:
        return f"preflight: HTTP {status}: {body[:300].decode(errors='replace')}"
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"preflight: 200 without a chat completion: {body[:300].decode(errors='replace')}"
    if not content:
        return "preflight: empty completion"
    return None


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------

WRK_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = [==[Bearer {key}]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,\\"connect\\":%d," ..
    "\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d," ..
    "\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d,\\"mean_us\\":%.1f}}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def write_lua(tmp: str, key: str, pause_ms: float = 0) -> str:
    """The wrk script; with `pause_ms`, each connection waits that long between requests
    (a paced, moderate load instead of a saturating one)."""
    path = os.path.join(tmp, f"chat-{key}-{pause_ms:g}.lua")
    with open(path, "w") as f:
        f.write(WRK_LUA.format(body=CHAT_BODY, key=key))
        if pause_ms > 0:
            f.write(f"\ndelay = function() return {pause_ms:g} end\n")
    return path


def run_wrk(
    wrk: str,
    url: str,
    lua: str,
    connections: int,
    duration: float,
    threads: int,
    sampler_root: int | None = None,
    upstream_pid: int | None = None,
) -> dict:
    """One wrk run; returns req/s, latency percentiles (ms), errors, RSS peak, CPU use."""
    threads = max(1, min(threads, connections))
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        lua,
        url,
    ]
    roots = [p for p in (sampler_root, upstream_pid) if p]
    cpu0 = {p: cpu_seconds(tree_pids(p)) for p in roots}
    t0 = time.monotonic()
    sampler = Sampler(sampler_root) if sampler_root else None
    with sampler or contextlib.nullcontext():
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            return {"error": f"wrk did not finish within {duration + 60:.0f} s"}
        finally:
            stop(proc, grace=1.0)
    wall = time.monotonic() - t0
    text = out.decode(errors="replace")
    m = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
    if not m:
        msg = (err.decode(errors="replace").strip() or text.strip())[-400:]
        return {"error": f"wrk failed (exit {proc.returncode}): {msg}"}
    w = json.loads(m.group(1))
    secs = w["duration_us"] / 1e6
    res: dict[str, Any] = {
        "connections": connections,
        "threads": threads,
        "duration_s": secs,
        "requests": w["requests"],
        "rps": w["requests"] / secs if secs > 0 else 0.0,
        "p50_ms": w["p50_us"] / 1000.0,
        "p90_ms": w["p90_us"] / 1000.0,
        "p99_ms": w["p99_us"] / 1000.0,
        "max_ms": w["max_us"] / 1000.0,
        "mean_ms": w["mean_us"] / 1000.0,
        "non2xx": w["status"],
        "socket_errors": {k: w[k] for k in ("connect", "read", "write", "timeout")},
    }
    res["errors"] = res["non2xx"] + sum(res["socket_errors"].values())
    if sampler:
        res["rss_peak_mib"] = mib(sampler.peak_kib)
    if sampler_root:
        used = cpu_seconds(tree_pids(sampler_root)) - cpu0[sampler_root]
        res["gateway_cpu_pct"] = 100.0 * used / wall
    if upstream_pid and upstream_pid != sampler_root:
        used = cpu_seconds(tree_pids(upstream_pid)) - cpu0[upstream_pid]
        res["upstream_cpu_pct"] = 100.0 * used / wall
    return res


# --------------------------------------------------------------------------------------------
# The stream client (runs as `--stream-worker SPEC` in an interpreter with aiohttp)
# --------------------------------------------------------------------------------------------


def stream_worker(spec: dict) -> None:
    import asyncio

    import aiohttp

    n = spec["streams"]
    want_text, want_chunks = spec["expect_text"], spec["expect_chunks"]
    body = json.dumps(
        {
            "model": spec["model"],
            "messages": [{"role": "user", "content": "Hello, how are you today?"}],
            "stream": True,
        }
    )
    headers = auth_headers(spec["key"], spec.get("headers"))
    state: dict[str, Any] = {"open": 0, "max_open": 0, "all_open_at": None}
    opened_at: list[float] = []
    done_at: list[float] = []
    failures: dict[str, int] = {}
    durations: list[float] = []
    ok = 0

    def fail(reason: str) -> None:
        failures[reason[:160]] = failures.get(reason[:160], 0) + 1

    async def one(session: aiohttp.ClientSession, t_start: float) -> None:
        nonlocal ok
        t0 = time.perf_counter()
        opened = False
        try:
            async with session.post(spec["url"], data=body, headers=headers) as resp:
                if resp.status != 200:
                    txt = (await resp.text())[:120]
                    fail(f"HTTP {resp.status}: {txt}")
                    return
                opened = True
                opened_at.append(time.perf_counter() - t_start)
                state["open"] += 1
                if state["open"] > state["max_open"]:
                    state["max_open"] = state["open"]
                    # Tell the parent, which samples the gateway's RSS at these moments.
                    if state["open"] == n or state["open"] % 50 == 0:
                        print(f"MAXOPEN {state['open']}", flush=True)
                if state["open"] == n and state["all_open_at"] is None:
                    state["all_open_at"] = opened_at[-1]
                parts: list[str] = []
                chunks, done, err = 0, False, None
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    obj = json.loads(data)
                    if obj.get("error"):
                        err = str(obj["error"])[:120]
                    for ch in obj.get("choices") or []:
                        c = (ch.get("delta") or {}).get("content")
                        if c:
                            parts.append(c)
                            chunks += 1
                if err:
                    fail(f"error event: {err}")
                elif not done:
                    fail("no [DONE]")
                elif chunks != want_chunks:
                    fail(f"{chunks} content chunks, expected {want_chunks}")
                elif "".join(parts) != want_text:
                    fail("content differs from the expected reply")
                else:
                    ok += 1
                    durations.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
            fail(f"{type(e).__name__}: {e}")
        finally:
            if opened:
                state["open"] -= 1
                done_at.append(time.perf_counter() - t_start)

    async def main() -> dict:
        conn = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=120)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            t_start = time.perf_counter()
            await asyncio.gather(*(one(session, t_start) for _ in range(n)))
            wall = time.perf_counter() - t_start
        durations.sort()
        return {
            "streams": n,
            "completed_ok": ok,
            "failures": failures,
            "max_open": state["max_open"],
            "all_open_after_s": state["all_open_at"],
            "last_opened_s": max(opened_at) if opened_at else None,
            "first_finished_s": min(done_at) if done_at else None,
            "wall_s": wall,
            "stream_p50_s": durations[len(durations) // 2] if durations else None,
            "stream_max_s": durations[-1] if durations else None,
        }

    res = asyncio.run(main())
    print("RESULT " + json.dumps(res), flush=True)


def has_aiohttp(python: str) -> bool:
    r = subprocess.run([python, "-c", "import aiohttp"], capture_output=True)
    return r.returncode == 0


def run_streams(
    python: str,
    spec: dict,
    root: int,
    timeout: float,
) -> dict:
    """Runs the stream client; samples the RSS of `root`'s tree, notably when all are open."""
    argv = [python, os.path.abspath(__file__), "--stream-worker", json.dumps(spec)]
    rest = rss_kib(tree_pids(root))
    cpu0, t0 = cpu_seconds(tree_pids(root)), time.monotonic()
    with Sampler(root, interval=0.05) as sampler:
        # stderr goes to a file: a full pipe would block the client.
        err_file = tempfile.TemporaryFile()
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=err_file)
        assert proc.stdout is not None
        at_max: tuple[int, int] | None = None  # (open streams, RSS KiB) at the highest count
        result = None
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return {"error": f"stream client did not finish within {timeout:.0f} s"}
                ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.startswith(b"MAXOPEN "):
                        k = int(line.split()[1])
                        kib = sampler.sample()
                        at_max = (k, kib)
                        if k == spec["streams"]:
                            log(f"  all {k} streams open, RSS {kib / 1024:.1f} MiB")
                    elif line.startswith(b"RESULT "):
                        result = json.loads(line[7:])
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        finally:
            stop(proc, grace=1.0)
            err_file.seek(0)
            err = err_file.read().decode(errors="replace")
            err_file.close()
    if result is None:
        return {"error": f"stream client failed (exit {proc.returncode}): {err.strip()[-400:]}"}
    used = cpu_seconds(tree_pids(root)) - cpu0
    result["contender_cpu_pct"] = 100.0 * used / (time.monotonic() - t0)
    result["rss_before_mib"] = mib(rest)
    result["rss_at_max_open_mib"] = mib(at_max[1]) if at_max else None
    result["rss_at_max_open_count"] = at_max[0] if at_max else None
    result["rss_peak_mib"] = mib(sampler.peak_kib)
    return result


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


class Fake:
    """The fake upstream (`llmux-fake-upstream`), started once for the whole run."""

    def __init__(self, binary: str, threads: int, tmp: str) -> None:
        self.err_path = os.path.join(tmp, "fake-upstream.stderr")
        self.proc = spawn(
            [binary, "--host", "127.0.0.1", "--port", "0", "--threads", str(threads)],
            stdout=subprocess.PIPE,
            stderr=open(self.err_path, "wb"),  # noqa: SIM115 - closed when the process ends
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30.0)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("LISTENING "):
            stop(self.proc)
            raise RuntimeError(f"fake upstream did not start (got {line!r}): {tail(self.err_path)}")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def stats(self, key: str) -> dict:
        try:
            status, body = http("GET", f"{self.base}/__stats?key={key}")
            return json.loads(body) if status == 200 else {}
        except (OSError, ValueError):
            return {}


def gateway_yaml(fake_port: int, chunk_delay_ms: int, chunks: int) -> str:
    api_base = f"http://127.0.0.1:{fake_port}/v1"
    return f"""\
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {api_base}
      api_key: {UPSTREAM_KEY}
  # The 1000-streams scenario: the same upstream, told by headers to stream slowly.
  - model_name: {STREAM_MODEL}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {api_base}
      api_key: {UPSTREAM_KEY}
      extra_headers:
        x-fake-chunk-delay-ms: "{chunk_delay_ms}"
        x-fake-chunks: "{chunks}"
        x-fake-key: "{STREAM_STATS_KEY}"
general_settings:
  master_key: {MASTER_KEY}
"""


class NotRun(Exception):
    """A contender that cannot be run; the message says why."""


def resolve_cmd(cmd: list[str]) -> list[str]:
    """Makes a relative program path absolute against the repo if it exists there."""
    prog = cmd[0]
    if os.sep in prog and not os.path.isabs(prog):
        for base in (os.getcwd(), REPO):
            cand = os.path.join(base, prog)
            if os.path.exists(cand):
                return [cand, *cmd[1:]]
        return [os.path.join(REPO, prog), *cmd[1:]]
    return cmd


def start_gateway(
    name: str, argv: list[str], env: dict, port: int, tmp: str, startup_timeout: float
) -> tuple[subprocess.Popen, str]:
    """Starts a gateway and waits for GET /health/liveliness to answer 200."""
    out_path = os.path.join(tmp, f"{name}.stdout")
    err_path = os.path.join(tmp, f"{name}.stderr")
    log(f"{name}: starting: {shlex.join(argv)}")
    try:
        proc = spawn(
            argv,
            stdout=open(out_path, "wb"),  # noqa: SIM115 - closed when the process ends
            stderr=open(err_path, "wb"),  # noqa: SIM115
            env=env,
            cwd=tmp,
        )
    except FileNotFoundError:
        raise NotRun(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise NotRun(f"not executable: {argv[0]}") from None
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            stop(proc)
            why = tail(err_path) or tail(out_path) or "(no output)"
            raise NotRun(f"exited with code {code} before it was ready\nstderr:\n{why}")
        try:
            status, _ = http("GET", f"{base}/health/liveliness", timeout=2.0)
            if status == 200:
                log(f"{name}: ready after {time.monotonic() - t0:.1f} s")
                return proc, base
        except OSError:
            pass
        if time.monotonic() - t0 > startup_timeout:
            stop(proc)
            why = tail(err_path) or tail(out_path) or "(no output)"
            limit = f"GET /health/liveliness did not answer 200 within {startup_timeout:.0f} s"
            raise NotRun(f"{limit}\nstderr:\n{why}")
        time.sleep(0.25)


def proxy_venv(path: str, setup: bool) -> tuple[str, str]:
    """(python, litellm version) of the LiteLLM proxy venv; creates it if asked and missing."""
    py = os.path.join(path, "bin", "python")
    cli = os.path.join(path, "bin", "litellm")
    if not os.path.exists(cli):
        if not setup:
            raise NotRun(
                f"no LiteLLM proxy venv at {path}; create it with: python3 -m venv {path} && "
                f"{path}/bin/pip install -r benches/requirements-proxy.txt "
                "(or run this script with --setup-proxy-venv)"
            )
        log(f"litellm: creating {path} and installing {PROXY_REQUIREMENTS} (a few minutes)")
        r = subprocess.run([sys.executable, "-m", "venv", path], capture_output=True, text=True)
        if r.returncode != 0:
            raise NotRun(f"python -m venv failed: {r.stderr.strip()[-400:]}")
        # Keep the venv out of git (what `python -m venv` does itself from Python 3.13 on).
        with open(os.path.join(path, ".gitignore"), "w") as f:
            f.write("*\n")
        r = subprocess.run(
            [py, "-m", "pip", "install", "-q", "-r", PROXY_REQUIREMENTS],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise NotRun(f"pip install failed: {r.stderr.strip()[-600:]}")
    r = subprocess.run(
        [py, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise NotRun(f"litellm is not importable in {path}: {r.stderr.strip()[-300:]}")
    return py, r.stdout.strip()


def measure(
    name: str,
    proc_pid: int,
    base: str,
    key: str,
    a: argparse.Namespace,
    fake: Fake,
    tmp: str,
    stream_python: str | None,
    expect: tuple[str, int],
    stream_headers: dict | None,
    alive: Any,
) -> dict:
    """Everything measured on one ready contender."""
    res: dict[str, Any] = {}
    time.sleep(1.0)
    res["rss_rest_mib"] = mib(rss_kib(tree_pids(proc_pid)))
    log(f"{name}: RSS at rest {res['rss_rest_mib']:.1f} MiB")
    err = preflight(base, key)
    if err:
        res["error"] = err
        return res
    lua = write_lua(tmp, key)
    paced = write_lua(tmp, key, a.moderate_pause_ms)
    url = f"{base}/v1/chat/completions"
    upstream = fake.proc.pid if name != "fake" else None

    if a.warmup > 0:
        log(f"{name}: warm-up, wrk {a.connections} connections, {a.warmup:g} s")
        w = run_wrk(a.wrk, url, lua, a.connections, a.warmup, a.wrk_threads)
        res["warmup"] = w
    log(f"{name}: throughput, wrk {a.connections} connections, {a.duration:g} s")
    wrk, threads = a.wrk, a.wrk_threads
    res["load"] = run_wrk(wrk, url, lua, a.connections, a.duration, threads, proc_pid, upstream)
    if not alive():
        res["error"] = "exited during the throughput run"
        return res
    log(
        f"{name}: moderate load, wrk {a.moderate_connections} connections pausing "
        f"{a.moderate_pause_ms:g} ms, {a.duration:g} s"
    )
    res["moderate"] = run_wrk(
        a.wrk, url, paced, a.moderate_connections, a.duration, a.wrk_threads, proc_pid, upstream
    )
    if not alive():
        res["error"] = "exited during the moderate-load run"
        return res

    if a.streams > 0:
        if stream_python is None:
            res["streams"] = {"error": "no interpreter with aiohttp (pip install aiohttp)"}
        else:
            log(
                f"{name}: {a.streams} concurrent streams "
                f"({a.stream_chunks} chunks x {a.stream_chunk_delay_ms} ms)"
            )
            before = fake.stats(STREAM_STATS_KEY).get("requests", 0)
            spec = {
                "url": url,
                "key": key,
                "model": MODEL if name == "fake" else STREAM_MODEL,
                "headers": stream_headers,
                "streams": a.streams,
                "expect_text": expect[0],
                "expect_chunks": expect[1],
            }
            timeout = a.stream_chunks * a.stream_chunk_delay_ms / 1000.0 + 180.0
            s = run_streams(stream_python, spec, proc_pid, timeout)
            st = fake.stats(STREAM_STATS_KEY)
            s["upstream_requests"] = st.get("requests", 0) - before
            hdrs = st.get("last_headers") or {}
            seen = hdrs.get("x-fake-chunk-delay-ms")
            s["upstream_saw_delay_header"] = seen == str(a.stream_chunk_delay_ms)
            res["streams"] = s
            if not alive():
                res["error"] = "exited during the streams run"
    return res


def run_contender(name: str, a: argparse.Namespace, fake: Fake, tmp: str, cfg: str, **kw) -> dict:
    if name == "fake":
        headers = {
            "x-fake-chunk-delay-ms": str(a.stream_chunk_delay_ms),
            "x-fake-chunks": str(a.stream_chunks),
            "x-fake-key": STREAM_STATS_KEY,
        }
        return measure(
            name,
            fake.proc.pid,
            fake.base,
            UPSTREAM_KEY,
            a,
            fake,
            tmp,
            stream_headers=headers,
            alive=lambda: fake.proc.poll() is None,
            **kw,
        )

    port = free_port()
    env = dict(os.environ)
    info: dict[str, Any] = {}
    if name == "llmux":
        argv = resolve_cmd(shlex.split(a.llmux_cmd))
        argv += ["--config", cfg, "--port", str(port), "--host", "127.0.0.1"]
    else:
        py, version = proxy_venv(a.proxy_venv, a.setup_proxy_venv)
        info["version"] = version
        env.update(PROXY_ENV)
        if not a.litellm_default_pool:
            # LiteLLM's upstream pool holds at most 500 connections per host (1000 in all) by
            # default; more streams than that queue inside the proxy instead of being open.
            pool = str(max(1000, 2 * a.streams))
            env["AIOHTTP_CONNECTOR_LIMIT"] = pool
            env["AIOHTTP_CONNECTOR_LIMIT_PER_HOST"] = pool
            info["pool_limit"] = int(pool)
        cli = os.path.join(os.path.dirname(py), "litellm")
        argv = [cli, "--config", cfg, "--port", str(port), "--host", "127.0.0.1"]
        argv += ["--num_workers", str(a.litellm_workers)]
    info["command"] = shlex.join(argv)
    proc, base = start_gateway(name, argv, env, port, tmp, a.startup_timeout)
    try:
        res = measure(
            name,
            proc.pid,
            base,
            MASTER_KEY,
            a,
            fake,
            tmp,
            stream_headers=None,
            alive=lambda: proc.poll() is None,
            **kw,
        )
        if proc.poll() is not None:
            why = tail(os.path.join(tmp, f"{name}.stderr"))
            res["error"] = f"{res.get('error', 'exited')} (code {proc.returncode})\nstderr:\n{why}"
    finally:
        stop(proc)
    res.update(info)
    return res


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt(x: float | None, nd: int = 1) -> str:
    return "—" if x is None else f"{x:,.{nd}f}"


def errors_cell(r: dict) -> str:
    se = r.get("socket_errors") or {}
    parts = [f"{k} {v}" for k, v in se.items() if v]
    cell = str(r.get("non2xx", 0))
    if parts:
        cell += " (sockets: " + ", ".join(parts) + ")"
    return ("**" + cell + "**") if r.get("errors") else cell


def report(results: dict, a: argparse.Namespace) -> list[str]:
    order = [c for c in CONTENDERS if c in results]
    fake_load = results.get("fake", {}).get("load") or {}
    fake_mod = results.get("fake", {}).get("moderate") or {}
    L: list[str] = []

    L += [
        f"### Throughput: wrk, {a.connections} connections, {a.duration:g} s, {WORKLOAD}",
        "",
        "| contender | req/s | p50 ms | p99 ms | vs fake direct | non-2xx (socket errors) "
        "| RSS at rest MiB | RSS peak under load MiB | contender CPU % | upstream CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in order:
        r = results[c]
        ld = r.get("load") or {}
        if "load" not in r or "error" in ld:
            why = ld.get("error") or r.get("error") or "not run"
            rest = fmt(r.get("rss_rest_mib"))
            L.append(f"| {LABELS[c]} | {first_line(why)} | | | | | {rest} | | | |")
            continue
        ratio = "1.00×" if c == "fake" else "—"
        if c != "fake" and fake_load.get("rps"):
            ratio = f"{ld['rps'] / fake_load['rps']:.3g}×"
        # For the fake itself, the contender is the upstream.
        up_cpu = ld.get("gateway_cpu_pct") if c == "fake" else ld.get("upstream_cpu_pct")
        L.append(
            f"| {LABELS[c]} | {fmt(ld['rps'], 0)} | {fmt(ld['p50_ms'], 2)} | "
            f"{fmt(ld['p99_ms'], 2)} | {ratio} | {errors_cell(ld)} | "
            f"{fmt(r.get('rss_rest_mib'))} | {fmt(ld.get('rss_peak_mib'))} | "
            f"{fmt(ld.get('gateway_cpu_pct'), 0)} | {fmt(up_cpu, 0)} |"
        )
    L.append("")

    L += [
        f"### Moderate load: wrk, {a.moderate_connections} connections, each pausing "
        f"{a.moderate_pause_ms:g} ms between requests, {a.duration:g} s",
        "",
        "| contender | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in order:
        md = results[c].get("moderate") or {}
        if not md or "error" in md:
            why = md.get("error") or results[c].get("error") or "not run"
            L.append(f"| {LABELS[c]} | {first_line(why)} | | | | | |")
            continue
        add50 = add99 = "—"
        if c != "fake" and fake_mod.get("p99_ms") is not None:
            add50 = fmt(md["p50_ms"] - fake_mod["p50_ms"], 2)
            add99 = fmt(md["p99_ms"] - fake_mod["p99_ms"], 2)
        L.append(
            f"| {LABELS[c]} | {fmt(md['rps'], 0)} | {fmt(md['p50_ms'], 2)} | "
            f"{fmt(md['p99_ms'], 2)} | {add50} | {add99} | {errors_cell(md)} |"
        )
    L.append("")

    if a.streams > 0:
        L += [
            f"### {a.streams} concurrent streams ({a.stream_chunks} content chunks, "
            f"{a.stream_chunk_delay_ms} ms apart)",
            "",
            "| contender | all open at once | RSS with all open MiB | RSS peak MiB | "
            "completed with every chunk + [DONE] | failures | request to [DONE] p50 / max s | "
            "contender CPU % | upstream requests |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for c in order:
            s = results[c].get("streams") or {}
            if not s or "error" in s:
                why = s.get("error") or results[c].get("error") or "not run"
                L.append(f"| {LABELS[c]} | {first_line(why)} | | | | | | | |")
                continue
            if s.get("all_open_after_s") is not None:
                opened = f"yes, after {s['all_open_after_s']:.1f} s"
                rss_open = fmt(s.get("rss_at_max_open_mib"))
            else:
                last, first = s.get("last_opened_s"), s.get("first_finished_s")
                opened = (
                    f"**no**: at most {s['max_open']} (last opened after {fmt(last)} s, "
                    f"first finished after {fmt(first)} s)"
                )
                k = s.get("rss_at_max_open_count")
                rss_open = f"{fmt(s.get('rss_at_max_open_mib'))} ({k} open)"
            fails = "; ".join(f"{v}× {k}" for k, v in s["failures"].items()) or "0"
            done = f"{s['completed_ok']} / {s['streams']}"
            if s["completed_ok"] != s["streams"]:
                done = f"**{done}**"
            up = str(s.get("upstream_requests"))
            if not s.get("upstream_saw_delay_header"):
                up += " (slow-stream headers NOT seen upstream)"
            L.append(
                f"| {LABELS[c]} | {opened} | {rss_open} | "
                f"{fmt(s.get('rss_peak_mib'))} | {done} | {fails[:300]} | "
                f"{fmt(s.get('stream_p50_s'), 2)} / {fmt(s.get('stream_max_s'), 2)} | "
                f"{fmt(s.get('contender_cpu_pct'), 0)} | {up} |"
            )
        L.append("")

    problems = []
    for c in order:
        r = results[c]
        if r.get("error"):
            problems.append(f"- **{LABELS[c]}**: {r['error']}".replace("\n", "\n  "))
        for phase in ("warmup", "load", "moderate"):
            ph = r.get(phase) or {}
            if ph.get("errors"):
                problems.append(
                    f"- {LABELS[c]}, {phase}: {ph['non2xx']} non-2xx responses, "
                    f"socket errors {ph['socket_errors']}"
                )
    if problems:
        L += ["### Problems", "", *problems, ""]
    return L


def first_line(s: str) -> str:
    return s.strip().splitlines()[0][:200] if s.strip() else s


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def reference_stream(fake: Fake, chunks: int) -> tuple[str, int]:
    """The text and content-chunk count of one stream straight from the fake (no delay)."""
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello, how are you today?"}],
            "stream": True,
        }
    ).encode()
    status, raw = http(
        "POST",
        f"{fake.base}/v1/chat/completions",
        body,
        auth_headers(UPSTREAM_KEY, {"x-fake-chunks": str(chunks)}),
    )
    if status != 200:
        raise RuntimeError(f"reference stream from the fake upstream: HTTP {status}")
    text, n, done = parse_sse(raw)
    if not done or not n:
        raise RuntimeError("reference stream from the fake upstream has no chunks or no [DONE]")
    return text, n


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout
    return out.split(" Copyright")[0].strip()


def pick_stream_python(a: argparse.Namespace) -> str | None:
    cands = [a.stream_python] if a.stream_python else []
    cands += [sys.executable, os.path.join(a.proxy_venv, "bin", "python")]
    for py in cands:
        if py and os.path.exists(py) and has_aiohttp(py):
            return py
    return None


def main_run(a: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(stop_all)
    # 1000 streams through a gateway need ~2000 descriptors in it; children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    wrk = shutil.which(a.wrk) or (a.wrk if os.path.exists(a.wrk) else None)
    if not wrk:
        log(f"wrk not found ({a.wrk}): apt-get install -y wrk")
        return 2
    a.wrk = wrk
    fake_bin = resolve_cmd([a.fake_upstream])[0]
    if not os.path.exists(fake_bin):
        log(
            f"fake upstream binary not found: {fake_bin}; build it with: "
            "cargo build --release --features server --bin llmux-fake-upstream"
        )
        return 2
    contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        log(f"unknown contender(s) {bad}; choose from {CONTENDERS}")
        return 2
    if "fake" not in contenders:
        log("note: without the 'fake' contender there is no ceiling, ratio or added latency")

    tmp = tempfile.mkdtemp(prefix="llmux-gateway-bench-")
    cfg = os.path.join(tmp, "gateway.yaml")
    stream_python = pick_stream_python(a) if a.streams > 0 else None
    if a.streams > 0 and stream_python is None:
        log("no interpreter with aiohttp: the streams scenario will be skipped")

    cmdline = shlex.join([sys.executable, *sys.argv])
    facts: dict[str, Any] = {
        "command": cmdline,
        "nproc": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "wrk": wrk_version(wrk),
        "fake_upstream": fake_bin,
        "upstream_threads": a.upstream_threads,
        "wrk_threads": a.wrk_threads,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "stream_python": stream_python,
        "loadavg_start": os.getloadavg(),
    }
    results: dict[str, dict] = {}
    fake = None
    try:
        fake = Fake(fake_bin, a.upstream_threads, tmp)
        log(f"fake upstream listening on {fake.port} (pid {fake.proc.pid})")
        with open(cfg, "w") as f:
            f.write(gateway_yaml(fake.port, a.stream_chunk_delay_ms, a.stream_chunks))
        expect = reference_stream(fake, a.stream_chunks)
        for c in contenders:
            log(f"=== {LABELS[c]} ===")
            try:
                kw = {"stream_python": stream_python, "expect": expect}
                results[c] = run_contender(c, a, fake, tmp, cfg, **kw)
            except NotRun as e:
                log(f"{c}: NOT RUN: {e}")
                results[c] = {"error": f"not run: {e}"}
            if c == "litellm" and "version" in results[c]:
                facts["litellm_version"] = results[c]["version"]
    finally:
        stop(fake.proc if fake else None)
        stop_all()
        if a.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    facts["loadavg_end"] = os.getloadavg()

    limit = results.get("litellm", {}).get("pool_limit")
    pool = (
        f"upstream pool AIOHTTP_CONNECTOR_LIMIT(_PER_HOST)={limit}"
        if limit
        else "LiteLLM's default upstream pool (500 connections per host)"
    )
    out = ["# LLMux gateway benchmark", "", f"Command: `{cmdline}`", ""]
    out += [
        f"- machine: {facts['nproc']} cores, {facts['platform']}; load average at start "
        f"{facts['loadavg_start'][0]:.2f}, at end {facts['loadavg_end'][0]:.2f}",
        f"- fake upstream: `{fake_bin}`, {a.upstream_threads} worker thread(s); "
        f"{facts['wrk']}, {a.wrk_threads} thread(s), {a.warmup:g} s warm-up per contender",
        f"- llmux: `{results.get('llmux', {}).get('command', a.llmux_cmd)}`",
        f"- LiteLLM proxy: {facts.get('litellm_version', '?')}, "
        f"`{results.get('litellm', {}).get('command', a.proxy_venv)}`, {pool}",
        "- RSS is VmRSS summed over the contender's process tree; wrk counts responses with "
        "status ≥ 400 as non-2xx",
        "",
    ]
    out += report(results, a)
    print("\n".join(out), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"facts": facts, "results": results}, f, indent=2)
        log(f"JSON written to {a.json}")
    return 0


def main() -> int:
    fmt_cls = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt_cls)
    p.add_argument(
        "--fake-upstream",
        default="target/release/llmux-fake-upstream",
        help="fake upstream binary (default: target/release/llmux-fake-upstream)",
    )
    p.add_argument(
        "--llmux-cmd",
        default="target/release/llmux serve",
        help="command that starts the llmux gateway; --config/--port/--host are appended",
    )
    p.add_argument("--proxy-venv", default=os.path.join(REPO, ".bench-proxy-venv"))
    p.add_argument(
        "--setup-proxy-venv",
        action="store_true",
        help="create the proxy venv from benches/requirements-proxy.txt if it is missing",
    )
    p.add_argument("--litellm-workers", type=int, default=1, help="LiteLLM --num_workers")
    p.add_argument(
        "--litellm-default-pool",
        action="store_true",
        help="keep LiteLLM's upstream pool limits (500 per host): streams beyond that queue",
    )
    p.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help="comma-separated subset of fake,llmux,litellm (default: all)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up seconds (2; 0 = none)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--moderate-connections", type=int, default=8)
    p.add_argument(
        "--moderate-pause-ms",
        type=float,
        default=4,
        help="pause per connection between requests in the moderate-load run (0: none)",
    )
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--upstream-threads", type=int, default=1)
    p.add_argument("--streams", type=int, default=1000, help="concurrent streams (0 = skip)")
    p.add_argument("--stream-chunks", type=int, default=5, help="content chunks per stream (5)")
    p.add_argument(
        "--stream-chunk-delay-ms",
        type=int,
        default=8000,
        help="delay before each chunk (8000): streams last chunks x delay, and the gateway "
        "relays streams / delay chunks per second",
    )
    p.add_argument("--stream-python", help="interpreter with aiohttp for the stream client")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--keep-tmp", action="store_true", help="keep the config and gateway logs")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--stream-worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.stream_worker:
        stream_worker(json.loads(a.stream_worker))
        return 0
    return main_run(a)


if __name__ == "__main__":
    sys.exit(main())
