"""The response cache, LiteLLM's ``Cache``: ``llmux.cache = llmux.Cache(...)`` turns it on.

The cache itself runs in the engine (a hook on every call's pipeline): a repeated chat request
(same model, messages, answer-changing parameters and caller ``user``) is answered from the
cache without reaching the provider, marked ``_hidden_params["cache_hit"] = True`` and costed
at 0.0; streams are replayed from it as chunks, and a completed stream is stored like a unary
answer. This object only holds the configuration; ``llmux`` hands it to the engine when the
next call starts.

Types: ``"local"`` (in this process, at most ``max_size_in_memory`` answers, least recently used
evicted first) and ``"redis"`` (shared by every process on one Redis; ``host``/``port``/
``password`` or ``redis_url``, else the ``REDIS_URL`` or ``REDIS_HOST``/``REDIS_PORT``/
``REDIS_PASSWORD`` environment variables). A Redis that fails or is slow never fails a call: the
lookup is a miss and the store is skipped.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, Iterable, Optional

__all__ = ["Cache", "DEFAULT_MAX_SIZE_IN_MEMORY", "SUPPORTED_CALL_TYPES"]

SUPPORTED_CALL_TYPES = ("completion", "acompletion")
DEFAULT_MAX_SIZE_IN_MEMORY = 200
_TYPES = ("local", "redis")
# LiteLLM's other backends: recognised, refused with a clear message.
_NOT_SUPPORTED = ("redis-semantic", "qdrant-semantic", "valkey-semantic", "s3", "disk", "gcs", "azure-blob")
_MODES = ("default_on", "default_off")


class _Secret:
    """A value (a URL with a password) that never shows in a repr."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(_redact(self.value))


