"""LLMux: LiteLLM's API with a Rust engine.

``import llmux as litellm`` keeps a LiteLLM program working: ``completion``, ``acompletion``
(unary and ``stream=True``), ``embedding``, ``aembedding``, ``stream_chunk_builder``, the same
response objects and the same exception classes. Every request runs in Rust (one tokio runtime
and one connection pool per process); sync calls release the GIL while they wait.

Module settings mirror LiteLLM's: ``api_key``, ``api_base``, ``num_retries``,
``request_timeout``, ``drop_params``. A value given to a call wins over the module setting.
``llmux.cache = llmux.Cache(...)`` (or ``enable_cache()``) turns on the response cache.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from . import _llmux
from ._aio import run as _run
from ._audio import HttpxBinaryResponseContent, audio_file
from ._cost import (
    completion_cost,
    cost_per_token,
    get_max_tokens,
    get_model_info,
    register_model,
    set_pricing_file,
    supports_function_calling,
    supports_vision,
    token_counter,
)
from ._stream_wrapper import CustomStreamWrapper, LoggedStreamWrapper
from ._streaming import stream_chunk_builder
from .caching import Cache
from .exceptions import (
    LITELLM_EXCEPTION_TYPES,
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    AuthenticationError,
    BadGatewayError,
    BadRequestError,
    BudgetExceededError,
    ContentPolicyViolationError,
    ContextWindowExceededError,
    InternalServerError,
    JSONSchemaValidationError,
    MockException,
    NotFoundError,
    OpenAIError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    RejectedRequestError,
    ServiceUnavailableError,
    Timeout,
    UnprocessableEntityError,
    UnsupportedParamsError,
)
from .integrations.custom_logger import CustomLogger
from .router import Router
from .types import (
    ChatCompletionDeltaToolCall,
    ChatCompletionMessageToolCall,
    Choices,
    Delta,
    Embedding,
    EmbeddingResponse,
    Function,
    ImageObject,
    ImageResponse,
    Message,
    ModelResponse,
    ModelResponseStream,
    StreamingChoices,
    TranscriptionResponse,
    Usage,
)

__version__: str = _llmux.__version__

# LiteLLM-style module settings (None = not set).
api_key: Optional[str] = None
api_base: Optional[str] = None
num_retries: Optional[int] = None
request_timeout: float = float(os.getenv("REQUEST_TIMEOUT", "600"))
drop_params: bool = bool(os.getenv("LITELLM_DROP_PARAMS", ""))
suppress_debug_info: bool = False
set_verbose: bool = False
# LiteLLM's process-wide spend limit in USD: calls fail with BudgetExceededError once the
# priced spend reaches it. ``set_budget`` offers windows, per-user budgets and Redis sharing.
max_budget: Optional[float] = None
_budget_applied: Optional[float] = None
# Rate limit of every call of this process (the ``rate_limit`` block, as a dict): rpm / tpm /
# parallel requests per API key, user, team or model; ``distributed: True`` with a ``redis``
# entry shares it between processes. See ``set_rate_limit``.
rate_limit: Optional[Dict[str, Any]] = None
_rate_limit_applied: Any = None
# LiteLLM's response cache: ``llmux.cache = llmux.Cache(...)``; None turns it off. Handed to the
# engine when the next call starts (assign a new Cache to change the configuration).
cache: Optional[Cache] = None
_cache_applied: Optional[Cache] = None

# Callbacks (LiteLLM's names): CustomLogger instances in ``callbacks``; plain functions
# ``fn(kwargs, completion_response, start_time, end_time)`` in ``success_callback`` /
# ``failure_callback``; ``fn(kwargs)`` in ``input_callback``. They run off the request path;
# see ``llmux._callbacks``. Strings (LiteLLM's named integrations) are not supported and are
# ignored with a warning when a call starts.
callbacks: list = []
success_callback: list = []
failure_callback: list = []
input_callback: list = []


def _sync_engine_settings() -> None:
    """Hands module settings assigned since the last call (``max_budget``, ``cache``) to the
    engine; the Router's calls run them too."""
    if max_budget != _budget_applied:
        _sync_max_budget()
    if cache is not _cache_applied:
        _sync_cache()


