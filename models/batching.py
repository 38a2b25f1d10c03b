"""Micro-batching: turn many concurrent single-image requests into few batched engine calls.

A detector costs nearly the same for 1 image as for 8 on a GPU (and noticeably less per image on a
CPU), and an engine must not be entered by many threads at once anyway (Ultralytics is not
thread-safe; ONNX Runtime would oversubscribe the cores). So each HTTP worker thread hands its image
to :class:`MicroBatcher` and blocks; one worker thread collects what arrives within ``max_wait_ms``
and runs it as one ``engine.predict`` call. The added latency is bounded by ``max_wait_ms``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
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

    def __init__(self, engine: Engine, max_batch: int = 8, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight = 0
        self.batches_run = 0  # engine.predict calls made, for metrics
        self.images_run = 0
        self._worker = threading.Thread(target=self._loop, name="hazardlens-microbatcher", daemon=True)
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not yet answered (waiting or running)."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(
        self, image: np.ndarray, conf: float = 0.25, iou: float = 0.45, timeout: float | None = None
    ) -> Detections:
        """Detect on one BGR image; raises what the engine raised for this image.

        ``timeout`` (seconds) bounds the wait; a request that times out before it ran is dropped.
        """
        request = _Request(image, float(conf), float(iou))
        with self._lock:  # checked and enqueued atomically, so close() cannot strand a request
            if self._closed:
                raise HazardError("the model is shutting down", code="unavailable", status=503)
            self._in_flight += 1
            self._queue.put(request)
        try:
            return request.future.result(timeout)
        except FutureTimeout:
            if request.future.cancel():
                self._done(1)
            raise HazardError("inference timed out", code="timeout", status=504) from None

    def submit_many(
        self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.45, timeout: float | None = None
    ) -> list[Detections]:
        """Detect on several images of one request (sliced inference) as one queue entry each, enqueued
        together so the worker batches them; ``timeout`` bounds the whole wait."""
        requests = [_Request(image, float(conf), float(iou)) for image in images]
        with self._lock:
            if self._closed:
                raise HazardError("the model is shutting down", code="unavailable", status=503)
            self._in_flight += len(requests)
            for request in requests:
                self._queue.put(request)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return [
                r.future.result(None if deadline is None else max(0.0, deadline - time.monotonic())) for r in requests
            ]
        except FutureTimeout:
            self._done(sum(1 for r in requests if r.future.cancel()))
            raise HazardError("inference timed out", code="timeout", status=504) from None

    def _done(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting requests, answer the queued ones, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._worker.join(timeout)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, deadline = [first], time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:  # past the deadline, still take what is already queued, without waiting
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
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
        results = self.engine.predict(images, conf, iou)
        if len(results) != len(images):
            raise RuntimeError(f"engine answered {len(results)} results for {len(images)} images")
        return results
