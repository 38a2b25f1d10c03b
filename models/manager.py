"""The models one serving worker holds, and how it swaps them without dropping a request.

The catalogue says which version is in production (``models.registry``); every worker follows it.
:class:`ModelManager` loads that version at start, and a poller thread re-reads the catalogue every
``settings.model_poll_s`` seconds. When another version is promoted, the new engine is loaded and
warmed up *completely* before the manager's reference is swapped (one assignment under a lock), so
a request either got the old model or gets the new one, never none. Requests hold a
:class:`ModelLease` while they run; a retired model is closed only when its last lease is returned,
so an in-flight request finishes on the engine it started on.

"No worker keeps serving a retired model": once the catalogue no longer names a version as
production, new unpinned requests never get it again (at most one poll interval late). If the new
version cannot be loaded, the worker answers 503 until it can (the poller retries) rather than quietly
serving a version an administrator retired; a rollback is the fast way out.

A request may also pin a version (``get("3")``) to compare a candidate before promotion. Pinned
versions are loaded on demand into a small LRU; archived ones are refused (409), and a pinned model
that gets archived is dropped on the next poll.

Each loaded engine sits behind its own :class:`~hazardlens.models.batching.MicroBatcher`, so
concurrent requests share forward passes and never enter an engine concurrently.

:class:`ModelManager` is the :class:`hazardlens.detector.Detector` every caller uses (``detect``,
``detect_many``); serving hands it to the labeling part as such.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
from sqlalchemy import select

from hazardlens.context import Context
from hazardlens.detections import Detections
from hazardlens.detector import DEFAULT_CONF, DEFAULT_IOU, Detector, DetectResult, Tiling, relevant
from hazardlens.errors import Conflict, HazardError, Invalid
from hazardlens.models.batching import MicroBatcher
from hazardlens.models.engines import (
    INT8_KINDS,
    Engine,
    cpu_cores,
    export_onnx,
    load_engine,
    parse_engine,
    plan_streams,
)
from hazardlens.models.preprocess import decode_at_scale, decode_image, scale_detections
from hazardlens.models.quantize import accepted_variants, variant_path
from hazardlens.models.registry import (
    DEFAULT_NAME,
    ensure_baseline,
    get_model,
    local_weights,
    production_model,
)
from hazardlens.models.tiling import check_tiling, predict_tiled, tile_scale
from hazardlens.orm import ModelVersion

log = logging.getLogger(__name__)

#: Longest wait the micro-batcher adds to a request to gather a batch (the issue caps it at 5 ms).
MAX_WAIT_MS = 5.0

#: A pinned model version as requests may name it (registry versions are "1", "2", ...).
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


class ModelUnavailable(HazardError):
    status, code = 503, "model_unavailable"


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to build an engine, copied out of the catalogue row (rows die with sessions)."""

    name: str
    version: str
    stage: str
    classes: tuple[str, ...]
    imgsz: int
    weights_sha256: str

    @classmethod
    def of(cls, mv: ModelVersion) -> ModelSpec:
        return cls(mv.name, mv.version, mv.stage, tuple(mv.classes), int(mv.imgsz), mv.weights_sha256)


EngineLoader = Callable[[Context, ModelVersion], Engine]


class InferenceObserver(Protocol):
    """Metrics hooks (serving plugs Prometheus in; models stays free of it)."""

    def inference(self, name: str, version: str, seconds: float, images: int) -> None: ...

    def swapped(self, name: str, old: str | None, new: str | None) -> None: ...


def default_loader(ctx: Context, mv: ModelVersion) -> Engine:
    """The configured back-end (``settings.engine``, ``settings.device``: CUDA when present).

    ``onnx``/``openvino`` serve the FP32 ONNX export, the INT8 kinds the version's accepted variant
    (:mod:`hazardlens.models.quantize`), ``auto`` the fastest of those on this machine
    (:func:`choose_engine`). Streams and threads come from ``settings.infer_streams`` /
    ``infer_threads`` (sized to the cores by default).
    """
    s = ctx.settings
    kind = parse_engine(s.engine)
    if kind == "ultralytics":
        return load_engine(
            kind,
            local_weights(ctx, mv),
            list(mv.classes),
            int(mv.imgsz),
            s.cache_dir,
            device=s.device,
            version=mv.version,
        )
    if kind == "auto":
        return choose_engine(ctx, mv)
    return _build(ctx, mv, kind)


