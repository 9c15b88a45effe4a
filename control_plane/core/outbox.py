"""A socket's bounded send queue, with room kept for replies. No sockets here.

The writer task pops frames and awaits the socket for each, so the transport's own flow
control (uvicorn waits while the peer's TCP window is full) paces it: a client that reads
slowly holds the writer, not memory. Live events count against ``limit``; a live event that
finds the outbox full means the client does not keep up, and it is closed (4008; it resumes
with ``since``). Replies (acks, errors, pongs, snapshots) may go past the limit, up to twice
it, so that a client catching up on a large replay still gets its acks. A replay waits for
room with :meth:`Outbox.put` instead of failing.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Outbox:
    # One per socket: slots, and the events only once something waits on them (most
    # sockets never wait; ``gateway/wire.py`` writes their frames at once).
    __slots__ = ("_frames", "_readable", "_room", "closed", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._frames: deque[str] | None = None  # made with the first frame queued
        self._readable: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else 0

    def push(self, frame: str, reply: bool = False) -> bool:
        """Queue a frame without waiting; False when closed or there is no room for it."""
        if self.closed or len(self) >= (2 * self.limit if reply else self.limit):
            return False
        if self._frames is None:
            self._frames = deque()
        self._frames.append(frame)
        if self._readable is not None:
            self._readable.set()
        return True

    async def put(self, frame: str) -> bool:
        """Queue a frame, waiting for room below ``limit``; False when the outbox closed."""
        await self.room(self.limit)
        return self.push(frame, reply=True)

    async def room(self, below: int) -> bool:
        """Wait until fewer than ``below`` frames are queued; False when the outbox closed."""
        while len(self) >= below and not self.closed:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        return not self.closed

    def pop(self) -> str | None:
        """The next frame, or None when none is queued (closed or not)."""
        frames = self._frames
        if not frames:
            return None
        frame = frames.popleft()
        if not frames:
            self._frames = None  # an empty deque keeps a block of 64 slots
        if self._room is not None and len(self) < self.limit:
            self._room.set()  # waiters check their own mark again
        return frame

    async def get(self) -> str | None:
        """The next frame, waiting for one; None once closed and empty."""
        while not self:
            if self.closed:
                return None
            if self._readable is None:
                self._readable = asyncio.Event()
            self._readable.clear()
            await self._readable.wait()
        return self.pop()

    def close(self, discard: bool = False) -> None:
        """Take no more frames. The reader gets what is queued (nothing with ``discard``),
        then None; :meth:`put` callers waiting for room return False."""
        self.closed = True
        if discard:
            self._frames = None
        if self._readable is not None:
            self._readable.set()
        if self._room is not None:
            self._room.set()