def _apply_settings(kwargs: dict, call_type: Optional[str] = None) -> dict:
    _sync_engine_settings()
    if rate_limit != _rate_limit_applied:
        set_rate_limit(rate_limit)
    if call_type is not None and cache is not None and call_type not in cache.supported_call_types:
        kwargs["caching"] = False
    if api_key is not None and "api_key" not in kwargs:
        kwargs["api_key"] = api_key
    if api_base is not None and "api_base" not in kwargs and "base_url" not in kwargs:
        kwargs["api_base"] = api_base
    if num_retries is not None and "num_retries" not in kwargs:
        kwargs["num_retries"] = num_retries
    if drop_params and "drop_params" not in kwargs:
        kwargs["drop_params"] = True
    if "timeout" not in kwargs and "request_timeout" not in kwargs:
        kwargs["timeout"] = request_timeout
    return kwargs


def _sync_max_budget() -> None:
    global _budget_applied
    _llmux.set_budget(max_budget)
    _budget_applied = max_budget


def _sync_cache() -> None:
    global _cache_applied
    current = cache
    if current is None:
        _llmux.set_cache(None)
    elif isinstance(current, Cache):
        current._apply()
    else:
        raise TypeError(f"llmux.cache must be an llmux.Cache or None, got {type(current).__name__}")
    _cache_applied = current


def enable_cache(
    type: Any = "local",  # noqa: A002 - LiteLLM's name
    host: Optional[str] = None,
    port: Any = None,
    password: Optional[str] = None,
    supported_call_types: Optional[list] = None,
    **kwargs: Any,
) -> None:
    """LiteLLM's ``enable_cache``: sets ``llmux.cache = Cache(...)`` unless a cache is already
    set (``update_cache`` replaces it)."""
    global cache
    if cache is None:
        cache = Cache(
            type=type,
            host=host,
            port=port,
            password=password,
            supported_call_types=supported_call_types,
            **kwargs,
        )
    _sync_cache()


def update_cache(
    type: Any = "local",  # noqa: A002 - LiteLLM's name
    host: Optional[str] = None,
    port: Any = None,
    password: Optional[str] = None,
    supported_call_types: Optional[list] = None,
    **kwargs: Any,
) -> None:
    """LiteLLM's ``update_cache``: replaces ``llmux.cache`` with a new ``Cache(...)``."""
    global cache
    cache = Cache(
        type=type,
        host=host,
        port=port,
        password=password,
        supported_call_types=supported_call_types,
        **kwargs,
    )
    _sync_cache()


def disable_cache() -> None:
    """LiteLLM's ``disable_cache``: ``llmux.cache = None``."""
    global cache
    cache = None
    _sync_cache()


def set_budget(
    max_budget: Optional[float],
    window: Optional[float] = None,
    per_user: bool = False,
    redis_url: Optional[str] = None,
) -> None:
    """Spend limit in USD for every call of this process (``None`` removes it). ``window`` in
    seconds (default: the life of the process; 30 days in Redis), ``per_user`` counts each
    OpenAI ``user`` apart, ``redis_url`` shares the spend with every process on that Redis.
    Over the limit a call raises ``BudgetExceededError`` before reaching the provider."""
    global _budget_applied
    _llmux.set_budget(max_budget, window, per_user, redis_url)
    _budget_applied = globals()["max_budget"]


def set_rate_limit(config: Optional[Dict[str, Any]], redis: Optional[Dict[str, Any]] = None) -> None:
    """Limits every call of this process (``None`` removes the limit). ``config`` is the
    ``rate_limit`` block: ``requests_per_minute``, ``tokens_per_minute``,
    ``max_parallel_requests``, ``request_burst``, ``token_burst``, ``key_strategy``
    (``api_key`` | ``user`` | ``model`` | ``api_key_model`` | ``team``), ``distributed`` and
    ``on_redis_failure`` (``open`` | ``closed`` | ``local``), and ``tokens_per_image`` /
    ``tokens_per_audio_second`` (how images and audio count toward token limits; 0, the
    default, counts them only as requests), ``prefetch_ms`` (distributed limits: how long a
    block of admissions fetched ahead from Redis may be used, default 50; 0 asks Redis for every
    call). ``redis`` (or a ``redis`` entry in
    ``config``) is where distributed limits live: ``url``, or ``host``/``port``/``password``/
    ``db``/``tls``, or ``cluster_nodes``, or ``sentinel: {master_name, nodes}``. A call over a
    limit raises ``RateLimitError`` with the time to wait, before reaching the provider."""
    global _rate_limit_applied
    cfg = dict(config) if config is not None else None
    if cfg is not None and "redis" in cfg:
        redis = cfg.pop("redis")
    _llmux.set_rate_limit(cfg, redis)
    _rate_limit_applied = globals()["rate_limit"]