def cached_onnx(ctx: Context, mv: ModelVersion) -> Path:
    """The FP32 ONNX export of ``mv`` (made once per weights, cached under ``cache_dir/onnx``).

    The export from ``.pt`` runs in a child process: it needs PyTorch and Ultralytics, which would
    otherwise stay in the serving worker's memory for good (several hundred MB) although ONNX
    Runtime never uses them."""
    s = ctx.settings
    weights = local_weights(ctx, mv)
    onnx = s.cache_dir / "onnx" / f"{mv.weights_sha256[:16]}-{int(mv.imgsz)}.onnx"
    if not onnx.with_name(onnx.name + ".json").is_file():
        _export_in_child(ctx, weights, onnx, int(mv.imgsz), mv.weights_sha256)
    return export_onnx(weights, onnx, int(mv.imgsz), source_sha256=mv.weights_sha256)  # a no-op once cached


def _build(ctx: Context, mv: ModelVersion, kind: str) -> Engine:
    s = ctx.settings
    streams, threads = plan_streams(s.infer_streams, s.infer_threads)
    source = variant_path(ctx, mv, kind) if kind in INT8_KINDS else cached_onnx(ctx, mv)
    return load_engine(
        kind,
        source,
        list(mv.classes),
        int(mv.imgsz),
        s.cache_dir,
        device=s.device,
        version=mv.version,
        streams=streams,
        threads=threads,
    )


def _cpu_signature() -> str:
    """What makes a timing valid elsewhere: the processor model and the cores this process may use."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}|{cpu_cores()}"


def _time_engine(engine: Engine, imgsz: int, rounds: int = 3) -> float:
    """Best of ``rounds`` single-image predictions on a photo-like frame, in ms (after one warm-up)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(imgsz * 3 // 32, imgsz // 8, 3), dtype=np.uint8)
    frame = cv2.resize(small, (imgsz, imgsz * 3 // 4), interpolation=cv2.INTER_CUBIC)
    engine.predict([frame])
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        engine.predict([frame])
        best = min(best, (time.perf_counter() - start) * 1000)
    return best


def choose_engine(ctx: Context, mv: ModelVersion) -> Engine:
    """``HAZARDLENS_ENGINE=auto``: the fastest engine on this machine among FP32 ONNX Runtime, FP32
    OpenVINO and the version's INT8 variants that passed their accuracy check.

    Each candidate is loaded and timed once (a few single-image predictions); the choice is cached in
    ``cache_dir/engine-choice.json`` per weights, variants, processor and stream plan, so later starts
    load only the winner. On a CUDA device the answer is ONNX Runtime's CUDA provider without timing
    (the CPU engines cannot use the GPU)."""
    s = ctx.settings
    if s.device.startswith("cuda") or (s.device == "auto" and _ort_has_cuda()):
        return _build(ctx, mv, "onnx")
    candidates = ["onnx", "openvino", *accepted_variants(mv)]
    streams, threads = plan_streams(s.infer_streams, s.infer_threads)
    variants = (mv.card or {}).get("variants") or {}
    digest = ",".join(f"{k}:{sorted((variants[k].get('files') or {}).values())}" for k in candidates if k in variants)
    key = f"{mv.weights_sha256[:16]}|{int(mv.imgsz)}|{digest}|{_cpu_signature()}|{streams}x{threads}"
    cache = s.cache_dir / "engine-choice.json"
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    chosen = (known.get(key) or {}).get("engine")
    if chosen in candidates:
        try:
            return _build(ctx, mv, chosen)
        except Exception:
            log.exception("cached engine choice failed to load; timing the candidates again", extra={"engine": chosen})
    timings: dict[str, float] = {}
    best: tuple[float, Engine] | None = None
    for kind in candidates:
        try:
            engine = _build(ctx, mv, kind)
        except Exception as exc:  # e.g. OpenVINO missing on this machine: not a candidate here
            log.warning("engine %s not available for %s %s: %s", kind, mv.name, mv.version, exc)
            continue
        ms = _time_engine(engine, int(mv.imgsz))
        timings[kind] = round(ms, 2)
        if best is None or ms < best[0]:
            if best is not None:
                best[1].close()
            best = (ms, engine)
        else:
            engine.close()
    if best is None:
        raise ModelUnavailable(f"no engine could load {mv.name} {mv.version}")
    known[key] = {"engine": best[1].name, "ms": timings, "measured_at": datetime.now(UTC).isoformat()}
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=2), encoding="utf-8")
        os.replace(tmp, cache)
    log.info("engine chosen", extra={"model": mv.name, "version": mv.version, "engine": best[1].name, "ms": timings})
    return best[1]


def _ort_has_cuda() -> bool:
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    return False


def _export_in_child(ctx: Context, weights: Path, onnx: Path, imgsz: int, sha256: str) -> None:
    code = (
        "import sys; from hazardlens.models.engines import export_onnx; "
        "export_onnx(sys.argv[1], sys.argv[2], int(sys.argv[3]), source_sha256=sys.argv[4])"
    )
    env = {**os.environ, "HAZARDLENS_HOME": str(ctx.settings.home.resolve())}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(weights), str(onnx), str(imgsz), sha256],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("ONNX export in a child process failed (%s); exporting in this process", exc)
        return
    if done.returncode != 0:
        log.warning(
            "ONNX export in a child process failed; exporting in this process", extra={"stderr": done.stderr[-2000:]}
        )


