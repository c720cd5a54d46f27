"""``CustomLogger``: subclass it and put an instance in ``llmux.callbacks``.

Same method names and signatures as LiteLLM's. Logging methods (``log_*`` and their
``async_`` forms) run off the request path, in a background thread (sync) or a background
event loop (async); a slow or raising logger does not slow or fail requests. Unlike LiteLLM,
sync methods also fire for async calls, and async methods for sync calls.
``async_pre_call_hook`` runs on the request path, before the call: it may return a modified
request dict, return a string to reject the call (``RejectedRequestError``), or raise.
"""

from __future__ import annotations

from typing import Any


class CustomLogger:
    def __init__(self, **kwargs: Any) -> None:
        pass

    # sync logging
    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        pass

    def log_post_api_call(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    def log_stream_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        pass

    # async logging
    async def async_log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        pass

    async def async_log_stream_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        pass

    # on the request path
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
    ) -> Any:
        return None