def rate_limit_stats() -> Optional[Dict[str, Any]]:
    """The rate limiter's counters (admitted, denied, Redis errors, fallback decisions, breaker
    state, live processes, script calls, blocks fetched ahead and the admissions made from
    them), or None without a rate limit."""
    return _llmux.rate_limit_stats()


def current_spend(user: Optional[str] = None) -> Optional[float]:
    """Spend counted by the budget so far (global, or of ``user``); None without a budget."""
    return _llmux.current_spend(user)


def set_request_log(path: Optional[str]) -> None:
    """Appends one JSON line per call (request, response or error, usage, latency) to ``path``,
    with credentials redacted; ``None`` stops."""
    _llmux.set_request_log(path)


def _mock_object(model: str, mock: Any, stream: bool) -> Any:
    """``mock_response`` given as an exception or a dict (strings are handled by the engine)."""
    if isinstance(mock, BaseException):
        raise mock
    if isinstance(mock, dict):
        if stream:
            raise BadRequestError(
                "mock_response as a dict is not supported with stream=True", "openai", model
            )
        d = dict(mock)
        d.setdefault("model", model)
        return ModelResponse(**d)
    raise BadRequestError(
        f"mock_response must be a string, a dict or an exception, got {type(mock).__name__}", "openai", model
    )


def _completion(model: str, messages: Any, kwargs: dict) -> Union[ModelResponse, CustomStreamWrapper]:
    stream = kwargs.pop("stream", False)
    _apply_settings(kwargs, "completion")
    mock = kwargs.get("mock_response")
    if mock is not None and not isinstance(mock, str):
        return _mock_object(model, mock, bool(stream))
    if stream:
        native, first = _llmux.completion_stream(model, messages, kwargs)
        return CustomStreamWrapper(native, model, first)
    d, hidden = _llmux.completion(model, messages, kwargs)
    return ModelResponse._from_native(d, hidden, hidden["_response_ms"])


async def _acompletion(model: str, messages: Any, kwargs: dict) -> Union[ModelResponse, CustomStreamWrapper]:
    stream = kwargs.pop("stream", False)
    _apply_settings(kwargs, "acompletion")
    mock = kwargs.get("mock_response")
    if mock is not None and not isinstance(mock, str):
        return _mock_object(model, mock, bool(stream))
    if stream:
        native, first = await _run(_llmux.acompletion_stream, model, messages, kwargs)
        return CustomStreamWrapper(native, model, first)
    d, hidden = await _run(_llmux.acompletion, model, messages, kwargs)
    return ModelResponse._from_native(d, hidden, hidden["_response_ms"])


def _embedding(model: str, input: Any, kwargs: dict) -> EmbeddingResponse:  # noqa: A002
    _apply_settings(kwargs)
    d, hidden = _llmux.embedding(model, input, kwargs)
    return EmbeddingResponse._from_native(d, hidden, hidden["_response_ms"])


async def _aembedding(model: str, input: Any, kwargs: dict) -> EmbeddingResponse:  # noqa: A002
    _apply_settings(kwargs)
    d, hidden = await _run(_llmux.aembedding, model, input, kwargs)
    return EmbeddingResponse._from_native(d, hidden, hidden["_response_ms"])


def _new_call(call_type: str, model: str, messages: Any, kwargs: dict) -> Any:
    from ._callbacks import Call

    return Call(
        call_type, model, messages, kwargs, callbacks, success_callback, failure_callback, input_callback
    )


def _finish(call: Any, out: Any) -> Any:
    if isinstance(out, CustomStreamWrapper):
        return LoggedStreamWrapper(out, call)
    call.succeeded(out)
    return out


def completion(
    model: str, messages: Optional[list] = None, **kwargs: Any
) -> Union[ModelResponse, CustomStreamWrapper]:
    """Chat completion, LiteLLM's ``completion``.

    Takes OpenAI's chat parameters (``temperature``, ``max_tokens``, ``tools``, ``response_format``,
    ``stream``, ``stream_options``, ...), passed upstream as given, plus LiteLLM's own:
    ``api_base``/``base_url``, ``api_key``, ``api_version``, ``timeout`` (seconds, for the whole
    call including retries), ``num_retries``, ``extra_headers``, ``extra_body``, ``drop_params``,
    ``additional_drop_params``, ``mock_response``, ``metadata``, ``custom_llm_provider``, and the
    cache controls ``caching=True/False`` and ``cache={"no-cache", "no-store", "ttl", "s-maxage",
    "namespace", "use-cache"}`` (see ``llmux.Cache``).
    """
    if messages is None:
        messages = kwargs.pop("messages", [])
    if not (callbacks or success_callback or failure_callback or input_callback):
        return _completion(model, messages, kwargs)
    call = _new_call("completion", model, messages, kwargs)
    try:
        call.pre_call()
        return _finish(call, _completion(call.model, call.messages, call.kwargs))
    except Exception as exc:
        call.failed(exc)
        raise


