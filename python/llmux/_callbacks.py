"""Callbacks: LiteLLM's ``callbacks`` / ``success_callback`` / ``failure_callback`` /
``input_callback``, run off the request path.

A finished call puts one event on a bounded queue (``put_nowait``: a full queue drops the
event and counts it, it never blocks a request). A daemon thread drains the queue and calls
the sync callbacks; async ones are scheduled on a background event loop. A callback that
raises is counted and logged, and the next one runs. ``stats()`` returns the counters;
``flush(timeout)`` waits until the queue is empty (also run at exit, briefly).

The only work on the request path is building the event, and ``async_pre_call_hook``, which by
its nature must run before the call.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from .exceptions import RejectedRequestError
from .integrations.custom_logger import CustomLogger

__all__ = ["Call", "flush", "stats"]

log = logging.getLogger("llmux.callbacks")

QUEUE_SIZE = 10_000
PRE_CALL_HOOK_TIMEOUT = 30.0

_queue: queue.Queue[tuple] = queue.Queue(maxsize=QUEUE_SIZE)
_counters: Dict[str, int] = {"enqueued": 0, "dropped": 0, "delivered": 0, "failed": 0}
_lock = threading.Lock()
_worker: Optional[threading.Thread] = None
_loop: Optional[asyncio.AbstractEventLoop] = None

# LLMux's own call options: not model parameters, so not in ``optional_params``.
_OWN = frozenset(
    {
        "api_key",
        "api_base",
        "base_url",
        "api_version",
        "timeout",
        "request_timeout",
        "stream_timeout",
        "num_retries",
        "max_retries",
        "extra_headers",
        "headers",
        "extra_body",
        "metadata",
        "mock_response",
        "drop_params",
        "additional_drop_params",
        "custom_llm_provider",
        "organization",
        "azure_ad_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "cache",
        "caching",
    }
)


def stats() -> Dict[str, int]:
    """Counters: events enqueued, dropped (queue full), delivered to callbacks, failed."""
    with _lock:
        return dict(_counters, queued=_queue.qsize())


def _count(name: str, n: int = 1) -> None:
    with _lock:
        _counters[name] += n


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="llmux-callbacks-aio", daemon=True).start()
            _loop = loop
        return _loop


def _ensure_worker() -> None:
    global _worker
    if _worker is not None:
        return
    with _lock:
        if _worker is None:
            _worker = threading.Thread(target=_drain, name="llmux-callbacks", daemon=True)
            _worker.start()


def _overrides(obj: Any, name: str) -> bool:
    """Whether a CustomLogger subclass defines ``name`` itself (the base ones do nothing)."""
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(CustomLogger, name, None)


def _run_one(fn: Callable[..., Any], args: tuple) -> None:
    try:
        out = fn(*args)
        if asyncio.iscoroutine(out):
            fut = asyncio.run_coroutine_threadsafe(out, _background_loop())
            fut.add_done_callback(_async_done)
        else:
            _count("delivered")
    except Exception:  # noqa: BLE001 - a callback's failure must not escape
        _count("failed")
        log.exception("llmux callback %r failed", fn)


def _async_done(fut: Any) -> None:
    if fut.exception() is not None:
        _count("failed")
        log.error("llmux async callback failed: %r", fut.exception())
    else:
        _count("delivered")


def _dispatch(event: tuple) -> None:
    kind, loggers, funcs, args = event
    if kind == "pre":
        for lg in loggers:
            if _overrides(lg, "log_pre_api_call"):
                _run_one(lg.log_pre_api_call, args)
            if _overrides(lg, "async_log_pre_api_call"):
                _run_one(lg.async_log_pre_api_call, args)
        for fn in funcs:
            _run_one(fn, (args[2],))
        return
    sync_name, async_name = {
        "success": ("log_success_event", "async_log_success_event"),
        "failure": ("log_failure_event", "async_log_failure_event"),
        "stream": ("log_stream_event", "async_log_stream_event"),
    }[kind]
    for lg in loggers:
        if _overrides(lg, sync_name):
            _run_one(getattr(lg, sync_name), args)
        if _overrides(lg, async_name):
            _run_one(getattr(lg, async_name), args)
    for fn in funcs:
        _run_one(fn, args)


def _drain() -> None:
    while True:
        event = _queue.get()
        try:
            _dispatch(event)
        finally:
            _queue.task_done()


def _enqueue(event: tuple) -> None:
    _ensure_worker()
    try:
        _queue.put_nowait(event)
        _count("enqueued")
    except queue.Full:
        _count("dropped")


def flush(timeout: float = 5.0) -> bool:
    """Waits until every queued event was handed to its callbacks; False on timeout."""
    end = time.monotonic() + timeout
    while _queue.unfinished_tasks:
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


atexit.register(flush, 1.0)


_warned: set = set()


def _warn_named(*lists: List[Any]) -> None:
    """LiteLLM's named integrations ("langfuse", "otel", ...) are not built in: say so once."""
    for lst in lists:
        for item in lst:
            if isinstance(item, str) and item not in _warned:
                _warned.add(item)
                log.warning("llmux: callback %r is a LiteLLM integration name; llmux ignores it", item)


def _plain(obj: Any) -> Any:
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


