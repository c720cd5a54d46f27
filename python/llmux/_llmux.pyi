"""Type stubs for the native engine module ``llmux._llmux`` (kept true by mypy.stubtest)."""

from collections.abc import Awaitable
from typing import Any, Optional

from typing_extensions import final

__all__ = [
    "NativeStream",
    "__version__",
    "acompletion",
    "acompletion_stream",
    "aembedding",
    "completion",
    "completion_stream",
    "embedding",
    "error_kinds",
    "serve_fake_upstream",
]
__version__: str

def completion(
    model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Blocking chat completion (GIL released). Returns ``(response_dict, hidden_params)``."""

def acompletion(
    model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None
) -> Awaitable[tuple[dict[str, Any], dict[str, Any]]]: ...
def completion_stream(model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None) -> NativeStream:
    """Opens a chat stream (blocking until the upstream answers)."""

def acompletion_stream(
    model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None
) -> Awaitable[NativeStream]: ...
def embedding(
    model: str, input: Any, kwargs: Optional[dict[str, Any]] = None
) -> tuple[dict[str, Any], dict[str, Any]]: ...
def aembedding(
    model: str, input: Any, kwargs: Optional[dict[str, Any]] = None
) -> Awaitable[tuple[dict[str, Any], dict[str, Any]]]: ...
def error_kinds() -> list[tuple[str, str, bool, int]]:
    """Every error kind: ``(code, exception class name, retryable, default status)``."""

def serve_fake_upstream(host: str = "127.0.0.1", port: int = 0, threads: int = 2) -> None:
    """Serves the fake OpenAI upstream until SIGINT/SIGTERM; prints ``LISTENING <port>``."""

@final
class NativeStream:
    @property
    def hidden_params(self) -> dict[str, Any]: ...
    def next_batch(self) -> Optional[list[tuple[dict[str, Any], Optional[dict[str, Any]]]]]: ...
    def anext_batch(self) -> Awaitable[Optional[list[tuple[dict[str, Any], Optional[dict[str, Any]]]]]]: ...
    def close(self) -> None: ...