def _seconds(value: Any, name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Cache: {name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _build_url(
    host: str, port: Any, password: Optional[str], username: Optional[str], db: Any, ssl: bool
) -> str:
    auth = ""
    if password:
        user = urllib.parse.quote(username or "", safe="")
        auth = f"{user}:{urllib.parse.quote(str(password), safe='')}@"
    elif username:
        auth = f"{urllib.parse.quote(username, safe='')}@"
    scheme = "rediss" if ssl else "redis"
    path = f"/{int(db)}" if db not in (None, "") else ""
    return f"{scheme}://{auth}{host}:{int(port or 6379)}{path}"


class Cache:
    """LiteLLM's ``Cache`` constructor: ``type`` "local" or "redis", ``mode`` "default_on" (every
    call is cached unless it passes ``caching=False``) or "default_off" (only calls passing
    ``caching=True`` or ``cache={"use-cache": True}``), ``namespace`` (prefixes every key),
    ``ttl`` (seconds a stored answer lives; else ``default_in_memory_ttl`` /
    ``default_in_redis_ttl``; none: no expiry by age), ``supported_call_types`` (a subset of
    "completion" and "acompletion"). Redis: ``host``, ``port``, ``password``, ``username``,
    ``db``, ``ssl`` or ``redis_url``. Other keyword arguments LiteLLM accepts are ignored."""

    def __init__(
        self,
        type: Any = "local",  # noqa: A002 - LiteLLM's name
        mode: Any = "default_on",
        host: Optional[str] = None,
        port: Any = None,
        password: Optional[str] = None,
        namespace: Optional[str] = None,
        ttl: Optional[float] = None,
        default_in_memory_ttl: Optional[float] = None,
        default_in_redis_ttl: Optional[float] = None,
        supported_call_types: Optional[Iterable[str]] = None,
        redis_url: Optional[str] = None,
        max_size_in_memory: int = DEFAULT_MAX_SIZE_IN_MEMORY,
        **kwargs: Any,
    ) -> None:
        kind = str(getattr(type, "value", type) or "local")
        if kind in _NOT_SUPPORTED:
            raise ValueError(
                f"llmux.Cache: type={kind!r} is not supported; use 'local' (in process) or 'redis'"
            )
        if kind not in _TYPES:
            raise ValueError(f"llmux.Cache: unknown type {kind!r}; use 'local' or 'redis'")
        mode_name = str(getattr(mode, "value", mode) or "default_on")
        if mode_name not in _MODES:
            raise ValueError(f"llmux.Cache: mode must be 'default_on' or 'default_off', got {mode_name!r}")
        calls = tuple(SUPPORTED_CALL_TYPES if supported_call_types is None else supported_call_types)
        unsupported = [c for c in calls if c not in SUPPORTED_CALL_TYPES]
        if unsupported:
            raise ValueError(
                f"llmux.Cache: only {list(SUPPORTED_CALL_TYPES)} are cached; "
                f"remove {unsupported} from supported_call_types"
            )
        if namespace is not None and not isinstance(namespace, str):
            raise TypeError("llmux.Cache: namespace must be a string")
        if (
            isinstance(max_size_in_memory, bool)
            or not isinstance(max_size_in_memory, int)
            or max_size_in_memory < 0
        ):
            raise ValueError("llmux.Cache: max_size_in_memory must be a non-negative integer")
        if kwargs.get("redis_startup_nodes"):
            raise ValueError(
                "llmux.Cache: Redis Cluster (redis_startup_nodes) is not supported for the cache yet"
            )

        self.type = kind
        self.mode = mode_name
        self.namespace = namespace or None
        self.supported_call_types = list(calls)
        self.max_size_in_memory = max_size_in_memory
        per_type = default_in_redis_ttl if kind == "redis" else default_in_memory_ttl
        self.ttl = _seconds(ttl, "ttl")
        self.default_in_memory_ttl = _seconds(default_in_memory_ttl, "default_in_memory_ttl")
        self.default_in_redis_ttl = _seconds(default_in_redis_ttl, "default_in_redis_ttl")
        self._effective_ttl = self.ttl if self.ttl is not None else _seconds(per_type, "ttl")
        self.host: Optional[str] = None
        self.port: Optional[int] = None
        self._redis_url: Optional[_Secret] = None
        if kind == "redis":
            self._redis_url = _Secret(self._resolve_redis(host, port, password, redis_url, kwargs))

    def _resolve_redis(
        self, host: Optional[str], port: Any, password: Optional[str], redis_url: Optional[str], kw: dict
    ) -> str:
        username = kw.get("username") or os.environ.get("REDIS_USERNAME")
        db, ssl = kw.get("db"), bool(kw.get("ssl", False))
        if redis_url:
            url = redis_url
        elif host:
            port = port or os.environ.get("REDIS_PORT")
            password = password or os.environ.get("REDIS_PASSWORD")
            url = _build_url(host, port, password, username, db, ssl)
        elif os.environ.get("REDIS_URL"):
            url = os.environ["REDIS_URL"]
        elif os.environ.get("REDIS_HOST"):
            url = _build_url(
                os.environ["REDIS_HOST"],
                port or os.environ.get("REDIS_PORT"),
                password or os.environ.get("REDIS_PASSWORD"),
                username,
                db,
                ssl,
            )
        else:
            raise ValueError(
                "llmux.Cache(type='redis') needs host (and port, password) or redis_url, "
                "or the REDIS_HOST / REDIS_URL environment variables"
            )
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"llmux.Cache: not a redis:// URL: {_redact(url)!r}")
        self.host = parts.hostname
        self.port = parts.port or 6379
        return url

    def _apply(self) -> None:
        """Hands this configuration to the engine (a fresh, empty cache for a local one)."""
        from . import _llmux

        _llmux.set_cache(
            self.type,
            self.mode,
            self.namespace,
            self._effective_ttl,
            self.max_size_in_memory,
            self._redis_url.value if self._redis_url else None,
        )

    def __repr__(self) -> str:
        target = f", target={self._redis_url!r}" if self._redis_url else ""
        return (
            f"Cache(type={self.type!r}, mode={self.mode!r}, namespace={self.namespace!r}, "
            f"ttl={self._effective_ttl!r}{target})"
        )