class Call:
    """One call's callback bookkeeping: built only when some callback is registered."""

    __slots__ = (
        "call_type",
        "model",
        "messages",
        "kwargs",
        "stream",
        "start",
        "call_id",
        "loggers",
        "success",
        "failure",
    )

    def __init__(
        self,
        call_type: str,
        model: str,
        messages: Any,
        kwargs: dict,
        loggers: List[Any],
        success: List[Any],
        failure: List[Any],
        input_fns: List[Any],
    ) -> None:
        self.call_type = call_type
        self.model = model
        self.messages = messages
        self.kwargs = kwargs
        self.stream = bool(kwargs.get("stream"))
        self.start = datetime.datetime.now()
        self.call_id = str(uuid.uuid4())
        _warn_named(loggers, success, failure, input_fns)
        self.loggers = [c for c in loggers if isinstance(c, CustomLogger)]
        self.success = [f for f in success if callable(f)]
        self.failure = [f for f in failure if callable(f)]
        if self.loggers or input_fns:
            _enqueue(
                (
                    "pre",
                    self.loggers,
                    [f for f in input_fns if callable(f)],
                    (model, messages, self._log_kwargs()),
                )
            )

    # --- request path hooks ---------------------------------------------------------------
    def _hook_data(self) -> dict:
        return dict(self.kwargs, model=self.model, messages=self.messages)

    def _apply_hook_result(self, out: Any) -> None:
        if isinstance(out, str):
            raise RejectedRequestError(out, self.model, None, self._hook_data())
        if isinstance(out, dict):
            self.model = out.pop("model", self.model)
            self.messages = out.pop("messages", self.messages)
            self.kwargs = out

    def _hooks(self) -> List[Any]:
        return [lg for lg in self.loggers if _overrides(lg, "async_pre_call_hook")]

    async def apre_call(self) -> None:
        for lg in self._hooks():
            self._apply_hook_result(
                await lg.async_pre_call_hook(None, None, self._hook_data(), self.call_type)
            )

    def pre_call(self) -> None:
        for lg in self._hooks():
            fut = asyncio.run_coroutine_threadsafe(
                lg.async_pre_call_hook(None, None, self._hook_data(), self.call_type), _background_loop()
            )
            self._apply_hook_result(fut.result(PRE_CALL_HOOK_TIMEOUT))

    # --- events ---------------------------------------------------------------------------
    def _log_kwargs(
        self,
        response: Any = None,
        exc: Optional[BaseException] = None,
        end: Any = None,
        hidden: Optional[dict] = None,
    ) -> dict:
        if hidden is None:
            hidden = getattr(response, "_hidden_params", None) or {}
        usage = _plain(response.get("usage")) if response is not None and hasattr(response, "get") else None
        usage = usage or {}
        end = end or datetime.datetime.now()
        meta = self.kwargs.get("metadata") or {}
        provider = hidden.get("custom_llm_provider") or getattr(exc, "llm_provider", None)
        cost = hidden.get("response_cost")
        slo = {
            "id": response.get("id") if response is not None and hasattr(response, "get") else None,
            "litellm_call_id": self.call_id,
            "call_type": self.call_type,
            "status": "failure" if exc is not None else "success",
            "stream": self.stream,
            "model": self.model,
            "model_group": hidden.get("model_group") or "",
            "model_id": hidden.get("model_id") or "",
            "custom_llm_provider": provider,
            "api_base": hidden.get("api_base") or "",
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "response_cost": cost if cost is not None else 0.0,
            "cache_hit": bool(hidden.get("cache_hit", False)),
            "startTime": self.start.timestamp(),
            "endTime": end.timestamp(),
            "response_time": (end - self.start).total_seconds(),
            "metadata": meta,
            "request_tags": list(meta.get("tags") or []) if isinstance(meta, dict) else [],
            "hidden_params": dict(hidden),
            "messages": self.messages,
            "response": _plain(response) if response is not None else None,
            "error_str": str(exc) if exc is not None else None,
            "error_information": (
                {"error_class": type(exc).__name__, "error_code": getattr(exc, "status_code", None)}
                if exc is not None
                else None
            ),
        }
        out = {
            "model": self.model,
            "messages": self.messages,
            "call_type": self.call_type,
            "litellm_call_id": self.call_id,
            "stream": self.stream,
            "custom_llm_provider": provider,
            "model_id": slo["model_id"] or None,
            "optional_params": {k: v for k, v in self.kwargs.items() if k not in _OWN and k != "stream"},
            "litellm_params": {
                "api_base": hidden.get("api_base") or self.kwargs.get("api_base"),
                "custom_llm_provider": provider,
                "metadata": meta,
                "litellm_call_id": self.call_id,
            },
            "start_time": self.start,
            "end_time": end,
            "response_cost": cost,
            "cache_hit": bool(hidden.get("cache_hit", False)),
            "standard_logging_object": slo,
        }
        if exc is not None:
            out["exception"] = exc
        return out

    def succeeded(self, response: Any) -> None:
        if self.loggers or self.success:
            end = datetime.datetime.now()
            args = (self._log_kwargs(response, end=end), response, self.start, end)
            _enqueue(("success", self.loggers, self.success, args))

    def failed(self, exc: BaseException, hidden: Optional[dict] = None) -> None:
        if self.loggers or self.failure:
            end = datetime.datetime.now()
            args = (self._log_kwargs(None, exc, end, hidden), None, self.start, end)
            _enqueue(("failure", self.loggers, self.failure, args))

    def wants_chunks(self) -> bool:
        return any(
            _overrides(lg, "log_stream_event") or _overrides(lg, "async_log_stream_event")
            for lg in self.loggers
        )

    def chunk(self, chunk: Any) -> None:
        now = datetime.datetime.now()
        _enqueue(("stream", self.loggers, [], (self._log_kwargs(chunk, end=now), chunk, self.start, now)))
