"""Python callbacks for ``llmux serve``: the gateway calls these from its hook on the request
pipeline (``litellm_settings.callbacks: [module.attribute, ...]``).

Each chat call through the gateway becomes one ``_callbacks.Call``: built before the upstream
call (``log_pre_api_call``, then ``async_pre_call_hook``, which may change the messages and
parameters or reject the call), and finished with the answer or the error (``log_success_event``
/ ``log_failure_event`` and their async forms, run off the request path like the SDK's).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._callbacks import Call
from .exceptions import RejectedRequestError
from .types import ModelResponse

__all__ = ["load_callbacks", "start_call", "succeeded", "failed"]


def load_callbacks(names: list) -> list:
    """The objects named ``module.attribute`` (a class is instantiated)."""
    out = []
    for name in names:
        module, _, attr = str(name).rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"litellm_settings.callbacks: cannot load '{name}': {e}") from e
        out.append(obj() if isinstance(obj, type) else obj)
    return out


def start_call(loggers: list, model: str, messages: list, params: dict) -> tuple:
    """Runs the pre-call hooks: ``(call, messages, params)`` to send, or ``(None, reason, None)``
    when a hook rejected the call."""
    call = Call("acompletion", model, messages, params, loggers, [], [], [])
    try:
        call.pre_call()
    except RejectedRequestError as e:
        return None, str(getattr(e, "message", e)), None
    return call, call.messages, call.kwargs


def succeeded(call: Any, response: dict, hidden: dict) -> None:
    call.succeeded(ModelResponse._from_native(response, hidden, hidden.get("_response_ms")))


def failed(call: Any, exc: BaseException, hidden: dict) -> None:
    call.failed(exc, hidden)