async def acompletion(
    model: str, messages: Optional[list] = None, **kwargs: Any
) -> Union[ModelResponse, CustomStreamWrapper]:
    """Async chat completion, LiteLLM's ``acompletion``. With ``stream=True``, await it to get
    the stream, then ``async for`` over the chunks."""
    if messages is None:
        messages = kwargs.pop("messages", [])
    if not (callbacks or success_callback or failure_callback or input_callback):
        return await _acompletion(model, messages, kwargs)
    call = _new_call("acompletion", model, messages, kwargs)
    try:
        await call.apre_call()
        return _finish(call, await _acompletion(call.model, call.messages, call.kwargs))
    except Exception as exc:
        call.failed(exc)
        raise


def embedding(model: str, input: Any = None, **kwargs: Any) -> EmbeddingResponse:  # noqa: A002
    """Embeddings, LiteLLM's ``embedding``: ``input`` is a string, a list of strings or of
    token lists; ``dimensions`` and ``encoding_format`` are passed upstream."""
    if input is None:
        input = kwargs.pop("input", [])  # noqa: A001
    if not (callbacks or success_callback or failure_callback or input_callback):
        return _embedding(model, input, kwargs)
    call = _new_call("embedding", model, input, kwargs)
    try:
        call.pre_call()
        return _finish(call, _embedding(call.model, call.messages, call.kwargs))
    except Exception as exc:
        call.failed(exc)
        raise


async def aembedding(model: str, input: Any = None, **kwargs: Any) -> EmbeddingResponse:  # noqa: A002
    """Async form of ``embedding``."""
    if input is None:
        input = kwargs.pop("input", [])  # noqa: A001
    if not (callbacks or success_callback or failure_callback or input_callback):
        return await _aembedding(model, input, kwargs)
    call = _new_call("aembedding", model, input, kwargs)
    try:
        await call.apre_call()
        return _finish(call, await _aembedding(call.model, call.messages, call.kwargs))
    except Exception as exc:
        call.failed(exc)
        raise


def image_generation(prompt: str, model: Optional[str] = None, **kwargs: Any) -> ImageResponse:
    """Image generation, LiteLLM's ``image_generation``: ``n``, ``size``, ``quality``, ``style``,
    ``response_format`` (``url`` | ``b64_json``), ``user`` are passed upstream; the cost of the
    images is in ``_hidden_params["response_cost"]``."""
    model = model or "dall-e-2"
    _apply_settings(kwargs)
    d, hidden = _llmux.image_generation(model, prompt, kwargs)
    return ImageResponse._from_native(d, hidden, hidden["_response_ms"])


async def aimage_generation(prompt: str, model: Optional[str] = None, **kwargs: Any) -> ImageResponse:
    """Async form of ``image_generation``."""
    model = model or "dall-e-2"
    _apply_settings(kwargs)
    d, hidden = await _run(_llmux.aimage_generation, model, prompt, kwargs)
    return ImageResponse._from_native(d, hidden, hidden["_response_ms"])


def speech(
    model: str,
    input: str,
    voice: Optional[str] = None,
    **kwargs: Any,  # noqa: A002
) -> HttpxBinaryResponseContent:
    """Text to speech, LiteLLM's ``speech``: ``voice``, ``response_format`` (mp3, opus, aac,
    flac, wav, pcm), ``speed``, ``instructions`` are passed upstream. The audio is read as it
    arrives: ``stream_to_file(path)``, ``iter_bytes()``, or ``content`` for all of it."""
    if voice is not None:
        kwargs["voice"] = voice
    _apply_settings(kwargs)
    native, hidden = _llmux.speech(model, input, kwargs)
    return HttpxBinaryResponseContent(native, hidden)


async def aspeech(
    model: str,
    input: str,
    voice: Optional[str] = None,
    **kwargs: Any,  # noqa: A002
) -> HttpxBinaryResponseContent:
    """Async form of ``speech``: ``await r.aread()``, ``async for piece in r.aiter_bytes()``."""
    if voice is not None:
        kwargs["voice"] = voice
    _apply_settings(kwargs)
    native, hidden = await _run(_llmux.aspeech, model, input, kwargs)
    return HttpxBinaryResponseContent(native, hidden)


