"""Speech responses: the audio body as it arrives from the engine.

``speech()`` returns an ``HttpxBinaryResponseContent`` like LiteLLM's (the ``openai``
package's binary response): ``content`` / ``read()`` for the whole body, ``iter_bytes()`` and
``stream_to_file(path)`` to handle it piece by piece as it arrives (the whole file is never
held in memory), and the async forms ``aread()``, ``aiter_bytes()``, ``astream_to_file()``.
The body can be read once; ``content`` keeps what it read.
"""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Iterator, Optional, Union

from ._aio import run as _run

__all__ = ["HttpxBinaryResponseContent", "audio_file"]

_Path = Union[str, "os.PathLike[str]"]


class HttpxBinaryResponseContent:
    """A binary (audio) response read from the engine as it arrives."""

    def __init__(self, native: Any, hidden: Optional[dict] = None) -> None:
        self._native = native
        self._content: Optional[bytes] = None
        self._hidden_params: dict = hidden or {}

    @property
    def content_type(self) -> str:
        return self._native.content_type

    @property
    def headers(self) -> dict:
        return {"content-type": self._native.content_type}

    # --- sync ------------------------------------------------------------------------------
    def iter_bytes(self, chunk_size: Optional[int] = None) -> Iterator[bytes]:
        """The body piece by piece as it arrives (``chunk_size`` regroups the pieces)."""
        if self._content is not None:
            yield self._content
            return
        buf = b""
        while True:
            piece = self._native.next_chunk()
            if piece is None:
                break
            if chunk_size is None:
                yield piece
                continue
            buf += piece
            while len(buf) >= chunk_size:
                yield buf[:chunk_size]
                buf = buf[chunk_size:]
        if buf:
            yield buf

    def read(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self.iter_bytes())
        return self._content

    @property
    def content(self) -> bytes:
        return self.read()

    @property
    def text(self) -> str:
        return self.read().decode("utf-8", errors="replace")

    def stream_to_file(self, file: _Path, chunk_size: Optional[int] = None) -> None:
        """Writes the body to ``file`` as it arrives."""
        with open(file, "wb") as f:
            for piece in self.iter_bytes(chunk_size):
                f.write(piece)

    def write_to_file(self, file: _Path) -> None:
        with open(file, "wb") as f:
            f.write(self.read())

    def close(self) -> None:
        self._native.close()

    # --- async -----------------------------------------------------------------------------
    async def aiter_bytes(self, chunk_size: Optional[int] = None) -> AsyncIterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        buf = b""
        while True:
            piece = await _run(self._native.anext_chunk)
            if piece is None:
                break
            if chunk_size is None:
                yield piece
                continue
            buf += piece
            while len(buf) >= chunk_size:
                yield buf[:chunk_size]
                buf = buf[chunk_size:]
        if buf:
            yield buf

    async def aread(self) -> bytes:
        if self._content is None:
            self._content = b"".join([p async for p in self.aiter_bytes()])
        return self._content

    async def astream_to_file(self, file: _Path, chunk_size: Optional[int] = None) -> None:
        with open(file, "wb") as f:
            async for piece in self.aiter_bytes(chunk_size):
                f.write(piece)

    async def aclose(self) -> None:
        self._native.close()

    def __repr__(self) -> str:
        return f"<HttpxBinaryResponseContent {self.content_type}>"


def audio_file(file: Any) -> tuple:
    """``(path, data, filename)`` for a transcription's ``file``: a path (str or PathLike) or a
    file object opened on one are streamed from disk; bytes, an in-memory file object, or a
    ``(filename, content)`` tuple are sent from memory."""
    if isinstance(file, tuple):
        name, content = file[0], file[1]
        path, data, _ = audio_file(content)
        return path, data, os.path.basename(str(name))
    if isinstance(file, (str, os.PathLike)):
        return os.fspath(file), None, os.path.basename(os.fspath(file))
    if isinstance(file, (bytes, bytearray, memoryview)):
        return None, bytes(file), "audio.wav"
    name = getattr(file, "name", None)
    if isinstance(name, (str, os.PathLike)) and os.path.isfile(name):
        return os.fspath(name), None, os.path.basename(os.fspath(name))
    if hasattr(file, "read"):
        data = file.read()
        if isinstance(data, str):
            data = data.encode()
        return None, bytes(data), os.path.basename(str(name)) if name else "audio.wav"
    raise TypeError("file must be a path, bytes, a file object or a (filename, content) tuple")
