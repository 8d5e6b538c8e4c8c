"""Sending queued frames over a stream, several per system call when they pile up."""

from __future__ import annotations

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ["send_frames"]

# Frames queued while one send is in progress go out together in the next one, up to this
# many bytes: one syscall (and one wake-up of the peer) per batch instead of per frame.
COALESCE_BYTES = 256 * 1024


async def send_frames(
    outbox: MemoryObjectReceiveStream[bytes], stream: anyio.abc.ByteSendStream
) -> None:
    """Send every frame put in ``outbox`` until it is closed; stream errors propagate."""
    async with outbox:
        async for frame in outbox:
            parts = [frame]
            size = len(frame)
            while size < COALESCE_BYTES:
                try:
                    more = outbox.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                parts.append(more)
                size += len(more)
            await stream.send(frame if len(parts) == 1 else b"".join(parts))