def transcription(model: str, file: Any, **kwargs: Any) -> TranscriptionResponse:
    """Speech to text, LiteLLM's ``transcription``: ``file`` is a path, a file object, bytes or
    ``(filename, content)``; a file on disk is streamed, never loaded whole. ``language``,
    ``prompt``, ``response_format`` (json, text, srt, verbose_json, vtt), ``temperature``,
    ``timestamp_granularities`` are sent upstream; ``max_upload_bytes`` (default 100 MiB) caps
    the file."""
    path, data, name = audio_file(file)
    _apply_settings(kwargs)
    d, hidden = _llmux.transcription(model, path, data, name, kwargs)
    return TranscriptionResponse._from_native(d, hidden, hidden["_response_ms"])


async def atranscription(model: str, file: Any, **kwargs: Any) -> TranscriptionResponse:
    """Async form of ``transcription``."""
    path, data, name = audio_file(file)
    _apply_settings(kwargs)
    d, hidden = await _run(_llmux.atranscription, model, path, data, name, kwargs)
    return TranscriptionResponse._from_native(d, hidden, hidden["_response_ms"])


def _edit_files(image: Any, mask: Any) -> tuple:
    images = image if isinstance(image, list) else [image]
    return [audio_file(i) for i in images], (audio_file(mask) if mask is not None else None)


def image_edit(
    image: Any, prompt: str, model: Optional[str] = None, mask: Any = None, **kwargs: Any
) -> ImageResponse:
    """Image edit, LiteLLM's ``image_edit``: ``image`` is one image or a list (paths, file
    objects, bytes or ``(filename, content)``), streamed from disk; ``mask``, ``n``, ``size``,
    ``quality``, ``response_format`` are passed upstream."""
    images, m = _edit_files(image, mask)
    _apply_settings(kwargs)
    d, hidden = _llmux.image_edit(model or "dall-e-2", prompt, images, m, kwargs)
    return ImageResponse._from_native(d, hidden, hidden["_response_ms"])


async def aimage_edit(
    image: Any, prompt: str, model: Optional[str] = None, mask: Any = None, **kwargs: Any
) -> ImageResponse:
    """Async form of ``image_edit``."""
    images, m = _edit_files(image, mask)
    _apply_settings(kwargs)
    d, hidden = await _run(_llmux.aimage_edit, model or "dall-e-2", prompt, images, m, kwargs)
    return ImageResponse._from_native(d, hidden, hidden["_response_ms"])


def flush_callbacks(timeout: float = 5.0) -> bool:
    """Waits until every queued callback event has been delivered (False on timeout)."""
    from ._callbacks import flush

    return flush(timeout)


def __getattr__(name: str) -> Any:
    # ``llmux.model_cost``: the price table as a dict, built on first access so that importing
    # llmux stays fast.
    if name == "model_cost":
        return _llmux.model_cost()
    raise AttributeError(f"module 'llmux' has no attribute {name!r}")


__all__ = [
    "LITELLM_EXCEPTION_TYPES",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "BudgetExceededError",
    "Cache",
    "ChatCompletionDeltaToolCall",
    "ChatCompletionMessageToolCall",
    "Choices",
    "ContentPolicyViolationError",
    "ContextWindowExceededError",
    "CustomLogger",
    "CustomStreamWrapper",
    "Delta",
    "Embedding",
    "EmbeddingResponse",
    "Function",
    "HttpxBinaryResponseContent",
    "ImageObject",
    "ImageResponse",
    "InternalServerError",
    "JSONSchemaValidationError",
    "Message",
    "MockException",
    "ModelResponse",
    "ModelResponseStream",
    "NotFoundError",
    "OpenAIError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "RejectedRequestError",
    "Router",
    "ServiceUnavailableError",
    "StreamingChoices",
    "Timeout",
    "TranscriptionResponse",
    "UnprocessableEntityError",
    "UnsupportedParamsError",
    "Usage",
    "acompletion",
    "aembedding",
    "aimage_edit",
    "aimage_generation",
    "aspeech",
    "atranscription",
    "cache",
    "callbacks",
    "failure_callback",
    "flush_callbacks",
    "input_callback",
    "success_callback",
    "completion",
    "completion_cost",
    "cost_per_token",
    "current_spend",
    "disable_cache",
    "embedding",
    "enable_cache",
    "get_max_tokens",
    "get_model_info",
    "image_edit",
    "image_generation",
    "register_model",
    "set_budget",
    "set_pricing_file",
    "set_request_log",
    "speech",
    "stream_chunk_builder",
    "supports_function_calling",
    "supports_vision",
    "token_counter",
    "transcription",
    "update_cache",
]
