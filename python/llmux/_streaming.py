"""``stream_chunk_builder``: rebuild a ``ModelResponse`` from streamed chunks (LiteLLM-compatible)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .types import (
    Choices,
    Message,
    ModelResponse,
    ModelResponseStream,
    Usage,
    _as_dict,
    _plain,
    map_finish_reason,
)

__all__ = ["stream_chunk_builder"]

# Token estimate used when no chunk reports usage.  LiteLLM counts with tiktoken;
# we avoid a tokenizer dependency and use the common ~4 characters per token rule
# (rounded up), plus ~3 tokens of framing per message and 3 for the reply priming,
# which is how OpenAI's chat format accounts for message overhead.
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 3
_REPLY_PRIMING_TOKENS = 3


def _estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    return (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict):
                t = p.get("text")
                if isinstance(t, str):
                    parts.append(t)
            elif isinstance(p, str):
                parts.append(p)
        return "".join(parts)
    return str(content)


def _estimate_prompt_tokens(messages: Optional[List[Any]]) -> int:
    """Approximate prompt tokens: ~4 chars/token of each message's text, name and tool calls,
    plus 3 tokens per message and 3 for the assistant reply priming."""
    if not messages:
        return 0
    total = _REPLY_PRIMING_TOKENS
    for m in messages:
        md = _as_dict(m)
        if not isinstance(md, dict):
            continue
        total += _TOKENS_PER_MESSAGE
        total += _estimate_text_tokens(_message_text(md.get("content")))
        name = md.get("name")
        if isinstance(name, str):
            total += _estimate_text_tokens(name)
        for tc in md.get("tool_calls") or ():
            fn = _as_dict(tc).get("function") or {}
            fn = _as_dict(fn)
            total += _estimate_text_tokens((fn.get("name") or "") + (fn.get("arguments") or ""))
    return total


def _chunk_dict(chunk: Any) -> Dict[str, Any]:
    """Plain-dict view of a chunk (ModelResponseStream, dict, or pydantic-like object)."""
    if isinstance(chunk, dict):
        return chunk
    if isinstance(chunk, ModelResponseStream):
        return chunk.model_dump()
    return _plain(chunk)


def _chunk_hidden(chunk: Any) -> Optional[dict]:
    if isinstance(chunk, dict):
        h = chunk.get("_hidden_params")
    else:
        h = getattr(chunk, "_hidden_params", None)
    return h if isinstance(h, dict) else None


class _ChoiceAcc:
    __slots__ = (
        "index",
        "role",
        "content",
        "reasoning",
        "tool_calls",
        "fn_name",
        "fn_args",
        "finish",
        "seen",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.role: Optional[str] = None
        self.content: List[str] = []
        self.reasoning: List[str] = []
        # tool-call index -> [id, type, name, [argument pieces]]
        self.tool_calls: Dict[int, list] = {}
        self.fn_name: Optional[str] = None
        self.fn_args: Optional[List[str]] = None
        self.finish: Optional[str] = None
        self.seen = False

    def add(self, choice: Dict[str, Any]) -> None:
        self.seen = True
        fr = choice.get("finish_reason")
        if fr is not None:
            self.finish = fr
        delta = choice.get("delta")
        if not delta:
            return
        role = delta.get("role")
        if role and self.role is None:
            self.role = role
        c = delta.get("content")
        if c:
            self.content.append(c)
        rc = delta.get("reasoning_content")
        if rc:
            self.reasoning.append(rc)
        tcs = delta.get("tool_calls")
        if tcs:
            for pos, tc in enumerate(tcs):
                tc = _as_dict(tc)
                idx = tc.get("index")
                if idx is None:
                    idx = pos
                fn = _as_dict(tc.get("function") or {})
                slot = self.tool_calls.get(idx)
                if slot is None:
                    slot = self.tool_calls[idx] = [None, None, None, []]
                if slot[0] is None and tc.get("id"):
                    slot[0] = tc["id"]
                if slot[1] is None and tc.get("type"):
                    slot[1] = tc["type"]
                if slot[2] is None and fn.get("name"):
                    slot[2] = fn["name"]
                args = fn.get("arguments")
                if args:
                    slot[3].append(args)
        fc = delta.get("function_call")
        if fc:
            fc = _as_dict(fc)
            if self.fn_name is None and fc.get("name"):
                self.fn_name = fc["name"]
            if self.fn_args is None:
                self.fn_args = []
            if fc.get("arguments"):
                self.fn_args.append(fc["arguments"])

    def build(self) -> Dict[str, Any]:
        text = "".join(self.content)
        tool_calls = None
        if self.tool_calls:
            tool_calls = [
                {
                    "function": {"arguments": "".join(s[3]), "name": s[2]},
                    "id": s[0],
                    "type": s[1] or "function",
                }
                for _, s in sorted(self.tool_calls.items())
            ]
        function_call = None
        if self.fn_args is not None:
            function_call = {"arguments": "".join(self.fn_args), "name": self.fn_name}
        message: Dict[str, Any] = {
            "content": text if text else None,
            "role": self.role or "assistant",
            "tool_calls": tool_calls,
            "function_call": function_call,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        finish = self.finish
        if finish is None:
            finish = "tool_calls" if tool_calls else "stop"
        return {"finish_reason": finish, "index": self.index, "message": message}


def _usage_of(chunk: Any, cd: Dict[str, Any]) -> Optional[dict]:
    u = cd.get("usage")
    if u is None:
        h = _chunk_hidden(chunk)
        if h is not None:
            u = h.get("usage")
    if u is None:
        return None
    u = _plain(u)
    return u if isinstance(u, dict) else None


def stream_chunk_builder(
    chunks: List[Any],
    messages: Optional[List[Any]] = None,
    start_time: Any = None,
    end_time: Any = None,
    **_kwargs: Any,
) -> Optional[ModelResponse]:
    """Rebuild a complete ``ModelResponse`` from a list of stream chunks.

    * content (and ``reasoning_content``) concatenated per choice index; role from the
      first delta carrying one (default ``"assistant"``); ``content`` is None when empty;
    * tool calls assembled by their ``index``: id/type/name from the first fragment that
      has them, ``arguments`` concatenated; legacy ``function_call`` likewise;
    * ``finish_reason`` from the last chunk that has one (``"stop"`` or, when tool calls
      were streamed, ``"tool_calls"`` if none did);
    * ``usage`` from the last chunk carrying ``usage`` (or ``_hidden_params["usage"]``);
      otherwise estimated: prompt tokens from ``messages`` and completion tokens from the
      generated text, at ~4 characters per token (LiteLLM uses tiktoken, so estimates
      differ from LiteLLM's by design);
    * ``id`` (first non-empty), ``created``, ``model`` and ``system_fingerprint`` from the
      first chunk.

    Returns None for an empty list.
    """
    if not chunks:
        return None
    chunk_dicts = [_chunk_dict(c) for c in chunks]
    first = chunk_dicts[0]

    chunk_id = ""
    for cd in chunk_dicts:
        cid = cd.get("id")
        if cid:
            chunk_id = cid
            break

    accs: Dict[int, _ChoiceAcc] = {}
    usage: Optional[dict] = None
    service_tier = None
    for chunk, cd in zip(chunks, chunk_dicts):
        for pos, choice in enumerate(cd.get("choices") or ()):
            choice = _as_dict(choice)
            idx = choice.get("index")
            if idx is None:
                idx = pos
            acc = accs.get(idx)
            if acc is None:
                acc = accs[idx] = _ChoiceAcc(idx)
            acc.add(choice)
        u = _usage_of(chunk, cd)
        if u is not None:
            usage = u
        st = cd.get("service_tier")
        if isinstance(st, str) and st:
            service_tier = st

    if not accs:
        accs[0] = _ChoiceAcc(0)
    choices = [accs[i].build() for i in sorted(accs)]

    if usage is None:
        completion_text = ""
        for c in choices:
            m = c["message"]
            completion_text += m["content"] or ""
            completion_text += m.get("reasoning_content") or ""
            for tc in m["tool_calls"] or ():
                completion_text += (tc["function"]["name"] or "") + tc["function"]["arguments"]
            if m["function_call"]:
                completion_text += (m["function_call"]["name"] or "") + m["function_call"]["arguments"]
        prompt_tokens = _estimate_prompt_tokens(messages)
        completion_tokens = _estimate_text_tokens(completion_text)
        u = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    else:
        u = dict(usage)
        pt = u.get("prompt_tokens") or 0
        ct = u.get("completion_tokens") or 0
        u["prompt_tokens"] = pt
        u["completion_tokens"] = ct
        if not u.get("total_tokens"):
            u["total_tokens"] = pt + ct
    # Like LiteLLM: a plain-text stream reports reasoning_tokens=0, a reasoning stream an
    # estimate of its reasoning text, and a tool-call stream leaves the details alone.
    reasoning_text = "".join(c["message"].get("reasoning_content") or "" for c in choices)
    simple = all(not c["message"]["tool_calls"] and not c["message"]["function_call"] for c in choices)
    reasoning_tokens: Optional[int] = None
    if reasoning_text:
        reasoning_tokens = _estimate_text_tokens(reasoning_text)
    elif simple:
        reasoning_tokens = 0
    if reasoning_tokens is not None:
        ct = u["completion_tokens"]
        capped = min(max(0, reasoning_tokens), ct)
        details = u.get("completion_tokens_details")
        if not details:
            u["completion_tokens_details"] = {
                "accepted_prediction_tokens": None,
                "audio_tokens": None,
                "reasoning_tokens": capped,
                "rejected_prediction_tokens": None,
                "text_tokens": ct - capped,
                "image_tokens": None,
                "video_tokens": None,
            }
        elif isinstance(details, dict) and details.get("reasoning_tokens") is None:
            details = dict(details)
            details["reasoning_tokens"] = capped
            if details.get("text_tokens") is None:
                details["text_tokens"] = ct - capped
            u["completion_tokens_details"] = details
    usage_obj = Usage(**u)

    d: Dict[str, Any] = {
        "id": chunk_id,
        "created": first.get("created"),
        "model": first.get("model"),
        "object": "chat.completion",
        "system_fingerprint": first.get("system_fingerprint"),
        "choices": choices,
    }
    if service_tier is not None:
        d["service_tier"] = service_tier
    response = ModelResponse._from_native(d, {}, None)
    # choices here are already in LiteLLM's final shape (no provider_specific_fields key)
    response._d["choices"] = [_built_choice(c) for c in choices]
    response._d["usage"] = usage_obj
    if start_time is not None and end_time is not None:
        try:
            response._response_ms = (end_time - start_time).total_seconds() * 1000
        except Exception:
            pass
    return response


def _built_choice(c: Dict[str, Any]) -> Choices:
    msg = Message._wrap(c["message"])
    ch = Choices.__new__(Choices)
    object.__setattr__(
        ch, "_d", {"finish_reason": _map_fr(c["finish_reason"]), "index": c["index"], "message": msg}
    )
    return ch


def _map_fr(fr: Any) -> Any:
    return map_finish_reason(fr) if isinstance(fr, str) else "stop"
