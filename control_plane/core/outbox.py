"""A socket's bounded send queue, with room kept for replies.

Events count against ``limit``; when a live event finds the outbox full the client is too
slow and is closed (it resumes with ``since``). Replies (acks, errors, pongs, snapshots) may
go past the limit, up to twice it, so that a client catching up on a large replay still
gets its acks. A replay waits for room with :meth:`Outbox.put` instead of failing.
No sockets here: the writer task pops, the manager pushes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final


class _Ping:
    """Marks the place of a heartbeat ping in the outbox; the writer makes the frame."""

    def __repr__(self) -> str:
        return "PING"


PING: Final = _Ping()
Item = str | _Ping


class Outbox:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._frames: deque[Item] = deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: Item, reply: bool = False) -> bool:
        """Queue a frame without waiting; False when there is no room for it."""
        if self.closed:
            return False
        if len(self._frames) >= (2 * self.limit if reply else self.limit):
            return False
        self._frames.append(frame)
        self._readable.set()
        return True

    async def put(self, frame: str) -> None:
        """Queue a frame, waiting for room (for replays, which may exceed the limit)."""
        while len(self._frames) >= self.limit and not self.closed:
            self._room.clear()
            await self._room.wait()
        self.push(frame, reply=True)

    async def get(self) -> Item | None:
        """The next frame, or None once closed and empty."""
        while not self._frames:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        if len(self._frames) < self.limit:
            self._room.set()
        return frame

    def close(self) -> None:
        """Stop taking frames; the reader gets what is queued, then None."""
        self.closed = True
        self._readable.set()
        self._room.set()
