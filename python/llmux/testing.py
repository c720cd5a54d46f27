"""The fake OpenAI upstream and a gateway process, for tests, the demo and benchmarks.

``python -m llmux.testing --port 8000`` serves it until interrupted. From Python,
``FakeUpstream()`` starts it in a child process (a real OS process, real sockets) and gives
its ``base_url``; ``stats(key)`` reads the per-key counters (requests, completed, aborted, the
last request body and headers) that tests assert on. Faults are asked for per request with
``x-fake-*`` headers (see the README and ``src/testing/fake_upstream.rs``).

``Gateway(config_path)`` runs ``llmux serve`` in a child process on a free port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from typing import Any, Optional

__all__ = ["FakeUpstream", "Gateway", "main"]


class FakeUpstream:
    """A fake upstream in a child process. Use as a context manager or call ``stop()``."""

    def __init__(self, port: int = 0, threads: int = 2, host: str = "127.0.0.1") -> None:
        self.host = host
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmux.testing",
                "--host",
                host,
                "--port",
                str(port),
                "--threads",
                str(threads),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.port = int(line.split()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (with ``/v1``)."""
        return f"{self.url}/v1"

    def stats(self, key: str = "") -> dict[str, Any]:
        q = urllib.parse.urlencode({"key": key})
        with urllib.request.urlopen(f"{self.url}/__stats?{q}", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Gateway:
    """``llmux serve`` in a child process on a free port of 127.0.0.1. Its JSON log (stderr)
    goes to a file: ``log()`` reads it. ``stop()`` sends SIGTERM and waits for the exit."""

    def __init__(self, config_path: Any, env: Optional[dict[str, str]] = None) -> None:
        self.config_path = str(config_path)
        self.log_file = tempfile.NamedTemporaryFile(prefix="llmux-gateway-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmux", "serve", "--config", self.config_path, "--host", "127.0.0.1"]
            + ["--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"gateway did not start ({line!r}); log:\n{self.log()}")
        self.port = int(line.split()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        with open(self.log_file.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        os.unlink(self.log_file.name)


def main(argv: Optional[list] = None) -> None:
    import argparse

    from . import _llmux

    p = argparse.ArgumentParser(prog="python -m llmux.testing", description="Serve the fake OpenAI upstream.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    try:
        _llmux.serve_fake_upstream(a.host, a.port, a.threads)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
