"""Micro-batching: turn many concurrent single-image requests into few batched engine calls.

A detector costs nearly the same for 1 image as for 8 on a GPU (and somewhat less per image on a
CPU), and an engine must not be entered by more threads than it has streams (Ultralytics is not
thread-safe; ONNX Runtime would oversubscribe the cores). So each HTTP worker thread hands its image
to :class:`MicroBatcher` and blocks; one worker thread per engine stream (``engine.streams``, see
:func:`hazardlens.models.engines.plan_streams`) takes what is queued and runs it as one
``engine.predict`` call, letterboxing and decoding included, so one stream's pre- and
post-processing overlaps another's inference and the HTTP threads' JPEG decoding.

A worker never waits for company when nothing more is on its way: it waits (at most
``max_wait_ms``) only while callers announced by :meth:`MicroBatcher.expect` are still decoding, so
a lone request is not delayed and a burst still batches. The queue is capped (``max_queue`` images
waiting or running): past it a request is refused at once with 503 ``overloaded`` and a
``Retry-After`` estimated from the recent pace, instead of waiting behind an unbounded queue.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from hazardlens.detections import Detections
from hazardlens.errors import HazardError
from hazardlens.models.engines import Engine

log = logging.getLogger(__name__)


class Overloaded(HazardError):
    """The model's queue is full: answered 503 with ``Retry-After`` (seconds) rather than queued."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}


@dataclass(slots=True)
class _Request:
    image: np.ndarray
    conf: float
    iou: float
    future: Future[Detections] = field(default_factory=Future)


