"""``llmux.Router``: LiteLLM's ``Router`` on the engine's router.

Deployments (``model_list`` entries with ``model_name``, ``litellm_params``, ``model_info``) are
grouped by ``model_name``; each call picks a deployment of the group with the routing strategy,
retries on other deployments, cools failing ones down, and falls back to other groups. Routing
statistics (in-flight counts, latency, per-minute usage, cooldowns) live in the engine: per
process by default, shared by every process that names the same Redis (``redis_url``,
``redis_host``/``redis_port``/``redis_password``, ``redis_cluster_nodes``, or a ``redis`` block
with ``sentinel``/``tls``/``db``). Deployments' ``rpm``/``tpm``/``max_parallel_requests`` and
the ``rate_limit`` block are enforced by the engine's limiter, in Redis when one is configured.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from . import _llmux
from ._aio import run as _run
from ._audio import HttpxBinaryResponseContent, audio_file
from ._stream_wrapper import CustomStreamWrapper
from .types import EmbeddingResponse, ImageResponse, ModelResponse, TranscriptionResponse

__all__ = ["Router"]

_STRATEGIES = (
    "simple-shuffle",
    "least-busy",
    "latency-based-routing",
    "usage-based-routing",
    "usage-based-routing-v2",
    "cost-based-routing",
)

# Constructor keywords LiteLLM accepts that change nothing observable here.
_NO_EFFECT = frozenset({"set_verbose", "debug_level", "client_ttl", "cache_kwargs", "polling_interval"})


def _sync_engine_settings() -> None:
    # The package's module settings (budget, cache) apply to routed calls too; the package
    # imports this module, so it is looked up at call time.
    from . import _sync_engine_settings as sync

    sync()


def _tags(kwargs: dict) -> List[str]:
    meta = kwargs.get("metadata")
    tags = (meta or {}).get("tags") if isinstance(meta, dict) else None
    tags = tags or kwargs.get("tags")
    return [str(t) for t in tags] if tags else []


class Router:
    """LiteLLM-compatible router. See the README's Router section for what each setting does."""

    def __init__(
        self,
        model_list: Optional[List[Dict[str, Any]]] = None,
        routing_strategy: str = "simple-shuffle",
        num_retries: Optional[int] = None,
        timeout: Optional[float] = None,
        fallbacks: Optional[List[Dict[str, Any]]] = None,
        context_window_fallbacks: Optional[List[Dict[str, Any]]] = None,
        content_policy_fallbacks: Optional[List[Dict[str, Any]]] = None,
        default_fallbacks: Optional[List[str]] = None,
        max_fallbacks: int = 5,
        allowed_fails: Optional[int] = None,
        cooldown_time: Optional[float] = None,
        disable_cooldowns: bool = False,
        retry_budget: Optional[Dict[str, float]] = None,
        redis_url: Optional[str] = None,
        redis_host: Optional[str] = None,
        redis_port: Optional[int] = None,
        redis_password: Optional[str] = None,
        redis_cluster_nodes: Optional[List[str]] = None,
        stats_lease_ttl: Optional[float] = None,
        rate_limit: Optional[Dict[str, Any]] = None,
        redis: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _NO_EFFECT)
        if unknown:
            raise TypeError(f"Router() got settings llmux does not implement: {', '.join(unknown)}")
        if redis is not None:
            redis = dict(redis)
        elif redis_cluster_nodes:
            redis = {"cluster_nodes": list(redis_cluster_nodes)}
        elif redis_url:
            redis = {"url": redis_url}
        elif redis_host or redis_port:
            redis = {"host": redis_host or "127.0.0.1", "port": int(redis_port or 6379)}
            if redis_password:
                redis["password"] = redis_password
        elif redis_password:
            raise ValueError("redis_password needs redis_host/redis_port or redis_url")
        if routing_strategy not in _STRATEGIES:
            valid = ", ".join(_STRATEGIES)
            raise ValueError(f"routing_strategy must be one of {valid}; got {routing_strategy!r}")
        fb = list(fallbacks or [])
        if default_fallbacks:
            fb.append({"*": list(default_fallbacks)})
        self.model_list: List[Dict[str, Any]] = list(model_list or [])
        self.routing_strategy = routing_strategy
        self.num_retries = 2 if num_retries is None else num_retries
        self.timeout = timeout
        self.fallbacks = fb
        self.context_window_fallbacks = list(context_window_fallbacks or [])
        self.content_policy_fallbacks = list(content_policy_fallbacks or [])
        self.allowed_fails = 3 if allowed_fails is None else allowed_fails
        self.cooldown_time = 5.0 if cooldown_time is None else cooldown_time
        settings: Dict[str, Any] = {
            "routing_strategy": routing_strategy,
            "num_retries": self.num_retries,
            "timeout": timeout,
            "fallbacks": fb,
            "context_window_fallbacks": self.context_window_fallbacks,
            "content_policy_fallbacks": self.content_policy_fallbacks,
            "max_fallbacks": max_fallbacks,
            "allowed_fails": self.allowed_fails,
            "cooldown_time": self.cooldown_time,
            "disable_cooldowns": disable_cooldowns,
        }
        if retry_budget is not None:
            settings["retry_budget"] = dict(retry_budget)
        if redis is not None:
            settings["redis"] = redis
        if stats_lease_ttl is not None:
            settings["stats_lease_ttl"] = stats_lease_ttl
        if rate_limit is not None:
            settings["rate_limit"] = dict(rate_limit)
        self._native = _llmux.NativeRouter(self.model_list, settings)

    # --- introspection ----------------------------------------------------------------
    def get_model_names(self) -> List[str]:
        seen: List[str] = []
        for d in self.model_list:
            if d["model_name"] not in seen:
                seen.append(d["model_name"])
        return seen

    def get_model_list(self, model_name: Optional[str] = None) -> List[Dict[str, Any]]:
        return [d for d in self.model_list if model_name is None or d["model_name"] == model_name]

    def rate_limit_stats(self) -> Dict[str, Any]:
        """The limiter's counters: admitted, denied, Redis errors, decisions taken by the failure
        policy, breaker state, live processes sharing the limits."""
        return self._native.rate_limit_stats()

    def get_deployment_stats(self) -> List[Dict[str, Any]]:
        """Per deployment: in-flight count, latency and TTFT averages, this minute's requests,
        tokens and failures, successes/failures since start, cooldown left (seconds)."""
        return self._native.deployment_stats()

    def get_retry_budget(self) -> Dict[str, int]:
        """The retry budget's counters (first attempts and retries in the window, retries
        allowed now, retries refused since start)."""
        return self._native.retry_budget()

    # --- calls ------------------------------------------------------------------------
    def completion(
        self, model: str, messages: Optional[list] = None, **kwargs: Any
    ) -> Union[ModelResponse, CustomStreamWrapper]:
        _sync_engine_settings()
        messages = messages if messages is not None else kwargs.pop("messages", [])
        tags = _tags(kwargs)
        if kwargs.pop("stream", False):
            native, first = self._native.completion_stream(model, messages, kwargs, tags)
            return CustomStreamWrapper(native, model, first)
        d, hidden = self._native.completion(model, messages, kwargs, tags)
        return ModelResponse._from_native(d, hidden, hidden["_response_ms"])

    async def acompletion(
        self, model: str, messages: Optional[list] = None, **kwargs: Any
    ) -> Union[ModelResponse, CustomStreamWrapper]:
        _sync_engine_settings()
        messages = messages if messages is not None else kwargs.pop("messages", [])
        tags = _tags(kwargs)
        if kwargs.pop("stream", False):
            native, first = await _run(self._native.acompletion_stream, model, messages, kwargs, tags)
            return CustomStreamWrapper(native, model, first)
        d, hidden = await _run(self._native.acompletion, model, messages, kwargs, tags)
        return ModelResponse._from_native(d, hidden, hidden["_response_ms"])

    def embedding(self, model: str, input: Any = None, **kwargs: Any) -> EmbeddingResponse:  # noqa: A002
        _sync_engine_settings()
        input = input if input is not None else kwargs.pop("input", [])  # noqa: A001
        d, hidden = self._native.embedding(model, input, kwargs)
        return EmbeddingResponse._from_native(d, hidden, hidden["_response_ms"])

    async def aembedding(self, model: str, input: Any = None, **kwargs: Any) -> EmbeddingResponse:  # noqa: A002
        _sync_engine_settings()
        input = input if input is not None else kwargs.pop("input", [])  # noqa: A001
        d, hidden = await _run(self._native.aembedding, model, input, kwargs)
        return EmbeddingResponse._from_native(d, hidden, hidden["_response_ms"])

    def image_generation(self, prompt: str, model: str, **kwargs: Any) -> ImageResponse:
        _sync_engine_settings()
        d, hidden = self._native.image_generation(model, prompt, kwargs)
        return ImageResponse._from_native(d, hidden, hidden["_response_ms"])

    async def aimage_generation(self, prompt: str, model: str, **kwargs: Any) -> ImageResponse:
        _sync_engine_settings()
        d, hidden = await _run(self._native.aimage_generation, model, prompt, kwargs)
        return ImageResponse._from_native(d, hidden, hidden["_response_ms"])

    def speech(
        self, model: str, input: str, voice: Optional[str] = None, **kwargs: Any
    ) -> HttpxBinaryResponseContent:  # noqa: A002
        _sync_engine_settings()
        if voice is not None:
            kwargs["voice"] = voice
        native, hidden = self._native.speech(model, input, kwargs)
        return HttpxBinaryResponseContent(native, hidden)

    async def aspeech(
        self,
        model: str,
        input: str,
        voice: Optional[str] = None,
        **kwargs: Any,  # noqa: A002
    ) -> HttpxBinaryResponseContent:
        _sync_engine_settings()
        if voice is not None:
            kwargs["voice"] = voice
        native, hidden = await _run(self._native.aspeech, model, input, kwargs)
        return HttpxBinaryResponseContent(native, hidden)

    def transcription(self, model: str, file: Any, **kwargs: Any) -> TranscriptionResponse:
        _sync_engine_settings()
        path, data, name = audio_file(file)
        d, hidden = self._native.transcription(model, path, data, name, kwargs)
        return TranscriptionResponse._from_native(d, hidden, hidden["_response_ms"])

    async def atranscription(self, model: str, file: Any, **kwargs: Any) -> TranscriptionResponse:
        _sync_engine_settings()
        path, data, name = audio_file(file)
        d, hidden = await _run(self._native.atranscription, model, path, data, name, kwargs)
        return TranscriptionResponse._from_native(d, hidden, hidden["_response_ms"])

    def image_edit(
        self, image: Any, prompt: str, model: str, mask: Any = None, **kwargs: Any
    ) -> ImageResponse:
        _sync_engine_settings()
        images = [audio_file(i) for i in (image if isinstance(image, list) else [image])]
        m = audio_file(mask) if mask is not None else None
        d, hidden = self._native.image_edit(model, prompt, images, m, kwargs)
        return ImageResponse._from_native(d, hidden, hidden["_response_ms"])