@dataclass(eq=False)
class LoadedModel:
    spec: ModelSpec
    engine: Engine
    batcher: MicroBatcher
    loaded_at: datetime
    load_seconds: float
    refs: int = 0
    retired: bool = False
    closed: bool = False
    served: int = 0
    role: str = "production"  # production | pinned

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.batcher.close(timeout=30)
        finally:
            self.engine.close()
        log.info("model closed", extra={"model": self.spec.name, "version": self.spec.version})

    def info(self) -> dict[str, Any]:
        providers = getattr(self.engine, "providers", None)
        device = getattr(self.engine, "device", None) or (providers[0] if providers else None)
        return {
            "name": self.spec.name,
            "version": self.spec.version,
            "stage": self.spec.stage,
            "role": self.role,
            "engine": getattr(self.engine, "name", "?"),
            "device": device,
            "streams": self.batcher.workers,
            "imgsz": self.spec.imgsz,
            "classes": list(self.spec.classes),
            "loaded_at": self.loaded_at.isoformat(),
            "load_seconds": round(self.load_seconds, 3),
            "in_flight": self.refs,
            "queue_depth": self.batcher.queue_depth,
            "requests": self.served,
            "batches_run": self.batcher.batches_run,
            "images_run": self.batcher.images_run,
            "refused": self.batcher.refused,
        }


