"""Type stubs for the native engine module ``llmux._llmux`` (kept true by mypy.stubtest)."""

from typing import Any, Optional

from typing_extensions import TypeAlias, final

__all__ = [
    "Bridge",
    "NativeAudio",
    "NativeRouter",
    "NativeStream",
    "TaskHandle",
    "__version__",
    "acompletion",
    "acompletion_stream",
    "aembedding",
    "aimage_edit",
    "aimage_generation",
    "aspeech",
    "atranscription",
    "cache_stats",
    "completion",
    "completion_stream",
    "cost_for",
    "current_spend",
    "embedding",
    "error_kinds",
    "image_edit",
    "image_generation",
    "load_price_file",
    "model_cost",
    "model_entry",
    "rate_limit_stats",
    "register_model",
    "serve",
    "serve_fake_upstream",
    "set_budget",
    "set_cache",
    "set_rate_limit",
    "set_request_log",
    "speech",
    "token_count",
    "transcription",
    "unpriced_count",
    "watch_price_file",
]
__version__: str

# A batch of stream items: (chunk dict, hidden usage dict or None) pairs; a trailing None
# marks the end of the stream.
_Batch: TypeAlias = list[Optional[tuple[dict[str, Any], Optional[dict[str, Any]]]]]
_Unary: TypeAlias = tuple[dict[str, Any], dict[str, Any]]

def completion(model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None) -> _Unary:
    """Blocking chat completion (GIL released): ``(response_dict, hidden_params)``."""

def completion_stream(
    model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None
) -> tuple[NativeStream, Optional[_Batch]]:
    """Opens a chat stream and pulls its first batch (blocking, GIL released)."""

def embedding(model: str, input: Any, kwargs: Optional[dict[str, Any]] = None) -> _Unary: ...
def acompletion(
    bridge: Bridge, fut: Any, model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None
) -> TaskHandle:
    """Starts a chat completion; the asyncio future ``fut`` receives ``(response, hidden)``."""

def acompletion_stream(
    bridge: Bridge, fut: Any, model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None
) -> TaskHandle:
    """Opens a chat stream; ``fut`` receives ``(NativeStream, first_batch)``."""

def aembedding(
    bridge: Bridge, fut: Any, model: str, input: Any, kwargs: Optional[dict[str, Any]] = None
) -> TaskHandle: ...
def image_generation(model: str, prompt: str, kwargs: Optional[dict[str, Any]] = None) -> _Unary:
    """Blocking image generation (GIL released): ``(response_dict, hidden_params)``."""

def aimage_generation(
    bridge: Bridge, fut: Any, model: str, prompt: str, kwargs: Optional[dict[str, Any]] = None
) -> TaskHandle: ...
def speech(
    model: str, input: str, kwargs: Optional[dict[str, Any]] = None
) -> tuple[NativeAudio, dict[str, Any]]:
    """Opens a speech call (blocking, GIL released): ``(NativeAudio, hidden_params)``."""

def aspeech(
    bridge: Bridge, fut: Any, model: str, input: str, kwargs: Optional[dict[str, Any]] = None
) -> TaskHandle: ...

@final
class NativeAudio:
    """An audio body read as it arrives."""

    @property
    def content_type(self) -> str: ...
    def next_chunk(self) -> Optional[bytes]: ...
    def anext_chunk(self, bridge: Bridge, fut: Any) -> TaskHandle: ...
    def close(self) -> None: ...

def transcription(
    model: str,
    path: Optional[Any],
    data: Optional[bytes],
    filename: str,
    kwargs: Optional[dict[str, Any]] = None,
) -> _Unary:
    """Blocking transcription (GIL released); the file at ``path`` is streamed from disk."""

def atranscription(
    bridge: Bridge,
    fut: Any,
    model: str,
    path: Optional[Any],
    data: Optional[bytes],
    filename: str,
    kwargs: Optional[dict[str, Any]] = None,
) -> TaskHandle: ...

_File: TypeAlias = tuple[Optional[Any], Optional[bytes], str]

def image_edit(
    model: str,
    prompt: str,
    images: list[_File],
    mask: Optional[_File] = None,
    kwargs: Optional[dict[str, Any]] = None,
) -> _Unary:
    """Blocking image edit (GIL released); each file is ``(path, data, filename)``."""

def aimage_edit(
    bridge: Bridge,
    fut: Any,
    model: str,
    prompt: str,
    images: list[_File],
    mask: Optional[_File] = None,
    kwargs: Optional[dict[str, Any]] = None,
) -> TaskHandle: ...
def error_kinds() -> list[tuple[str, str, bool, int]]:
    """Every error kind: ``(code, exception class name, retryable, default status)``."""

def serve_fake_upstream(host: str = "127.0.0.1", port: int = 0, threads: int = 2) -> None:
    """Serves the fake OpenAI upstream until SIGINT/SIGTERM; prints ``LISTENING <port>``."""

def serve(config: Any, host: Optional[str] = None, port: Optional[int] = None) -> None:
    """Serves the gateway from a config file until SIGTERM or Ctrl-C; prints ``LISTENING <port>``."""

