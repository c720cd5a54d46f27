"""LiteLLM-shaped response objects, built lazily over plain dicts.

The Rust engine hands back plain dicts in OpenAI's wire shape.  The classes here
wrap those dicts without copying them: every object keeps its fields in one dict
(``_d``) and nested objects (choices, message, usage, tool calls, ...) are wrapped
on first access and stored back into that dict, so a response whose ``choices``
are never read never pays for building ``Choices``/``Message`` objects.

The key sets produced by ``model_dump()`` follow what LiteLLM 1.x produces for the
same OpenAI-shaped input (checked against litellm 1.110.2):

* ``Message`` always has ``content, role, tool_calls, function_call``; ``refusal``
  only when the provider sent the key, ``annotations``/``audio``/``reasoning_content``
  /``thinking_blocks`` only when not null, ``provider_specific_fields`` only when
  the provider sent extra keys.
* ``Choices`` (from a provider response) has ``finish_reason, index, message,
  provider_specific_fields`` and ``logprobs`` when the provider sent the key.
* ``Delta`` always has ``content, role, function_call, tool_calls, audio``.
* ``Usage`` always has the three counters and both ``*_tokens_details`` keys.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

__all__ = [
    "ChatCompletionDeltaToolCall",
    "ChatCompletionMessageToolCall",
    "Choices",
    "CompletionTokensDetailsWrapper",
    "Delta",
    "Embedding",
    "EmbeddingResponse",
    "Function",
    "FunctionCall",
    "ImageObject",
    "ImageResponse",
    "Message",
    "ModelResponse",
    "ModelResponseStream",
    "PromptTokensDetailsWrapper",
    "StreamingChoices",
    "TranscriptionResponse",
    "Usage",
    "map_finish_reason",
]

# --------------------------------------------------------------------------------------
# finish_reason normalisation (same table as LiteLLM's map_finish_reason)
# --------------------------------------------------------------------------------------

_osa = object.__setattr__
_oga = object.__getattribute__

_FINISH_REASON_MAP: Dict[str, str] = {
    # OpenAI
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "function_call",
    "content_filter": "content_filter",
    "content_filtered": "content_filter",
    "error": "stop",
    # Anthropic
    "stop_sequence": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "compaction": "length",
    "pause_turn": "length",
    "model_context_window_exceeded": "length",
    # Cohere
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
    "ERROR": "stop",
    # HuggingFace / Together
    "eos_token": "stop",
    "eos": "stop",
    # Gemini / Vertex
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "CONTINUATION": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "MALFORMED_FUNCTION_CALL": "stop",
    "LANGUAGE": "content_filter",
    "OTHER": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "TOO_MANY_TOOL_CALLS": "stop",
    "MALFORMED_RESPONSE": "stop",
    "NO_IMAGE": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "IMAGE_OTHER": "content_filter",
    "ESCALATION": "content_filter",
    "UNEXPECTED_TOOL_CALL": "stop",
    "MISSING_THOUGHT_SIGNATURE": "stop",
    # Zhipu GLM
    "network_error": "stop",
    "sensitive": "content_filter",
    # Bedrock
    "guardrail_intervened": "content_filter",
}


def map_finish_reason(finish_reason: str) -> str:
    """Map a provider finish reason onto OpenAI's set; unknown values become ``"stop"``."""
    return _FINISH_REASON_MAP.get(finish_reason, "stop")


def _uuid4() -> str:
    import uuid  # lazy: uuid is slow to import and only needed for generated ids

    return str(uuid.uuid4())


def _gen_id() -> str:
    return "chatcmpl-" + _uuid4()


def _json_dumps(v: Any, **kwargs: Any) -> str:
    import json  # lazy: keep ``import llmux`` cheap

    return json.dumps(v, **kwargs)


_THINK_RE: Any = None


def _split_think(content: str):
    """``<think>x</think>rest`` -> (x, rest), as LiteLLM does for reasoning models."""
    global _THINK_RE
    if _THINK_RE is None:
        import re

        _THINK_RE = re.compile(
            r"<(?:think|thinking|budget:thinking)>(.*?)</(?:think|thinking|budget:thinking)>(.*)", re.DOTALL
        )
    m = _THINK_RE.match(content)
    if m:
        return m.group(1), m.group(2)
    return None, content