class ModelLease:
    """A claim on one loaded model for the length of a request: the model cannot be closed under it.

    Use as a context manager; ``release`` is idempotent.
    """

    def __init__(self, manager: ModelManager, model: LoadedModel) -> None:
        self._manager = manager
        self.model = model
        self._released = False

    @property
    def name(self) -> str:
        return self.model.spec.name

    @property
    def version(self) -> str:
        return self.model.spec.version

    @property
    def imgsz(self) -> int:
        return self.model.spec.imgsz

    @property
    def info(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}

    def predict(
        self, image_bgr: np.ndarray, conf: float = 0.25, iou: float = 0.45, timeout: float | None = None
    ) -> Detections:
        """Detections in the pixels of ``image_bgr``, through the model's micro-batcher."""
        return self.predict_many([image_bgr], conf, iou, timeout=timeout)[0]

    def predict_many(
        self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.45, timeout: float | None = None
    ) -> list[Detections]:
        """Detections for the images of one request (one photo, or the windows of sliced inference),
        enqueued together so the micro-batcher runs them in as few forward passes as it can."""
        if self._released:
            raise RuntimeError("lease already released")
        start = time.perf_counter()
        try:
            return self.model.batcher.submit_many(images, conf, iou, timeout=timeout)
        finally:
            self._manager._observe(self.model, time.perf_counter() - start)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self.model)

    def __enter__(self) -> ModelLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelManager:
    """The production model of one worker, plus pinned versions; see the module docstring."""

    def __init__(
        self,
        ctx: Context,
        *,
        name: str = DEFAULT_NAME,
        max_batch: int = 8,
        max_wait_ms: float = MAX_WAIT_MS,
        pinned_capacity: int = 2,
        poll_s: float | None = None,
        loader: EngineLoader | None = None,
        observer: InferenceObserver | None = None,
        warmup: bool = True,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.max_batch = max_batch
        self.max_wait_ms = min(max_wait_ms, MAX_WAIT_MS)
        self.pinned_capacity = max(0, pinned_capacity)
        self.poll_s = ctx.settings.model_poll_s if poll_s is None else poll_s
        self.observer = observer
        self._loader = loader or default_loader
        self._warmup = warmup
        self._lock = threading.RLock()
        self._current: LoadedModel | None = None
        self._pinned: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Future[LoadedModel]] = {}
        self._refresh_lock = threading.Lock()
        self._last_check = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline_checked = False
        self._failed: dict[str, float] = {}  # version -> when its load last failed
        self.retry_failed_s = max(30.0, self.poll_s)
        self.last_error: str | None = None
        self.swaps = 0

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, background: bool = True) -> None:
        """Load the production model (registering the shipped baseline on a fresh install) and, with
        ``background``, keep following the catalogue in a poller thread. Without it the catalogue is
        re-read lazily, on the first request after ``poll_s`` has passed (tests, CLI)."""
        if background:
            self.start_background()
        else:
            self._initial_load()

    def start_background(self) -> None:
        """Load in the poller thread and return at once: the server answers /healthz meanwhile and
        /readyz turns ready when the model is in (a first ONNX export can take a while)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll_loop, name="hazardlens-model-poller", daemon=True)
            self._thread.start()

    def _initial_load(self) -> None:
        if not self._baseline_checked:
            self._baseline_checked = True
            try:
                ensure_baseline(self.ctx)
            except Exception as exc:  # a broken baseline must not stop the API from starting
                log.exception("could not register the shipped baseline")
                self.last_error = f"baseline: {exc}"
        with contextlib.suppress(Exception):  # reported through last_error; requests then get a 503
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            models = [m for m in [self._current, *self._pinned.values()] if m is not None]
            self._current = None
            self._pinned.clear()
            for m in models:
                m.retired = True
            to_close = [m for m in models if m.refs == 0]
        for m in to_close:
            m.close()

    def poke(self) -> None:
        """Ask for a catalogue check soon (after a promotion made through this worker)."""
        self._last_check = 0.0
        self._wake.set()

    def _poll_loop(self) -> None:
        self._initial_load()
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
            except Exception as exc:  # the poller must survive a flaky catalogue
                self.last_error = f"poll: {exc}"
                log.exception("model poll failed")

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def current_version(self) -> str | None:
        current = self._current
        return current.spec.version if current is not None else None

    # --- catalogue -------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Follow the catalogue once: swap in a newly promoted version, drop retired ones. Returns
        whether the production model changed. A version that fails to load is reported through
        ``last_error`` (the worker answers 503) and retried after ``retry_failed_s``; catalogue
        errors raise. Concurrent calls are serialised."""
        with self._refresh_lock:
            self._last_check = time.monotonic()
            with self.ctx.db.read_session() as s:  # polled every few seconds: never the write lock
                mv = production_model(s, self.name)
                want = ModelSpec.of(mv) if mv is not None else None
                pinned = list(self._pinned)
                stages = (
                    dict(
                        s.execute(
                            select(ModelVersion.version, ModelVersion.stage).where(
                                ModelVersion.name == self.name, ModelVersion.version.in_(pinned)
                            )
                        )
                        .tuples()
                        .all()
                    )
                    if pinned
                    else {}
                )
            self._drop_retired_pins(stages)
            current = self._current
            if want is None:
                if current is not None:
                    log.warning(
                        "no production model in the catalogue any more; unloading",
                        extra={"model": self.name, "version": current.spec.version},
                    )
                    self._swap(None)
                    return True
                return False
            if current is not None and current.spec.version == want.version:
                if current.spec.stage != want.stage:
                    current.spec = want
                return False
            failed_at = self._failed.get(want.version)
            if failed_at is not None and time.monotonic() - failed_at < self.retry_failed_s:
                return False  # do not re-export broken weights every poll; retried after retry_failed_s
            try:
                model = self._obtain(want, role="production")
            except Exception as exc:
                self._failed[want.version] = time.monotonic()
                self.last_error = f"loading {want.name} {want.version}: {exc}"
                log.exception("could not load the production model", extra={"version": want.version})
                if current is not None:  # retired by the catalogue: stop serving it (see module docstring)
                    self._swap(None)
                return current is not None
            self._failed.pop(want.version, None)
            self.last_error = None
            self._swap(model)
            return True

    def _drop_retired_pins(self, stages: dict[str, str]) -> None:
        drop: list[LoadedModel] = []
        with self._lock:
            for version in list(self._pinned):
                if stages.get(version, "archived") == "archived":
                    drop.append(self._pinned.pop(version))
                else:
                    m = self._pinned[version]
                    m.spec = replace(m.spec, stage=stages[version])
        for m in drop:
            self._retire(m)

    def _swap(self, model: LoadedModel | None) -> None:
        with self._lock:
            old = self._current
            if model is not None:
                self._pinned.pop(model.spec.version, None)  # promoted from the pinned LRU: reuse it
                model.role = "production"
            self._current = model
            self.swaps += 1
        new_v = model.spec.version if model else None
        old_v = old.spec.version if old else None
        log.info("model swapped", extra={"model": self.name, "from_version": old_v, "to_version": new_v})
        if self.observer is not None:
            self.observer.swapped(self.name, old_v, new_v)
        if old is not None and old is not model:
            self._retire(old)

    def _retire(self, model: LoadedModel) -> None:
        with self._lock:
            model.retired = True
            close_now = model.refs == 0
        if close_now:
            model.close()

    def _obtain(self, spec: ModelSpec, role: str) -> LoadedModel:
        """The loaded model for ``spec``: already held, being loaded by another thread, or loaded now."""
        with self._lock:
            for held in [self._current, *self._pinned.values()]:
                if held is not None and held.spec.version == spec.version and not held.retired:
                    return held
            future = self._loading.get(spec.version)
            owner = future is None
            if owner:
                future = Future()
                self._loading[spec.version] = future
        assert future is not None
        if not owner:
            return future.result()
        try:
            model = self._load(spec, role)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._loading.pop(spec.version, None)
        future.set_result(model)
        return model

    def _load(self, spec: ModelSpec, role: str) -> LoadedModel:
        start = time.perf_counter()
        with self.ctx.db.read_session() as s:
            mv = get_model(s, spec.name, spec.version)
        # Loaded outside the session: on SQLite an open transaction holds the write lock, and an
        # export can take minutes. The row's attributes stay readable (expire_on_commit=False).
        engine = self._loader(self.ctx, mv)
        try:
            if self._warmup:  # first call allocates arenas and compiles kernels: pay it before serving
                engine.predict([np.full((spec.imgsz, spec.imgsz, 3), 114, np.uint8)])
            batcher = MicroBatcher(
                engine, max_batch=self.max_batch, max_wait_ms=self.max_wait_ms, max_queue=self.ctx.settings.max_queue
            )
        except BaseException:
            engine.close()
            raise
        seconds = time.perf_counter() - start
        log.info("model loaded", extra={"model": spec.name, "version": spec.version, "seconds": round(seconds, 2)})
        return LoadedModel(spec, engine, batcher, datetime.now(UTC), seconds, role=role)

    # --- leases ----------------------------------------------------------------------------

    def get(self, version: str | None = None) -> ModelLease:
        """A lease on the production model, or on ``version`` (loaded on demand into the pinned LRU).

        Raises ModelUnavailable (503) when nothing is in production, NotFound for an unknown version,
        Conflict for an archived one.
        """
        if version is not None:
            if not VERSION_PATTERN.fullmatch(version):
                raise Invalid(
                    "model version must be 1-40 letters, digits, '.', '_' or '-'", code="invalid_model_version"
                )
            lease = self._lease_pinned(version)
            if lease is not None:
                return lease
            return self._load_pinned(version)
        if self._thread is None and time.monotonic() - self._last_check > self.poll_s:
            self._lazy_refresh()
        with self._lock:
            current = self._current
            if current is not None:
                current.refs += 1
                current.served += 1
                return ModelLease(self, current)
        if self._thread is None:
            self._lazy_refresh()  # nothing loaded yet: maybe a model was registered since
            with self._lock:
                if self._current is not None:
                    self._current.refs += 1
                    self._current.served += 1
                    return ModelLease(self, self._current)
        detail = f" ({self.last_error})" if self.last_error else ""
        raise ModelUnavailable(
            f"no production model of '{self.name}' is loaded in this worker{detail}; "
            f"promote one with POST /v1/models/{{name}}/{{version}}/promote"
        )

    def _lazy_refresh(self) -> None:
        self._initial_load()

    def _lease_pinned(self, version: str) -> ModelLease | None:
        with self._lock:
            current = self._current
            if current is not None and current.spec.version == version:
                model = current
            elif version in self._pinned:
                self._pinned.move_to_end(version)
                model = self._pinned[version]
            else:
                return None
            model.refs += 1
            model.served += 1
            return ModelLease(self, model)

    def _load_pinned(self, version: str) -> ModelLease:
        with self.ctx.db.read_session() as s:
            spec = ModelSpec.of(get_model(s, self.name, version))
        if spec.stage == "archived":
            raise Conflict(
                f"model {self.name} {version} is archived (retired) and is not served; "
                f"roll back or promote it to use it again",
                code="model_retired",
            )
        for _ in range(3):  # another thread may retire what we obtained before we hold it: try again
            model = self._obtain(spec, role="pinned")
            evicted: list[LoadedModel] = []
            with self._lock:
                if model.retired:
                    continue
                if model is not self._current and model.spec.version not in self._pinned:
                    self._pinned[model.spec.version] = model
                    while len(self._pinned) > self.pinned_capacity:
                        _, old = self._pinned.popitem(last=False)
                        evicted.append(old)
                if model in evicted:  # no room to keep it: serve this request, close it afterwards
                    evicted.remove(model)
                    model.retired = True
                model.refs += 1
                model.served += 1
                lease = ModelLease(self, model)
            for old in evicted:
                self._retire(old)
            return lease
        raise ModelUnavailable(f"model {self.name} {version} was unloaded while being loaded; try again")

    def _release(self, model: LoadedModel) -> None:
        with self._lock:
            model.refs -= 1
            close_now = model.retired and model.refs == 0
        if close_now:
            model.close()

    def _observe(self, model: LoadedModel, seconds: float) -> None:
        if self.observer is not None:
            try:
                self.observer.inference(model.spec.name, model.spec.version, seconds, 1)
            except Exception:  # metrics must never fail a request
                log.exception("inference observer failed")

    def loaded(self) -> list[dict[str, Any]]:
        """What this worker holds right now (production first), for GET /v1/models and metrics."""
        with self._lock:
            models = [m for m in [self._current, *self._pinned.values()] if m is not None]
            return [m.info() for m in models]

    # --- detection -------------------------------------------------------------------------

    def detect(
        self,
        data: bytes,
        *,
        version: str | None = None,
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        max_pixels: int | None = None,
        timeout: float | None = None,
        keep_image_side: int | None = None,
        tiles: Tiling | None = None,
    ) -> DetectResult:
        """Decode once (reduced to what the model needs, EXIF-oriented), detect, and answer boxes in
        the pixels of the oriented original. ``keep_image_side`` keeps a decode of at least that long
        side in the result, for drawing an evidence image without decoding twice; ``tiles``
        ``(window, overlap)`` asks for sliced inference."""
        with self.get(version) as lease:
            return detect_with(
                lease,
                data,
                conf=conf,
                iou=iou,
                max_pixels=max_pixels,
                timeout=timeout,
                keep_image_side=keep_image_side,
                tiles=tiles,
            )

    def detect_many(
        self,
        images: Sequence[bytes],
        *,
        version: str | None = None,
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        max_pixels: int | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, str], list[DetectResult | HazardError]]:
        """Several images on one lease (one model version for all), submitted concurrently so the
        micro-batcher runs them as batched forward passes. A bad image yields its error in its slot;
        the others still get answers. Returns the model used and the results in input order."""
        with self.get(version) as lease:

            def one(data: bytes) -> DetectResult | HazardError:
                try:
                    return detect_with(lease, data, conf=conf, iou=iou, max_pixels=max_pixels, timeout=timeout)
                except HazardError as exc:
                    return exc

            if len(images) <= 1:
                return lease.info, [one(d) for d in images]
            with ThreadPoolExecutor(
                max_workers=min(len(images), self.max_batch), thread_name_prefix="hazardlens-detect"
            ) as pool:
                return lease.info, list(pool.map(one, images))


