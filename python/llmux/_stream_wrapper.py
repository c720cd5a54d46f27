"""``CustomStreamWrapper``: the object ``completion(stream=True)`` returns.

One object is both a sync and an async iterator of ``ModelResponseStream`` chunks, as in
LiteLLM. Chunks arrive from the engine in batches (one crossing into Rust for every chunk the
upstream has already sent), and are wrapped one at a time as the caller takes them.
Closing the wrapper, leaving a ``with`` block, or dropping it closes the upstream connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from ._aio import run as _run
from .types import ModelResponseStream

__all__ = ["CustomStreamWrapper", "LoggedStreamWrapper"]


class CustomStreamWrapper:
    __slots__ = ("_native", "_buf", "_done", "model", "custom_llm_provider", "_hidden_params", "chunks")

    def __init__(self, native: Any, model: str, first: Optional[list] = None) -> None:
        self._native = native
        # Items are (chunk, hidden_usage) pairs; a None item marks the end of the stream.
        self._buf: deque = deque(first or ())
        self._done = first is None
        self.model = model
        self._hidden_params: dict = native.hidden_params
        self.custom_llm_provider: Optional[str] = self._hidden_params.get("custom_llm_provider")
        self.chunks: list = []

    def _wrap(self, item: tuple) -> ModelResponseStream:
        d, usage = item
        if usage is None:
            hidden = self._hidden_params
        else:
            hidden = dict(self._hidden_params)
            hidden["usage"] = usage
        return ModelResponseStream._from_native(d, hidden)

    # sync iteration
    def __iter__(self) -> CustomStreamWrapper:
        return self

    def __next__(self) -> ModelResponseStream:
        buf = self._buf
        if not buf:
            if self._done:
                raise StopIteration
            batch = self._native.next_batch()
            if batch is None:
                self._done = True
                raise StopIteration
            buf.extend(batch)
        item = buf.popleft()
        if item is None:
            self._done = True
            raise StopIteration
        return self._wrap(item)

    # async iteration
    def __aiter__(self) -> CustomStreamWrapper:
        return self

    async def __anext__(self) -> ModelResponseStream:
        buf = self._buf
        if not buf:
            if self._done:
                raise StopAsyncIteration
            batch = await _run(self._native.anext_batch)
            if batch is None:
                self._done = True
                raise StopAsyncIteration
            buf.extend(batch)
        item = buf.popleft()
        if item is None:
            self._done = True
            raise StopAsyncIteration
        return self._wrap(item)

    def close(self) -> None:
        """Stop reading and close the upstream connection."""
        self._done = True
        self._buf.clear()
        self._buf.append(None)
        self._native.close()

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> CustomStreamWrapper:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> CustomStreamWrapper:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CustomStreamWrapper model={self.model!r} provider={self.custom_llm_provider!r}>"


class LoggedStreamWrapper(CustomStreamWrapper):
    """A stream whose chunks and end are reported to callbacks (used only when some are set)."""

    __slots__ = ("_call", "_collected", "_per_chunk")

    def __init__(self, inner: CustomStreamWrapper, call: Any) -> None:
        self._native = inner._native
        self._buf = inner._buf
        self._done = inner._done
        self.model = inner.model
        self._hidden_params = inner._hidden_params
        self.custom_llm_provider = inner.custom_llm_provider
        self.chunks = []
        self._call = call
        self._collected: list = []
        self._per_chunk = call.wants_chunks()

    def _seen(self, chunk: ModelResponseStream) -> ModelResponseStream:
        self._collected.append(chunk)
        if self._per_chunk:
            self._call.chunk(chunk)
        return chunk

    def _finished(self) -> None:
        from ._streaming import stream_chunk_builder

        call, self._call = self._call, None
        if call is not None:
            built = stream_chunk_builder(self._collected, messages=call.messages)
            if built is not None:
                built._hidden_params.update(self._hidden_params)
            call.succeeded(built)

    def _failed(self, exc: BaseException) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.failed(exc)

    def __next__(self) -> ModelResponseStream:
        try:
            return self._seen(super().__next__())
        except StopIteration:
            self._finished()
            raise
        except Exception as exc:
            self._failed(exc)
            raise

    async def __anext__(self) -> ModelResponseStream:
        try:
            return self._seen(await super().__anext__())
        except StopAsyncIteration:
            self._finished()
            raise
        except Exception as exc:
            self._failed(exc)
            raise