@final
class Bridge:
    """Delivers engine results to one asyncio event loop (see ``llmux._aio``)."""

    def __new__(cls) -> Bridge: ...
    @property
    def fd(self) -> int: ...
    def drain(self) -> None: ...

@final
class TaskHandle:
    def abort(self) -> None: ...

@final
class NativeStream:
    @property
    def hidden_params(self) -> dict[str, Any]: ...
    def next_batch(self) -> Optional[_Batch]: ...
    def anext_batch(self, bridge: Bridge, fut: Any) -> TaskHandle: ...
    def close(self) -> None: ...

def model_entry(model: str, provider: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The price-table entry of a model, or None."""

def cost_for(
    model: str, usage: dict[str, Any], provider: Optional[str] = None
) -> Optional[tuple[float, float]]:
    """``(prompt_cost, completion_cost)`` in USD, or None when the model has no price."""

def register_model(entries: dict[str, Any]) -> None: ...
def load_price_file(path: Any) -> int: ...
def model_cost() -> dict[str, Any]: ...
def unpriced_count() -> int: ...
def token_count(model: str, text: Any = None, messages: Any = None, tools: Any = None) -> int:
    """Tokens of ``text`` (a string or list of strings) or of ``messages`` (+ ``tools``)."""

def watch_price_file(path: Any) -> int:
    """Loads a price file and reloads it whenever it changes."""

@final
class NativeRouter:
    """The engine's router; ``llmux.Router`` wraps it."""

    def __new__(cls, model_list: list[Any], settings_dict: dict[str, Any]) -> NativeRouter: ...
    def completion(
        self, model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None, tags: list[str] = ...
    ) -> _Unary: ...
    def acompletion(
        self,
        bridge: Bridge,
        fut: Any,
        model: str,
        messages: Any,
        kwargs: Optional[dict[str, Any]] = None,
        tags: list[str] = ...,
    ) -> TaskHandle: ...
    def completion_stream(
        self, model: str, messages: Any, kwargs: Optional[dict[str, Any]] = None, tags: list[str] = ...
    ) -> tuple[NativeStream, Optional[_Batch]]: ...
    def acompletion_stream(
        self,
        bridge: Bridge,
        fut: Any,
        model: str,
        messages: Any,
        kwargs: Optional[dict[str, Any]] = None,
        tags: list[str] = ...,
    ) -> TaskHandle: ...
    def embedding(self, model: str, input: Any, kwargs: Optional[dict[str, Any]] = None) -> _Unary: ...
    def aembedding(
        self, bridge: Bridge, fut: Any, model: str, input: Any, kwargs: Optional[dict[str, Any]] = None
    ) -> TaskHandle: ...
    def image_generation(
        self, model: str, prompt: str, kwargs: Optional[dict[str, Any]] = None
    ) -> _Unary: ...
    def aimage_generation(
        self, bridge: Bridge, fut: Any, model: str, prompt: str, kwargs: Optional[dict[str, Any]] = None
    ) -> TaskHandle: ...
    def speech(
        self, model: str, input: str, kwargs: Optional[dict[str, Any]] = None
    ) -> tuple[NativeAudio, dict[str, Any]]: ...
    def aspeech(
        self, bridge: Bridge, fut: Any, model: str, input: str, kwargs: Optional[dict[str, Any]] = None
    ) -> TaskHandle: ...
    def transcription(
        self,
        model: str,
        path: Optional[Any],
        data: Optional[bytes],
        filename: str,
        kwargs: Optional[dict[str, Any]] = None,
    ) -> _Unary: ...
    def atranscription(
        self,
        bridge: Bridge,
        fut: Any,
        model: str,
        path: Optional[Any],
        data: Optional[bytes],
        filename: str,
        kwargs: Optional[dict[str, Any]] = None,
    ) -> TaskHandle: ...
    def image_edit(
        self,
        model: str,
        prompt: str,
        images: list[_File],
        mask: Optional[_File] = None,
        kwargs: Optional[dict[str, Any]] = None,
    ) -> _Unary: ...
    def deployment_stats(self) -> list[dict[str, Any]]: ...
    def rate_limit_stats(self) -> dict[str, Any]: ...
    def retry_budget(self) -> dict[str, int]: ...

def set_budget(
    max_budget: Optional[float],
    window: Optional[float] = None,
    per_user: bool = False,
    redis_url: Optional[str] = None,
) -> None: ...
def current_spend(user: Optional[str] = None) -> Optional[float]: ...
def set_rate_limit(config: Optional[dict[str, Any]], redis: Optional[dict[str, Any]] = None) -> None: ...
def rate_limit_stats() -> Optional[dict[str, Any]]: ...
def set_request_log(path: Any) -> None: ...
def set_cache(
    kind: Optional[str],
    mode: str = "default_on",
    namespace: Optional[str] = None,
    ttl_seconds: Optional[float] = None,
    max_entries: int = 200,
    redis_url: Optional[str] = None,
    prefix: Optional[str] = None,
) -> None:
    """Sets (``kind`` "local" or "redis") or removes (``None``) the response cache."""

def cache_stats() -> Optional[dict[str, Any]]:
    """The response cache's counters (hits, misses, stores, errors, degraded, backend)."""
