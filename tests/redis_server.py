"""Real redis-server processes for the tests: started on free ports, killed at the end.

A test never skips because Redis is missing: it fails and says what to install.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional

INSTALL_HINT = (
    "redis-server is required by these tests: install it (Debian/Ubuntu: apt-get install redis-server)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server on a free port (or a given one, to restart it)."""

    def __init__(self, port: Optional[int] = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError(INSTALL_HINT)
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="llmux-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
