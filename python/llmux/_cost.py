"""Cost and model-info helpers with LiteLLM's signatures, over the engine's price table.

The table uses LiteLLM's ``model_prices_and_context_window.json`` format; a bundled table of
current prices is loaded on first use, ``register_model`` adds or overrides entries (a dict, or
a path to such a JSON file). Unknown models cost 0.0 and are counted as unpriced
(``_llmux.unpriced_count()``); they are never an error for a call.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

from . import _llmux

__all__ = [
    "set_pricing_file",
    "token_counter",
    "completion_cost",
    "cost_per_token",
    "get_max_tokens",
    "get_model_info",
    "register_model",
    "supports_function_calling",
    "supports_vision",
]


def _usage_dict(
    prompt_tokens: int,
    completion_tokens: int,
    cache_read: int = 0,
    cache_creation: int = 0,
    reasoning: int = 0,
) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cache_read},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
        "cache_creation_input_tokens": cache_creation,
    }


def cost_per_token(
    model: str = "",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    custom_llm_provider: Optional[str] = None,
    cache_read_input_tokens: int = 0,
    cache_creation_input_tokens: int = 0,
    **_: Any,
) -> Tuple[float, float]:
    """``(prompt_cost_usd, completion_cost_usd)``; ``(0.0, 0.0)`` for an unpriced model."""
    usage = _usage_dict(
        prompt_tokens, completion_tokens, cache_read_input_tokens, cache_creation_input_tokens
    )
    return _llmux.cost_for(model, usage, custom_llm_provider) or (0.0, 0.0)


def _as_dict(obj: Any) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(obj)


def _estimate_tokens(text: str) -> int:
    # The documented approximation used where no usage is reported: ~4 characters per token.
    return max(1, (len(text) + 3) // 4) if text else 0


def completion_cost(
    completion_response: Any = None,
    model: Optional[str] = None,
    prompt: str = "",
    messages: Optional[list] = None,
    completion: str = "",
    custom_llm_provider: Optional[str] = None,
    custom_cost_per_token: Optional[dict] = None,
    **_: Any,
) -> float:
    """The USD cost of a response (``ModelResponse``, ``EmbeddingResponse`` or a dict), or of a
    prompt/completion pair when no response is given. Cache hits cost 0.0."""
    if completion_response is not None:
        hidden = getattr(completion_response, "_hidden_params", None) or {}
        if hidden.get("cache_hit"):
            return 0.0
        d = _as_dict(completion_response)
        usage = _as_dict(d.get("usage"))
        provider = custom_llm_provider or hidden.get("custom_llm_provider")
        names = [n for n in (model, d.get("model"), hidden.get("litellm_model_name")) if n]
    else:
        text = prompt or "".join(
            m.get("content", "") if isinstance(m.get("content"), str) else "" for m in (messages or [])
        )
        usage = _usage_dict(_estimate_tokens(text), _estimate_tokens(completion))
        provider = custom_llm_provider
        names = [model] if model else []
    if custom_cost_per_token:
        p = usage.get("prompt_tokens", 0) * float(custom_cost_per_token.get("input_cost_per_token", 0.0))
        c = usage.get("completion_tokens", 0) * float(custom_cost_per_token.get("output_cost_per_token", 0.0))
        return p + c
    usage.setdefault("completion_tokens", 0)
    usage.setdefault("prompt_tokens", 0)
    usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    for name in names:
        got = _llmux.cost_for(name, {k: v for k, v in usage.items() if v is not None}, provider)
        if got is not None:
            return got[0] + got[1]
    return 0.0


def get_model_info(model: str, custom_llm_provider: Optional[str] = None) -> dict:
    """The table entry of a model, with its ``key``; raises for an unmapped model, as LiteLLM."""
    entry = _llmux.model_entry(model, custom_llm_provider)
    if entry is None:
        raise Exception(  # noqa: TRY002 - LiteLLM raises a plain Exception here
            f"This model isn't mapped yet. model={model}, custom_llm_provider={custom_llm_provider}. "
            "Add it with llmux.register_model()."
        )
    info = dict(entry)
    info.setdefault("key", model)
    info.setdefault("max_tokens", info.get("max_output_tokens"))
    return info


def get_max_tokens(model: str) -> Optional[int]:
    """The model's output token limit, or None when unknown."""
    entry = _llmux.model_entry(model, None)
    if entry is None:
        return None
    return entry.get("max_output_tokens") or entry.get("max_tokens")


def _supports(model: str, provider: Optional[str], flag: str) -> bool:
    entry = _llmux.model_entry(model, provider)
    return bool(entry and entry.get(flag))


def supports_vision(model: str, custom_llm_provider: Optional[str] = None) -> bool:
    return _supports(model, custom_llm_provider, "supports_vision")


def supports_function_calling(model: str, custom_llm_provider: Optional[str] = None) -> bool:
    return _supports(model, custom_llm_provider, "supports_function_calling")


def register_model(model_cost: Union[dict, str, os.PathLike]) -> dict:
    """Adds or overrides price entries: a dict in LiteLLM's format, or the path of such a file."""
    if isinstance(model_cost, (str, os.PathLike)):
        _llmux.load_price_file(os.fspath(model_cost))
        return {}
    _llmux.register_model(model_cost)
    return model_cost


def token_counter(
    model: str = "",
    custom_tokenizer: Any = None,
    text: Union[str, list, None] = None,
    messages: Optional[list] = None,
    count_response_tokens: bool = False,
    tools: Optional[list] = None,
    **_: Any,
) -> int:
    """Tokens of ``text`` or of a chat prompt (``messages`` and ``tools``), with the model's
    own encoding for OpenAI models (o200k_base / cl100k_base) and cl100k_base as the
    approximation for others. ``count_response_tokens=True`` counts ``text`` without the chat
    overhead, as LiteLLM does."""
    if text is not None:
        return _llmux.token_count(model or "gpt-4", text=text)
    if messages is not None:
        return _llmux.token_count(model or "gpt-4", messages=messages, tools=tools)
    raise TypeError("token_counter needs text= or messages=")


def set_pricing_file(path: Union[str, os.PathLike]) -> int:
    """Loads a price file (LiteLLM's format) over the bundled prices and reloads it whenever it
    changes, without a restart. Returns the number of entries loaded."""
    return _llmux.watch_price_file(os.fspath(path))