def detect_with(
    lease: ModelLease,
    data: bytes,
    *,
    conf: float = 0.25,
    iou: float = 0.45,
    max_pixels: int | None = None,
    timeout: float | None = None,
    keep_image_side: int | None = None,
    tiles: Tiling | None = None,
) -> DetectResult:
    """``tiles`` (window, overlap) asks for sliced inference (models/tiling.py) on photos much larger
    than the model's training frames."""
    if not 0.0 <= conf <= 1.0:
        raise Invalid(f"conf must be between 0 and 1, not {conf}", code="invalid_conf")
    start = time.perf_counter()
    with lease.model.batcher.expect():  # a worker gathering a batch waits for this photo's decode
        if tiles is not None:
            check_tiling(*tiles)
            image, size = decode_at_scale(
                data, lambda long: tile_scale(long, lease.imgsz, tiles[0]), max_pixels=max_pixels
            )
        else:
            image, size = decode_image(data, max(lease.imgsz, keep_image_side or 0), max_pixels=max_pixels)
    decoded = time.perf_counter()
    if tiles is not None:
        dets = predict_tiled(
            lambda crops: lease.predict_many(crops, conf, iou, timeout=timeout),
            image,
            lease.imgsz,
            overlap=tiles[1],
            iou=iou,
        )
    else:
        dets = lease.predict(image, conf, iou, timeout=timeout)
    inferred = time.perf_counter()
    h, w = image.shape[:2]
    dets = scale_detections(dets, (w, h), size)
    return DetectResult(
        model=lease.info,
        image_size=size,
        detections=dets,
        classes=lease.model.spec.classes,
        timing_ms={
            "decode": round((decoded - start) * 1000, 2),
            "inference": round((inferred - decoded) * 1000, 2),
            "total": round((time.perf_counter() - start) * 1000, 2),
        },
        image=image if keep_image_side else None,
        image_scale=w / size[0] if size[0] else 1.0,
    )


if TYPE_CHECKING:

    def _a_manager_is_a_detector(manager: ModelManager) -> Detector:  # checked by mypy
        return manager


__all__ = [
    "DetectResult",
    "InferenceObserver",
    "LoadedModel",
    "ModelLease",
    "ModelManager",
    "ModelSpec",
    "ModelUnavailable",
    "default_loader",
    "detect_with",
    "relevant",
]
