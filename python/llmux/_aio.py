"""asyncio glue: one engine ``Bridge`` per event loop, and ``run`` to await an engine call.

The engine resolves asyncio futures from a reader callback on a pipe (see
``src/bindings/bridge.rs``): its worker threads never wait for the GIL, and one wake-up of the
loop resolves every call that finished meanwhile. ``run`` creates the future, starts the engine
task, awaits, and aborts the engine task if the awaiting coroutine is cancelled.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, Callable

from . import _llmux

if TYPE_CHECKING:
    import asyncio

__all__ = ["run"]

_bridges: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# (loop, bridge) of the last call, replaced as one tuple so that threads running their own
# loops never see one loop paired with another's bridge.
_last: tuple = (None, None)


def _bridge(loop: asyncio.AbstractEventLoop) -> Any:
    global _last
    last = _last
    if last[0] is loop:
        return last[1]
    bridge = _bridges.get(loop)
    if bridge is None:
        bridge = _llmux.Bridge()
        os.set_blocking(bridge.fd, False)
        loop.add_reader(bridge.fd, bridge.drain)
        _bridges[loop] = bridge
    _last = (loop, bridge)
    return bridge


async def run(start: Callable[..., Any], *args: Any) -> Any:
    """``await`` the engine call ``start(bridge, future, *args)``."""
    import asyncio  # already imported by the caller's event loop; kept out of `import llmux`

    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    handle = start(_bridge(loop), fut, *args)
    try:
        return await fut
    except asyncio.CancelledError:
        handle.abort()
        raise
