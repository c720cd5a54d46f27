"""Shared fixtures: one fake upstream (a real child process on a real socket) per session.

Tests ask for faults per request with ``x-fake-*`` headers and read the upstream's own counters
with ``fake.stats(key)``, so they can run in any order. ``key()`` makes a fresh counter name.
"""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("OPENAI_API_KEY", "sk-test-0123456789abcdef")

from llmux.testing import FakeUpstream  # noqa: E402

MSGS = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="session")
def fake():
    with FakeUpstream(threads=1) as fu:
        yield fu


@pytest.fixture
def key():
    return f"k-{uuid.uuid4().hex[:12]}"


def hdr(key: str, **faults: object) -> dict:
    """``extra_headers`` naming the counter ``key`` and the faults: hdr(k, status=429) ->
    {"x-fake-key": k, "x-fake-status": "429"}."""
    h = {"x-fake-key": key}
    for name, value in faults.items():
        h["x-fake-" + name.replace("_", "-")] = str(value)
    return h