# --------------------------------------------------------------------------------------
# base machinery
# --------------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    """Deep-copy ``v`` into plain dicts/lists, unwrapping our objects."""
    t = type(v)
    if t is dict:
        return {k: _plain(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [_plain(x) for x in v]
    if isinstance(v, _Base):
        return v.model_dump()
    if hasattr(v, "model_dump") and not isinstance(v, type):
        try:
            return v.model_dump()
        except Exception:  # pragma: no cover - foreign object with odd model_dump
            return v
    return v


def _strip_none(v: Any) -> Any:
    if type(v) is dict:
        return {k: _strip_none(x) for k, x in v.items() if x is not None}
    if type(v) is list:
        return [_strip_none(x) for x in v]
    return v


def _as_dict(v: Any) -> Any:
    """Accept dicts, our objects, or foreign (pydantic/openai) objects; return a dict."""
    if type(v) is dict:
        return v
    if isinstance(v, _Base):
        return v._d
    if hasattr(v, "model_dump"):
        return v.model_dump()
    if hasattr(v, "dict"):
        return v.dict()
    return v


class _Base:
    """A dict-backed object with attribute and item access.

    Fields live in ``self._d``; nested objects listed in ``_NESTED`` are wrapped on
    first access and written back into ``_d``.  Names starting with ``_`` are kept
    out of ``_d`` (and out of ``model_dump``).
    """

    __slots__ = ("_d", "_x")

    # field name -> (wrapper class name, is_list); resolved lazily via globals()
    _NESTED: Dict[str, Any] = {}
    # attributes that read as None when absent from _d (declared pydantic fields in LiteLLM)
    _NONE_ATTRS: frozenset = frozenset()
    # public names that are real (property) attributes, not fields
    _PROPS: frozenset = frozenset()
    # LiteLLM's field order for dumps/reprs (keys not listed follow in dict order)
    _ORDER: tuple = ()

    def _keys(self) -> List[str]:
        d = self._d
        if not self._ORDER:
            return list(d)
        keys = [k for k in self._ORDER if k in d]
        if len(keys) != len(d):
            keys.extend(k for k in d if k not in self._ORDER)
        return keys

    @classmethod
    def _wrap(cls, d: dict):
        obj = cls.__new__(cls)
        _osa(obj, "_d", cls._normalize(d))
        return obj

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        return d

    # ---- attribute protocol -------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name[:1] == "_":
            if name in ("_d", "_x") or name[:2] == "__":
                raise AttributeError(name)
            try:
                extra = _oga(self, "_x")
            except AttributeError:
                extra = None
            if extra is not None and name in extra:
                return extra[name]
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        d = self._d
        try:
            v = d[name]
        except KeyError:
            if name in self._NONE_ATTRS:
                return None
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None
        spec = self._NESTED.get(name)
        if spec is not None and v is not None:
            cls_name, is_list = spec
            wcls = _CLASSES[cls_name]
            if is_list:
                if v and type(v[0]) is not wcls:
                    v = [wcls._wrap(_as_dict(x)) if not isinstance(x, wcls) else x for x in v]
                    d[name] = v
            elif not isinstance(v, wcls):
                v = wcls._wrap(_as_dict(v))
                d[name] = v
        return v

    def __setattr__(self, name: str, value: Any) -> None:
        if name[:1] == "_":
            try:
                _osa(self, name, value)
            except AttributeError:
                try:
                    extra = _oga(self, "_x")
                except AttributeError:
                    extra = None
                if extra is None:
                    extra = {}
                    _osa(self, "_x", extra)
                extra[name] = value
            return
        if name in self._PROPS:
            _osa(self, name, value)
            return
        self._d[name] = value

    def __delattr__(self, name: str) -> None:
        if name[:1] == "_":
            object.__delattr__(self, name)
            return
        try:
            del self._d[name]
        except KeyError:
            raise AttributeError(name) from None

    # ---- mapping-style access -------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and hasattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    # ---- serialisation --------------------------------------------------------------
    def model_dump(
        self,
        *,
        exclude_none: bool = False,
        exclude: Optional[Any] = None,
        include: Optional[Any] = None,
        **_kwargs: Any,
    ) -> Dict[str, Any]:
        for k in self._NESTED:
            getattr(self, k, None)  # wrap (and so normalise) nested fields before dumping
        d = self._d
        out = {k: _plain(d[k]) for k in self._keys()}
        if include is not None:
            out = {k: v for k, v in out.items() if k in include}
        if exclude is not None:
            for k in exclude:
                out.pop(k, None)
        if exclude_none:
            out = _strip_none(out)
        return out

    def model_dump_json(self, *, indent: Optional[int] = None, **kwargs: Any) -> str:
        data = self.model_dump(**kwargs)
        if indent is None:
            return _json_dumps(data, separators=(",", ":"), default=str)
        return _json_dumps(data, indent=indent, default=str)

    def json(self, **kwargs: Any) -> Dict[str, Any]:
        return self.model_dump(**kwargs)

    def dict(self, **kwargs: Any) -> Dict[str, Any]:
        return self.model_dump(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        return self.model_dump()

    def __iter__(self):
        # pydantic models iterate as (field, value) pairs, so dict(obj) works
        for k in self._keys():
            yield k, getattr(self, k)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Base):
            return type(self).__name__ == type(other).__name__ and self.model_dump() == other.model_dump()
        dump = getattr(other, "model_dump", None)
        if dump is not None and not isinstance(other, type):
            try:
                return self.model_dump() == dump()
            except Exception:
                return False
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._keys())
        return f"{type(self).__name__}({parts})"

    __str__ = __repr__

    def __copy__(self):
        obj = type(self).__new__(type(self))
        _osa(obj, "_d", dict(self._d))
        for slot in _all_slots(type(self)):
            if slot == "_d":
                continue
            try:
                _osa(obj, slot, _oga(self, slot))
            except AttributeError:
                pass
        return obj

    def __deepcopy__(self, memo: dict):
        import copy

        obj = type(self).__new__(type(self))
        memo[id(self)] = obj
        for slot in _all_slots(type(self)):
            try:
                val = _oga(self, slot)
            except AttributeError:
                continue
            _osa(obj, slot, copy.deepcopy(val, memo))
        return obj

    def __getstate__(self):
        state = {}
        for slot in _all_slots(type(self)):
            try:
                state[slot] = _oga(self, slot)
            except AttributeError:
                pass
        return state

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            _osa(self, k, v)


_SLOTS_CACHE: Dict[type, tuple] = {}


def _all_slots(cls: type) -> tuple:
    s = _SLOTS_CACHE.get(cls)
    if s is None:
        names: List[str] = []
        for klass in cls.__mro__:
            for n in getattr(klass, "__slots__", ()):
                if n not in names:
                    names.append(n)
        s = _SLOTS_CACHE[cls] = tuple(names)
    return s


# --------------------------------------------------------------------------------------
# tool calls / functions
# --------------------------------------------------------------------------------------


class Function(_Base):
    """``function`` of a tool call: ``name`` and JSON ``arguments`` string."""

    __slots__ = ()
    _NONE_ATTRS = frozenset({"name"})

    def __init__(self, arguments: Any = None, name: Optional[str] = None, **params: Any) -> None:
        if arguments is None:
            p = params.pop("parameters", None)
            arguments = _json_dumps(p) if isinstance(p, dict) else ""
        elif isinstance(arguments, dict):
            arguments = _json_dumps(arguments)
        _osa(self, "_d", {"arguments": arguments, "name": name, **params})

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        if "name" not in d or type(d.get("arguments")) is not str:
            args = d.get("arguments")
            if args is None:
                args = ""
            elif isinstance(args, dict):
                args = _json_dumps(args)
            out = {"arguments": args, "name": d.get("name")}
            for k, v in d.items():
                if k not in out:
                    out[k] = v
            return out
        return d


class FunctionCall(Function):
    """Legacy ``message.function_call``."""

    __slots__ = ()


class ChatCompletionMessageToolCall(_Base):
    """A tool call on a (non-streaming) assistant message: ``id``, ``type``, ``function``."""

    __slots__ = ()
    _NESTED = {"function": ("Function", False)}

    def __init__(self, function: Any = None, id: Optional[str] = None, type: Optional[str] = None, **params):
        if function is None:
            function = Function()
        elif not isinstance(function, Function):
            function = Function._wrap(dict(_as_dict(function)))
        _osa(
            self,
            "_d",
            {
                "function": function,
                "id": id if id is not None else _uuid4(),
                "type": type if type is not None else "function",
                **params,
            },
        )

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        if d.get("id") is None:
            d["id"] = _uuid4()
        if d.get("type") is None:
            d["type"] = "function"
        if "function" not in d:
            d["function"] = {"arguments": "", "name": None}
        return d


class ChatCompletionDeltaToolCall(_Base):
    """A tool-call fragment in a streaming delta: ``id``, ``function``, ``type``, ``index``."""

    __slots__ = ()
    _NESTED = {"function": ("Function", False)}
    _NONE_ATTRS = frozenset({"id", "type"})

    def __init__(
        self,
        id: Optional[str] = None,
        function: Any = None,
        type: Optional[str] = None,
        index: int = 0,
        **params: Any,
    ) -> None:
        if function is None:
            function = Function()
        elif not isinstance(function, Function):
            function = Function._wrap(dict(_as_dict(function)))
        _osa(self, "_d", {"id": id, "function": function, "type": type, "index": index, **params})

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        out = {
            "id": d.get("id"),
            "function": d.get("function") or {"arguments": "", "name": None},
            "type": d.get("type") or "function",
            "index": d.get("index", 0),
        }
        if len(d) > 4:
            for k, v in d.items():
                if k not in out:
                    out[k] = v
        return out


# --------------------------------------------------------------------------------------
# messages / choices
# --------------------------------------------------------------------------------------

_MESSAGE_FIELDS = frozenset(
    {
        "content",
        "role",
        "refusal",
        "tool_calls",
        "function_call",
        "audio",
        "images",
        "reasoning_content",
        "thinking_blocks",
        "reasoning_items",
        "provider_specific_fields",
        "annotations",
    }
)
_MESSAGE_OPTIONAL_NOT_NONE = ("audio", "images", "thinking_blocks", "reasoning_items")


def _partition_annotations(annotations: Any):
    """Keep url_citation annotations on the message; others go to provider_specific_fields."""
    if not annotations or type(annotations) is not list:
        return annotations, None
    others = [a for a in annotations if isinstance(a, dict) and "type" in a and a["type"] != "url_citation"]
    if not others:
        return annotations, None
    kept = [
        a for a in annotations if not (isinstance(a, dict) and "type" in a and a["type"] != "url_citation")
    ]
    return kept or None, others


class Message(_Base):
    """An assistant message: ``content, role, tool_calls, function_call`` (+ optional fields)."""

    __slots__ = ()
    _NESTED = {
        "tool_calls": ("ChatCompletionMessageToolCall", True),
        "function_call": ("FunctionCall", False),
    }
    _NONE_ATTRS = frozenset({"provider_specific_fields"})

    def __init__(
        self,
        content: Optional[str] = None,
        role: str = "assistant",
        function_call: Any = None,
        tool_calls: Optional[list] = None,
        audio: Any = None,
        images: Optional[list] = None,
        provider_specific_fields: Optional[dict] = None,
        reasoning_content: Optional[str] = None,
        thinking_blocks: Optional[list] = None,
        reasoning_items: Optional[list] = None,
        annotations: Optional[list] = None,
        **params: Any,
    ) -> None:
        d: Dict[str, Any] = {
            "content": content,
            "role": role or "assistant",
            "tool_calls": list(tool_calls) if tool_calls else None,
            "function_call": function_call,
        }
        if audio is not None:
            d["audio"] = audio
        if images is not None:
            d["images"] = images
        if thinking_blocks is not None:
            d["thinking_blocks"] = thinking_blocks
        if reasoning_items is not None:
            d["reasoning_items"] = reasoning_items
        if annotations is not None:
            d["annotations"] = annotations
        if reasoning_content is not None:
            d["reasoning_content"] = reasoning_content
        d.update(params)
        if provider_specific_fields:
            d["provider_specific_fields"] = provider_specific_fields
        _osa(self, "_d", d)

    @classmethod
    def _normalize(cls, m: dict) -> dict:
        """Wire message -> LiteLLM's key set (as convert_to_model_response_object builds it)."""
        content = m.get("content")
        tool_calls = m.get("tool_calls")
        out: Dict[str, Any] = {
            "content": content,
            "role": m.get("role") or "assistant",
            "tool_calls": tool_calls if tool_calls else None,
            "function_call": m.get("function_call"),
        }
        psf: Optional[dict] = None
        if len(m) > 2 or not ("content" in m and "role" in m):
            for k in m:
                if k not in _MESSAGE_FIELDS:
                    if psf is None:
                        psf = {}
                    psf[k] = m[k]
            for k in _MESSAGE_OPTIONAL_NOT_NONE:
                v = m.get(k)
                if v is not None:
                    out[k] = v
            if "thinking_blocks" in m and m["thinking_blocks"] is not None:
                if psf is None:
                    psf = {}
                psf["thinking_blocks"] = m["thinking_blocks"]
            ann = m.get("annotations")
            if ann is not None:
                ann, others = _partition_annotations(ann)
                if others:
                    if psf is None:
                        psf = {}
                    psf["annotations"] = others
                if ann is not None:
                    out["annotations"] = ann
            if "refusal" in m:
                out["refusal"] = m["refusal"]
            given_psf = m.get("provider_specific_fields")
            if given_psf:
                psf = {**given_psf, **(psf or {})}
        if "reasoning_content" in m:
            rc = m["reasoning_content"]
        elif "reasoning" in m:
            rc = m["reasoning"]
        elif type(content) is str and content[:1] == "<":
            rc, out["content"] = _split_think(content)
        else:
            rc = None
        if rc is not None:
            out["reasoning_content"] = rc
        if psf:
            out["provider_specific_fields"] = psf
        return out


class Choices(_Base):
    """One completion choice: ``finish_reason, index, message`` (+ ``logprobs`` when sent)."""

    __slots__ = ()
    _NESTED = {"message": ("Message", False)}

    def __init__(
        self,
        finish_reason: Optional[str] = None,
        index: int = 0,
        message: Any = None,
        logprobs: Any = None,
        enhancements: Any = None,
        provider_specific_fields: Optional[dict] = None,
        **params: Any,
    ) -> None:
        if finish_reason is not None:
            mapped = map_finish_reason(finish_reason)
            if mapped != finish_reason:
                provider_specific_fields = dict(provider_specific_fields or {})
                provider_specific_fields["native_finish_reason"] = finish_reason
        else:
            mapped = "stop"
        if message is None:
            message = Message()
        elif not isinstance(message, Message):
            message = Message(**_as_dict(message))
        d: Dict[str, Any] = {
            "finish_reason": mapped,
            "index": index if index is not None else 0,
            "message": message,
        }
        d.update(params)
        if enhancements is not None:
            d["enhancements"] = enhancements
        if provider_specific_fields is not None:
            d["provider_specific_fields"] = provider_specific_fields
        if logprobs is not None:
            d["logprobs"] = logprobs
        _osa(self, "_d", d)

    @classmethod
    def _normalize(cls, c: dict) -> dict:
        msg = c.get("message")
        if msg is None:
            msg = {}
        elif type(msg) is not dict:
            msg = _as_dict(msg)
        raw = c.get("finish_reason") or c.get("finish_details") or "stop"
        if raw == "stop" and msg.get("tool_calls"):
            raw = "tool_calls"
        mapped = _FINISH_REASON_MAP.get(raw, "stop") if type(raw) is str else "stop"
        psf: Dict[str, Any] = {}
        for k in c:
            if k not in _CHOICE_FIELDS:
                psf[k] = c[k]
        if mapped != raw:
            psf["native_finish_reason"] = raw
        out: Dict[str, Any] = {
            "finish_reason": mapped,
            "index": c.get("index", 0),
            "message": msg,
            "provider_specific_fields": psf,
        }
        if "logprobs" in c:
            out["logprobs"] = c["logprobs"]
        return out


_CHOICE_FIELDS = frozenset({"finish_reason", "index", "message", "logprobs", "provider_specific_fields"})


# --------------------------------------------------------------------------------------
# usage
# --------------------------------------------------------------------------------------


class PromptTokensDetailsWrapper(_Base):
    """``usage.prompt_tokens_details`` (cached_tokens, audio_tokens, ...)."""

    __slots__ = ()
    _NONE_ATTRS = frozenset(
        {
            "audio_tokens",
            "cached_tokens",
            "text_tokens",
            "image_tokens",
            "video_tokens",
            "cache_write_tokens",
            "cache_creation_tokens",
            "web_search_requests",
        }
    )

    def __init__(self, **kwargs: Any) -> None:
        _osa(self, "_d", dict(kwargs))


class CompletionTokensDetailsWrapper(_Base):
    """``usage.completion_tokens_details`` (reasoning_tokens, audio_tokens, ...)."""

    __slots__ = ()
    _NONE_ATTRS = frozenset(
        {
            "accepted_prediction_tokens",
            "audio_tokens",
            "reasoning_tokens",
            "rejected_prediction_tokens",
            "text_tokens",
            "image_tokens",
            "video_tokens",
        }
    )

    def __init__(self, **kwargs: Any) -> None:
        _osa(self, "_d", dict(kwargs))


class Usage(_Base):
    """Token usage: ``prompt_tokens, completion_tokens, total_tokens`` and the two details objects."""

    __slots__ = ()
    _NESTED = {
        "prompt_tokens_details": ("PromptTokensDetailsWrapper", False),
        "completion_tokens_details": ("CompletionTokensDetailsWrapper", False),
    }
    _NONE_ATTRS = frozenset({"prompt_tokens_details", "completion_tokens_details"})
    _ORDER = (
        "completion_tokens",
        "prompt_tokens",
        "total_tokens",
        "completion_tokens_details",
        "prompt_tokens_details",
    )

    def __init__(
        self,
        prompt_tokens: Optional[int] = None,
        completion_tokens: Optional[int] = None,
        total_tokens: Optional[int] = None,
        reasoning_tokens: Optional[int] = None,
        prompt_tokens_details: Any = None,
        completion_tokens_details: Any = None,
        **params: Any,
    ) -> None:
        ctd = dict(_as_dict(completion_tokens_details)) if completion_tokens_details else None
        if reasoning_tokens:
            if ctd is None:
                ctd = {}
            if ctd.get("reasoning_tokens") is None:
                ctd["reasoning_tokens"] = reasoning_tokens
            if ctd.get("text_tokens") is None and completion_tokens is not None:
                ctd["text_tokens"] = max(0, completion_tokens - reasoning_tokens)
        ptd = dict(_as_dict(prompt_tokens_details)) if prompt_tokens_details else None
        d: Dict[str, Any] = {
            "completion_tokens": completion_tokens or 0,
            "prompt_tokens": prompt_tokens or 0,
            "total_tokens": total_tokens or 0,
            "completion_tokens_details": ctd,
            "prompt_tokens_details": ptd,
        }
        d.update(params)
        _osa(self, "_d", self._normalize(d))

    @classmethod
    def _normalize(cls, u: dict) -> dict:
        if "completion_tokens_details" not in u or "prompt_tokens_details" not in u:
            u.setdefault("completion_tokens_details", None)
            u.setdefault("prompt_tokens_details", None)
        if "completion_tokens" not in u or u["completion_tokens"] is None:
            u["completion_tokens"] = 0
        if "prompt_tokens" not in u or u["prompt_tokens"] is None:
            u["prompt_tokens"] = 0
        if "total_tokens" not in u or u["total_tokens"] is None:
            u["total_tokens"] = 0
        # Anthropic / DeepSeek cache counters surface as prompt_tokens_details.cached_tokens
        cached = u.get("cache_read_input_tokens", u.get("prompt_cache_hit_tokens"))
        if isinstance(cached, int) and not u["prompt_tokens_details"]:
            u["prompt_tokens_details"] = {"cached_tokens": cached}
        return u


# --------------------------------------------------------------------------------------
# ModelResponse
# --------------------------------------------------------------------------------------


def _adopt_into(obj: Any, d: dict, hidden: dict, response_ms: Optional[float]) -> None:
    _osa(obj, "_d", d)
    _osa(obj, "_hidden_params", hidden)
    _osa(obj, "_response_ms", response_ms)
    _osa(obj, "_response_headers", None)


class _ResponseBase(_Base):
    __slots__ = ("_hidden_params", "_response_ms", "_response_headers")
    _PROPS = frozenset({"hidden_params"})

    @classmethod
    def _adopt(cls, d: dict, hidden: Optional[dict] = None, response_ms: Optional[float] = None) -> Any:
        """An object over ``d`` (owned, already normalised) with its hidden params."""
        obj = cls.__new__(cls)
        _adopt_into(obj, d, hidden if hidden is not None else {}, response_ms)
        return obj

    @property
    def hidden_params(self) -> dict:
        return self._hidden_params

    @hidden_params.setter
    def hidden_params(self, value: dict) -> None:
        _osa(self, "_hidden_params", value)


class ModelResponse(_ResponseBase):
    """A chat completion (``object == "chat.completion"``)."""

    __slots__ = ()
    _NESTED = {"choices": ("Choices", True), "usage": ("Usage", False)}
    _NONE_ATTRS = frozenset({"system_fingerprint", "model"})
    _ORDER = ("id", "created", "model", "object", "system_fingerprint", "choices", "usage")

    def __init__(
        self,
        id: Optional[str] = None,
        choices: Optional[list] = None,
        created: Optional[int] = None,
        model: Optional[str] = None,
        object: Optional[str] = None,
        system_fingerprint: Any = ...,
        usage: Any = None,
        stream: Optional[bool] = None,
        stream_options: Any = None,
        response_ms: Optional[float] = None,
        hidden_params: Optional[dict] = None,
        _response_headers: Optional[dict] = None,
        **params: Any,
    ) -> None:
        if isinstance(choices, list):
            new_choices = []
            for c in choices:
                if isinstance(c, Choices):
                    new_choices.append(c)
                elif isinstance(c, dict):
                    new_choices.append(Choices(**c))
                elif hasattr(c, "model_dump"):
                    new_choices.append(Choices(**c.model_dump()))
                else:
                    new_choices.append(c)
        else:
            new_choices = [Choices()]
        d: Dict[str, Any] = {
            "id": id if id is not None else _gen_id(),
            "created": created if created is not None else int(time.time()),
            "model": model,
            "object": "chat.completion",
        }
        if system_fingerprint is not ...:
            d["system_fingerprint"] = system_fingerprint
        d["choices"] = new_choices
        if usage is not None:
            d["usage"] = usage if isinstance(usage, Usage) else Usage(**_as_dict(usage))
        d.update(params)
        _osa(self, "_d", d)
        _osa(self, "_hidden_params", hidden_params or {})
        _osa(self, "_response_ms", response_ms)
        _osa(self, "_response_headers", _response_headers)

    @classmethod
    def _from_native(
        cls, d: dict, hidden: Optional[dict] = None, response_ms: Optional[float] = None
    ) -> ModelResponse:
        """Wrap an OpenAI ``chat.completion`` dict (owned: kept and normalised in place)."""
        obj = cls.__new__(cls)
        if d.get("id") is None:
            d["id"] = _gen_id()
        if d.get("created") is None:
            d["created"] = int(time.time())
        d["object"] = "chat.completion"
        if "model" not in d:
            d["model"] = None
        if "choices" not in d or d["choices"] is None:
            d["choices"] = []
        if "usage" in d and d["usage"] is None:
            del d["usage"]
        _osa(obj, "_d", d)
        _osa(obj, "_hidden_params", hidden if hidden is not None else {})
        _osa(obj, "_response_ms", response_ms)
        _osa(obj, "_response_headers", None)
        return obj

    @classmethod
    def _wrap(cls, d: dict):
        return cls._from_native(d)


# --------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------


class Delta(_Base):
    """A streaming delta: ``content, role, function_call, tool_calls, audio`` (+ optional fields)."""

    __slots__ = ()
    _NESTED = {
        "tool_calls": ("ChatCompletionDeltaToolCall", True),
        "function_call": ("FunctionCall", False),
    }
    _NONE_ATTRS = frozenset({"provider_specific_fields"})

    def __init__(
        self,
        content: Optional[str] = None,
        role: Optional[str] = None,
        function_call: Any = None,
        tool_calls: Optional[list] = None,
        audio: Any = None,
        images: Optional[list] = None,
        reasoning_content: Optional[str] = None,
        thinking_blocks: Optional[list] = None,
        reasoning_items: Optional[list] = None,
        annotations: Optional[list] = None,
        **params: Any,
    ) -> None:
        if reasoning_content is None and "reasoning" in params:
            reasoning_content = params.pop("reasoning")
        d: Dict[str, Any] = {
            "content": content,
            "role": role,
            "function_call": function_call,
            "tool_calls": _index_tool_calls(tool_calls),
            "audio": audio,
        }
        if images:
            d["images"] = images
        if annotations is not None:
            d["annotations"] = annotations
        if reasoning_content is not None:
            d["reasoning_content"] = reasoning_content
        if thinking_blocks is not None:
            d["thinking_blocks"] = thinking_blocks
        if reasoning_items is not None:
            d["reasoning_items"] = reasoning_items
        d.update(params)
        _osa(self, "_d", d)

    @classmethod
    def _normalize(cls, w: dict) -> dict:
        if len(w) == 1 and "content" in w:
            # The common streamed delta: text only.
            return {
                "content": w["content"],
                "role": None,
                "function_call": None,
                "tool_calls": None,
                "audio": None,
                "refusal": None,
            }
        out: Dict[str, Any] = {
            "content": w.get("content"),
            "role": w.get("role"),
            "function_call": w.get("function_call"),
            "tool_calls": _index_tool_calls(w.get("tool_calls")),
            "audio": w.get("audio"),
        }
        if w:
            # LiteLLM (through the openai SDK) reports refusal on every non-empty delta
            out["refusal"] = w.get("refusal")
            rc = w.get("reasoning_content")
            if rc is None:
                rc = w.get("reasoning")
            if rc is not None:
                out["reasoning_content"] = rc
            for k in ("thinking_blocks", "reasoning_items", "annotations"):
                v = w.get(k)
                if v is not None:
                    out[k] = v
            if w.get("images"):
                out["images"] = w["images"]
            psf = w.get("provider_specific_fields")
            if psf:
                out["provider_specific_fields"] = psf
        return out


def _index_tool_calls(tool_calls: Any) -> Any:
    """Give index-less tool-call fragments a positional index (as LiteLLM's Delta does)."""
    if not tool_calls or type(tool_calls) not in (list, tuple):
        return tool_calls
    current = 0
    out = []
    for tc in tool_calls:
        if type(tc) is dict and tc.get("index") is None:
            tc = dict(tc)
            tc["index"] = current
            current += 1
        out.append(tc)
    return out


class StreamingChoices(_Base):
    """One choice of a stream chunk: ``finish_reason, index, delta, logprobs``."""

    __slots__ = ()
    _NESTED = {"delta": ("Delta", False)}

    def __init__(
        self,
        finish_reason: Optional[str] = None,
        index: int = 0,
        delta: Any = None,
        logprobs: Any = None,
        enhancements: Any = None,
        **params: Any,
    ) -> None:
        params.pop("message", None)
        if delta is None:
            delta = Delta()
        elif not isinstance(delta, Delta):
            delta = Delta(**_as_dict(delta))
        d: Dict[str, Any] = {
            "finish_reason": map_finish_reason(finish_reason) if finish_reason else None,
            "index": index,
            "delta": delta,
        }
        if enhancements is not None:
            d["enhancements"] = enhancements
        d["logprobs"] = logprobs
        d.update(params)
        _osa(self, "_d", d)

    @classmethod
    def _normalize(cls, c: dict) -> dict:
        fr = c.get("finish_reason")
        return {
            "finish_reason": (_FINISH_REASON_MAP.get(fr, "stop") if type(fr) is str else "stop")
            if fr
            else None,
            "index": c.get("index", 0),
            "delta": c.get("delta") or {},
            "logprobs": c.get("logprobs"),
        }


class ModelResponseStream(_ResponseBase):
    """A streaming chunk (``object == "chat.completion.chunk"``)."""

    __slots__ = ()
    _NESTED = {"choices": ("StreamingChoices", True), "usage": ("Usage", False)}
    _NONE_ATTRS = frozenset({"system_fingerprint", "model", "provider_specific_fields"})
    _ORDER = (
        "id",
        "created",
        "model",
        "object",
        "system_fingerprint",
        "choices",
        "provider_specific_fields",
        "usage",
    )

    def __init__(
        self,
        choices: Any = None,
        id: Optional[str] = None,
        created: Optional[int] = None,
        provider_specific_fields: Optional[dict] = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(choices, list):
            new_choices = []
            for c in choices:
                if isinstance(c, StreamingChoices):
                    new_choices.append(c)
                elif isinstance(c, dict):
                    new_choices.append(StreamingChoices(**c))
                elif hasattr(c, "model_dump"):
                    new_choices.append(StreamingChoices(**c.model_dump()))
            choices = new_choices
        else:
            choices = [StreamingChoices()]
        hidden = kwargs.pop("hidden_params", None) or kwargs.pop("_hidden_params", None)
        d: Dict[str, Any] = {
            "id": id if id is not None else _gen_id(),
            "created": created if created is not None else int(time.time()),
            "model": kwargs.pop("model", None),
            "object": "chat.completion.chunk",
        }
        if "system_fingerprint" in kwargs:
            d["system_fingerprint"] = kwargs.pop("system_fingerprint")
        d["choices"] = choices
        d["provider_specific_fields"] = provider_specific_fields
        kwargs.pop("object", None)
        usage = kwargs.pop("usage", None)
        if usage is not None:
            d["usage"] = usage if isinstance(usage, Usage) else Usage(**_as_dict(usage))
        d.update(kwargs)
        _osa(self, "_d", d)
        _osa(self, "_hidden_params", hidden or {})
        _osa(self, "_response_ms", None)
        _osa(self, "_response_headers", None)

    @classmethod
    def _from_native(cls, d: dict, hidden: Optional[dict] = None) -> ModelResponseStream:
        """Wrap an OpenAI ``chat.completion.chunk`` dict (owned: kept and normalised in place)."""
        obj = cls.__new__(cls)
        if d.get("id") is None:
            d["id"] = _gen_id()
        if d.get("created") is None:
            d["created"] = int(time.time())
        d["object"] = "chat.completion.chunk"
        if "model" not in d:
            d["model"] = None
        if "choices" not in d or d["choices"] is None:
            d["choices"] = []
        if "provider_specific_fields" not in d:
            d["provider_specific_fields"] = None
        if "usage" in d and d["usage"] is None:
            del d["usage"]
        _osa(obj, "_d", d)
        _osa(obj, "_hidden_params", hidden if hidden is not None else {})
        _osa(obj, "_response_ms", None)
        _osa(obj, "_response_headers", None)
        return obj

    @classmethod
    def _wrap(cls, d: dict):
        return cls._from_native(d)


# --------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------


class Embedding(dict):
    """One embedding item.

    LiteLLM keeps ``EmbeddingResponse.data`` items as plain dicts, so this is a real
    ``dict`` (``json.dumps`` and ``isinstance(x, dict)`` keep working) that also allows
    attribute access: ``e["embedding"]`` and ``e.embedding`` both work.
    """

    __slots__ = ()

    def __init__(self, embedding: Any = None, index: int = 0, object: str = "embedding", **params: Any):
        super().__init__(
            embedding=embedding if embedding is not None else [], index=index, object=object, **params
        )

    @classmethod
    def _wrap(cls, d: dict) -> Embedding:
        obj = cls.__new__(cls)
        dict.update(obj, d)
        return obj

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'Embedding' object has no attribute '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def model_dump(self, **_kwargs: Any) -> Dict[str, Any]:
        return {k: _plain(v) for k, v in self.items()}

    def model_dump_json(self, **_kwargs: Any) -> str:
        return _json_dumps(self.model_dump(), separators=(",", ":"))

    def json(self, **_kwargs: Any) -> Dict[str, Any]:
        return self.model_dump()

    def __repr__(self) -> str:
        return f"Embedding({dict.__repr__(self)})"


class EmbeddingResponse(_ResponseBase):
    """Embedding result: ``model, data, object ("list"), usage``."""

    __slots__ = ()
    _NESTED = {"data": ("Embedding", True), "usage": ("Usage", False)}
    _NONE_ATTRS = frozenset({"model", "usage"})

    def __init__(
        self,
        model: Optional[str] = None,
        usage: Any = None,
        response_ms: Optional[float] = None,
        data: Optional[list] = None,
        hidden_params: Optional[dict] = None,
        _response_headers: Optional[dict] = None,
        **params: Any,
    ) -> None:
        if usage is None:
            usage = Usage()
        elif not isinstance(usage, Usage):
            usage = Usage(**_as_dict(usage))
        d = {"model": model, "data": list(data) if data else [], "object": "list", "usage": usage}
        _osa(self, "_d", d)
        _osa(self, "_hidden_params", hidden_params or {})
        _osa(self, "_response_ms", response_ms or None)
        _osa(self, "_response_headers", _response_headers)

    @classmethod
    def _from_native(
        cls, d: dict, hidden: Optional[dict] = None, response_ms: Optional[float] = None
    ) -> EmbeddingResponse:
        """Wrap an OpenAI embeddings response dict (owned)."""
        obj = cls.__new__(cls)
        u = d.get("usage")
        out = {
            "model": d.get("model"),
            "data": d.get("data") or [],
            "object": d.get("object") or "list",
            "usage": {
                "completion_tokens": 0 if u is None else (u.get("completion_tokens") or 0),
                "prompt_tokens": 0 if u is None else (u.get("prompt_tokens") or 0),
                "total_tokens": 0 if u is None else (u.get("total_tokens") or 0),
                "completion_tokens_details": None,
                "prompt_tokens_details": None,
            },
        }
        _osa(obj, "_d", out)
        _osa(obj, "_hidden_params", hidden if hidden is not None else {})
        _osa(obj, "_response_ms", response_ms)
        _osa(obj, "_response_headers", None)
        return obj

    @classmethod
    def _wrap(cls, d: dict):
        return cls._from_native(d)


class ImageObject(_Base):
    """One generated image: ``b64_json``, ``revised_prompt``, ``url`` (absent ones are None)."""

    __slots__ = ()
    _ORDER = ("b64_json", "revised_prompt", "url")
    _NONE_ATTRS = frozenset(_ORDER)

    @classmethod
    def _normalize(cls, d: dict) -> dict:
        for k in cls._ORDER:
            d.setdefault(k, None)
        return d


class ImageResponse(_ResponseBase):
    """Image generation result, LiteLLM's ``ImageResponse``: ``created, data, usage``;
    ``_hidden_params["response_cost"]`` is the price of the images."""

    __slots__ = ()
    _NESTED = {"data": ("ImageObject", True)}
    _NONE_ATTRS = frozenset({"usage"})
    _ORDER = ("created", "data", "usage")

    def __init__(
        self,
        created: Optional[int] = None,
        data: Optional[list] = None,
        usage: Any = None,
        hidden_params: Optional[dict] = None,
        response_ms: Optional[float] = None,
        **params: Any,
    ) -> None:
        items = [ImageObject._wrap(dict(_as_dict(x))) for x in (data or [])]
        d = {"created": created if created is not None else int(time.time()), "data": items, "usage": usage}
        d.update(params)
        _adopt_into(self, d, hidden_params or {}, response_ms)

    @classmethod
    def _from_native(
        cls, d: dict, hidden: Optional[dict] = None, response_ms: Optional[float] = None
    ) -> ImageResponse:
        """Wrap an OpenAI images response dict (owned)."""
        d.setdefault("created", int(time.time()))
        d.setdefault("data", [])
        d.setdefault("usage", None)
        return cls._adopt(d, hidden, response_ms)

    @classmethod
    def _wrap(cls, d: dict):
        return cls._from_native(d)


class TranscriptionResponse(_ResponseBase):
    """Transcription result, LiteLLM's ``TranscriptionResponse``: ``text``, plus ``language``,
    ``duration``, ``segments``, ``words`` for ``verbose_json``."""

    __slots__ = ()
    _ORDER = ("text",)

    def __init__(
        self, text: Optional[str] = None, hidden_params: Optional[dict] = None, **params: Any
    ) -> None:
        d = {"text": text}
        d.update(params)
        _adopt_into(self, d, hidden_params or {}, None)

    @classmethod
    def _from_native(
        cls, d: dict, hidden: Optional[dict] = None, response_ms: Optional[float] = None
    ) -> TranscriptionResponse:
        d.setdefault("text", "")
        return cls._adopt(d, hidden, response_ms)

    @classmethod
    def _wrap(cls, d: dict):
        return cls._from_native(d)


_CLASSES: Dict[str, Any] = {
    c.__name__: c
    for c in (
        Function,
        FunctionCall,
        ChatCompletionMessageToolCall,
        ChatCompletionDeltaToolCall,
        Message,
        Choices,
        PromptTokensDetailsWrapper,
        CompletionTokensDetailsWrapper,
        Usage,
        ModelResponse,
        Delta,
        StreamingChoices,
        ModelResponseStream,
        Embedding,
        EmbeddingResponse,
        ImageObject,
        ImageResponse,
        TranscriptionResponse,
    )
}


class _Field:
    """A data descriptor for a hot field: the same result as ``_Base.__getattr__`` without the
    failed normal lookup that precedes every ``__getattr__`` call (several times cheaper on
    paths like ``chunk.choices[0].delta.content``)."""

    __slots__ = ("name", "spec", "none")

    def __init__(self, name: str, spec: Any, none: bool) -> None:
        self.name = name
        self.spec = spec
        self.none = none

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        d = obj._d
        try:
            v = d[self.name]
        except KeyError:
            if self.none:
                return None
            raise AttributeError(f"'{type(obj).__name__}' object has no attribute '{self.name}'") from None
        spec = self.spec
        if spec is None or v is None:
            return v
        wcls = _CLASSES[spec[0]]
        if spec[1]:
            if v and type(v[0]) is not wcls:
                v = [wcls._wrap(_as_dict(x)) if not isinstance(x, wcls) else x for x in v]
                d[self.name] = v
        elif not isinstance(v, wcls):
            v = wcls._wrap(_as_dict(v))
            d[self.name] = v
        return v

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__setattr__(self.name, value)

    def __delete__(self, obj: Any) -> None:
        obj.__delattr__(self.name)


_HOT_FIELDS: Dict[str, tuple] = {
    "ModelResponse": ("id", "created", "model", "object", "system_fingerprint", "choices", "usage"),
    "Choices": ("finish_reason", "index", "message"),
    "Message": ("content", "role", "tool_calls", "function_call"),
    "ModelResponseStream": ("id", "created", "model", "object", "system_fingerprint", "choices", "usage"),
    "StreamingChoices": ("finish_reason", "index", "delta"),
    "Delta": ("content", "role", "tool_calls", "function_call"),
    "ChatCompletionMessageToolCall": ("id", "type", "function"),
    "ChatCompletionDeltaToolCall": ("index", "id", "type", "function"),
    "Function": ("name", "arguments"),
    "Usage": ("prompt_tokens", "completion_tokens", "total_tokens"),
}

for _cls_name, _fields in _HOT_FIELDS.items():
    _cls = _CLASSES[_cls_name]
    for _f in _fields:
        if not hasattr(_cls, _f):
            setattr(_cls, _f, _Field(_f, _cls._NESTED.get(_f), _f in _cls._NONE_ATTRS))
del _cls_name, _fields, _cls, _f
