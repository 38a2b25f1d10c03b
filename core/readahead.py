"""Bounded read-ahead: run a function over a stream of items in worker threads while the caller
consumes the results in input order, with at most ``window`` items in flight.

Bulk ingest and dataset import both decode and hash images in threads (PIL, hashlib and the object
store release the GIL) while one thread writes the catalogue; the window keeps memory at a few
images whatever the size of the folder. Written once here::

    with read_ahead(sources, work, workers=4, window=12, name="ingest") as queue:
        for src, future in queue:          # input order; future is None when ``wants(src)`` is false
            ...
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ReadAhead(Generic[T, R]):
    """Items in input order, each with its future (``None`` for items not worked on)."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        items: Iterable[T],
        work: Callable[[T], R],
        window: int,
        wants: Callable[[T], bool] | None,
    ) -> None:
        self._pool = pool
        self._items = iter(items)
        self._work = work
        self._window = max(1, window)
        self._wants = wants
        self._pending: deque[tuple[T, Future[R] | None]] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._window:
            try:
                item = next(self._items)
            except StopIteration:
                return
            wanted = self._wants is None or self._wants(item)
            self._pending.append((item, self._pool.submit(self._work, item) if wanted else None))

    def __bool__(self) -> bool:
        return bool(self._pending)

    def head_ready(self) -> bool:
        """Whether the next item can be taken without waiting (no future, or its future is done)."""
        fut = self._pending[0][1]
        return fut is None or fut.done()

    def pop(self) -> tuple[T, Future[R] | None]:
        """The next item and its future; one more item is submitted in its place."""
        head = self._pending.popleft()
        self._fill()
        return head

    def __iter__(self) -> Iterator[tuple[T, Future[R] | None]]:
        while self._pending:
            yield self.pop()


@contextmanager
def read_ahead(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    workers: int,
    window: int,
    name: str,
    wants: Callable[[T], bool] | None = None,
) -> Iterator[ReadAhead[T, R]]:
    """A :class:`ReadAhead` over a pool of ``workers`` threads named ``name``; the pool is shut down
    (waiting for submitted work) when the block ends."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        yield ReadAhead(pool, items, work, window, wants)


__all__ = ["ReadAhead", "read_ahead"]
