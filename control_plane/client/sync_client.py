"""The blocking client: :class:`SyncControlPlaneClient` runs a
:class:`~control_plane.client.async_client.ControlPlaneClient` on a background thread's
event loop, for scripts that are not async."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from control_plane.client.async_client import ConnectionState, ControlPlaneClient, Event

T = TypeVar("T")
_END = object()  # the end of an events() stream, on the thread's queue


class SyncControlPlaneClient:
    """:class:`ControlPlaneClient` with blocking calls; it runs on a background thread's
    event loop. ``on_state_change`` is called on that thread."""

    def __init__(self, url: str = "ws://127.0.0.1:8000/ws", token: str | None = None, **kw: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="control-plane-client", daemon=True
        )
        self._thread.start()

        async def make() -> ControlPlaneClient:
            return ControlPlaneClient(url, token, **kw)

        self.client = self._call(make())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def connect(self) -> None:
        try:
            self._call(self.client.connect())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncControlPlaneClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> ConnectionState:
        return self.client.state

    @property
    def recovered(self) -> bool:
        return self.client.recovered

    def subscribe(self, channels: Iterable[str], since: int | None = None) -> dict[str, Any]:
        return self._call(self.client.subscribe(list(channels), since))

    def unsubscribe(self, channels: Iterable[str]) -> dict[str, Any]:
        return self._call(self.client.unsubscribe(list(channels)))

    def pause(self, job_id: str) -> dict[str, Any]:
        return self._call(self.client.pause(job_id))

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call(self.client.resume(job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call(self.client.cancel(job_id))

    def suspend(self, job_id: str) -> dict[str, Any]:
        return self._call(self.client.suspend(job_id))

    def refresh_token(self, token: str) -> dict[str, Any]:
        return self._call(self.client.refresh_token(token))

    def ping(self) -> float:
        return self._call(self.client.ping())

    def events(
        self, channels: Iterable[str] | None = None, *, since: int | None = None
    ) -> Iterator[Event]:
        """A blocking iterator over :meth:`ControlPlaneClient.events`."""
        items: queue.Queue[Any] = queue.Queue()
        wanted = list(channels) if channels is not None else None

        async def pump() -> None:
            try:
                async for event in self.client.events(wanted, since=since):
                    items.put(event)
            except Exception as e:
                items.put(e)
            finally:
                items.put(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while (item := items.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            future.cancel()