class MicroBatcher:
    """Thread-safe front of one engine; ``submit`` blocks until that image's detections are ready.

    Requests with different ``conf``/``iou`` that land in the same window are run as separate
    ``predict`` calls, since an engine call takes one threshold pair. If a batched call fails, its
    images are retried one by one so that only the caller whose image is at fault gets the error.
    ``close`` finishes what was already submitted; it does not close the engine, whose owner does.
    """

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        *,
        workers: int | None = None,
        max_queue: int = 0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.workers = max(1, int(workers if workers is not None else getattr(engine, "streams", 1) or 1))
        self.max_queue = max(0, int(max_queue))  # 0: unbounded
        # queue.Queue, not SimpleQueue: CPython 3.11's SimpleQueue.get(timeout) can wait far past its
        # timeout (until the next put) when another consumer took the item its wake-up was for; with two
        # stream workers that held a gathered batch while every caller waited on it (tests/test_batching.py
        # replays the race).
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight = 0
        self._expected = 0  # callers announced by expect() that have not submitted yet
        self._seconds_per_image = 0.1  # moving average, for Retry-After
        self.batches_run = 0  # engine.predict calls made, for metrics
        self.images_run = 0
        self.refused = 0  # requests answered 503 overloaded
        self._threads = [
            threading.Thread(target=self._loop, name=f"hazardlens-microbatcher-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not yet answered (waiting or running)."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    def expect(self) -> _Expectation:
        """Announce a request that will submit soon (its photo is being decoded), so that a worker
        gathering a batch waits for it; use as a context manager around decode and submit."""
        return _Expectation(self)

    def _admit(self, count: int) -> None:
        """Count ``count`` images in, or refuse them (caller holds the lock)."""
        if self._closed:
            raise HazardError("the model is shutting down", code="unavailable", status=503)
        if self.max_queue and self._in_flight + count > self.max_queue and self._in_flight > 0:
            self.refused += 1
            wait = math.ceil(self._in_flight * self._seconds_per_image / self.workers)
            raise Overloaded(
                f"{self._in_flight} images are waiting for this model (the limit is {self.max_queue}); "
                f"retry in about {max(1, wait)} s",
                retry_after=wait,
            )
        self._in_flight += count

    def submit(
        self, image: np.ndarray, conf: float = 0.25, iou: float = 0.45, timeout: float | None = None
    ) -> Detections:
        """Detect on one BGR image; raises what the engine raised for this image.

        ``timeout`` (seconds) bounds the wait; a request that times out before it ran is dropped.
        """
        request = _Request(image, float(conf), float(iou))
        with self._lock:  # checked and enqueued atomically, so close() cannot strand a request
            self._admit(1)
            self._queue.put(request)
        try:
            return request.future.result(timeout)
        except FutureTimeout:
            if request.future.cancel():
                self._done(1)
            self._log_stall([request])
            raise HazardError("inference timed out", code="timeout", status=504) from None

    def submit_many(
        self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.45, timeout: float | None = None
    ) -> list[Detections]:
        """Detect on several images of one request (sliced inference) as one queue entry each, enqueued
        together so the worker batches them; ``timeout`` bounds the whole wait."""
        requests = [_Request(image, float(conf), float(iou)) for image in images]
        with self._lock:
            self._admit(len(requests))
            for request in requests:
                self._queue.put(request)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return [
                r.future.result(None if deadline is None else max(0.0, deadline - time.monotonic())) for r in requests
            ]
        except FutureTimeout:
            self._done(sum(1 for r in requests if r.future.cancel()))
            self._log_stall(requests)
            raise HazardError("inference timed out", code="timeout", status=504) from None

    def _log_stall(self, requests: list[_Request]) -> None:
        """A request timed out: say what the batcher was doing (its counters and its worker threads'
        stacks), so a stall is diagnosable from the log instead of only a 504."""
        frames = sys._current_frames()
        stacks = {
            t.name: "".join(traceback.format_stack(frames[t.ident])[-6:]) if t.ident in frames else "(gone)"
            for t in self._threads
        }
        log.warning(
            "micro-batcher request timed out: in_flight=%s expected=%s queued=%s closed=%s futures=%s alive=%s\n%s",
            self._in_flight,
            self._expected,
            self._queue.qsize(),
            self._closed,
            [r.future._state for r in requests],  # noqa: SLF001 - diagnostics only
            [t.is_alive() for t in self._threads],
            "\n".join(f"-- {name}:\n{stack}" for name, stack in stacks.items()),
        )

    def _done(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting requests, answer the queued ones, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``first`` plus what is already queued, up to ``max_batch``; waits (up to ``max_wait_s``) for
        more only while announced callers are still on their way."""
        batch, deadline = [first], time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and self._expected > 0:
                    item = self._queue.get(timeout=min(remaining, 0.001))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                if remaining > 0 and self._expected > 0:
                    continue
                break
            if item is None:  # this worker's stop sentinel (close() queues one per worker)
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            try:
                self._run(live)
            except BaseException as exc:  # never leave a caller blocked, whatever happened
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(exc)
                log.exception("micro-batcher worker failed")
            finally:
                self._done(len(live))

    def _run(self, requests: list[_Request]) -> None:
        groups: dict[tuple[float, float], list[_Request]] = defaultdict(list)
        for request in requests:
            groups[(request.conf, request.iou)].append(request)
        for (conf, iou), group in groups.items():
            try:
                results = self._predict([r.image for r in group], conf, iou)
            except Exception as exc:
                if len(group) == 1:
                    group[0].future.set_exception(exc)
                    continue
                self._one_by_one(group, conf, iou)
                continue
            for request, result in zip(group, results, strict=True):
                request.future.set_result(result)

    def _one_by_one(self, group: list[_Request], conf: float, iou: float) -> None:
        for request in group:
            try:
                request.future.set_result(self._predict([request.image], conf, iou)[0])
            except Exception as exc:
                request.future.set_exception(exc)

    def _predict(self, images: list[np.ndarray], conf: float, iou: float) -> list[Detections]:
        self.batches_run += 1
        self.images_run += len(images)
        start = time.perf_counter()
        results = self.engine.predict(images, conf, iou)
        per_image = (time.perf_counter() - start) / max(1, len(images))
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * per_image
        if len(results) != len(images):
            raise RuntimeError(f"engine answered {len(results)} results for {len(images)} images")
        return results


class _Expectation:
    """See :meth:`MicroBatcher.expect`."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher

    def __enter__(self) -> _Expectation:
        with self._batcher._lock:
            self._batcher._expected += 1
        return self

    def done(self) -> None:
        """The caller submitted (or gave up): stop waiting for it."""
        batcher, self._batcher = self._batcher, None  # type: ignore[assignment]
        if batcher is not None:
            with batcher._lock:
                batcher._expected -= 1

    def __exit__(self, *exc: object) -> None:
        self.done()
