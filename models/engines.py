"""Inference engines: one interface, two back-ends.

* :class:`OnnxEngine` is what production serves with: ONNX Runtime is thread-safe, batches well and
  keeps PyTorch out of the request path's memory.
* :class:`UltralyticsEngine` runs the ``.pt`` directly. It is the reference the ONNX path is checked
  against and the fallback where ONNX export is impossible.

Both take BGR arrays and answer :class:`~hazardlens.detections.Detections` in the pixels of each given
image with taxonomy class keys, so nothing downstream knows which back-end ran. The ONNX file is a
cache derived from the ``.pt`` (:func:`export_onnx`), so the model registry only ever stores ``.pt``.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

import cv2
import numpy as np

from hazardlens.detections import Detections
from hazardlens.errors import HazardError, Invalid, NotFound
from hazardlens.models.preprocess import boxes_to_original, letterbox
from hazardlens.models.ultralytics_env import prepare_ultralytics

log = logging.getLogger(__name__)

EngineKind = Literal["onnx", "openvino", "onnx-int8", "openvino-int8", "ultralytics", "auto"]
#: What ``HAZARDLENS_ENGINE`` accepts. ``auto`` picks the fastest engine whose accuracy passed on
#: this machine (models.manager); the INT8 kinds need a variant made by ``hazardlens models quantize``.
ENGINE_KINDS: tuple[str, ...] = ("onnx", "openvino", "onnx-int8", "openvino-int8", "ultralytics", "auto")
#: INT8 engine -> the runtime it runs on.
INT8_KINDS = {"onnx-int8": "onnx", "openvino-int8": "openvino"}


def parse_engine(kind: str | None) -> str:
    """A known engine name, lower-cased; Invalid (``unknown_engine``) otherwise."""
    value = (kind or "").strip().lower()
    if value not in ENGINE_KINDS:
        raise Invalid(f"unknown engine {kind!r}; use one of {', '.join(ENGINE_KINDS)}", code="unknown_engine")
    return value


#: Ultralytics' defaults, kept so both back-ends cut candidates the same way.
MAX_DET = 300
MAX_NMS = 30000


@runtime_checkable
class Engine(Protocol):
    """What serving, evaluation and label suggestions need from a detector."""

    name: str  # back-end: "onnx" | "openvino" | "onnx-int8" | "openvino-int8" | "ultralytics"
    version: str  # identifies the weights (sha256 prefix unless the registry names it)
    class_keys: list[str]  # model class index -> taxonomy key
    imgsz: int

    def predict(self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.45) -> list[Detections]: ...

    def close(self) -> None: ...


def sha256_file(path: Path) -> str:
    """Streamed, so multi-hundred-MB weights never sit in memory at once."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
            shape = getattr(image, "shape", None)
            raise Invalid(f"image {i} must be an HxWx3 BGR array, got shape {shape}")


def _resolve_torch_device(device: str) -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Invalid("device 'cuda' requested but PyTorch sees no CUDA GPU")
        return "cuda:0" if device == "cuda" else device
    if device == "cpu":
        return "cpu"
    raise Invalid(f"unknown device {device!r}; use auto, cpu or cuda")


def _onnx_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    device = (device or "auto").lower()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and not has_cuda:
        raise Invalid("device 'cuda' requested but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    if device not in {"auto"} and not device.startswith("cuda"):
        raise Invalid(f"unknown device {device!r}; use auto, cpu or cuda")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda else ["CPUExecutionProvider"]


def _precision_args(half: bool) -> dict[str, object]:
    """Ultralytics 8.4 replaced ``half`` with ``quantize`` and warns on every call that uses ``half``."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if "quantize" in DEFAULT_CFG_DICT:
        return {"quantize": 16} if half else {}
    return {"half": half}


def nms_per_class(
    xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_det: int = MAX_DET
) -> np.ndarray:
    """Indices kept by class-aware NMS, best score first (boxes of different classes never suppress)."""
    if len(xyxy) == 0:
        return np.zeros((0,), dtype=np.int64)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float64)
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.astype(np.float64).tolist(), classes.astype(np.int32).tolist(), -1.0, float(iou)
    )
    keep = np.asarray(kept, dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[:max_det]


def _onnx_class_count(meta: dict[str, str], out_shape: Sequence[object], end2end: bool) -> int | None:
    """Classes the model was trained on: Ultralytics' ``names`` metadata, else the output width."""
    with contextlib.suppress(ValueError, SyntaxError, TypeError):
        names = ast.literal_eval(meta.get("names", ""))
        if isinstance(names, dict | list):
            return len(names)
    channels = out_shape[1] if len(out_shape) == 3 else None
    return channels - 4 if isinstance(channels, int) and not end2end else None


STRIDE = 32  # YOLO's largest feature-map stride: input sides must be multiples of it


def cpu_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_streams(streams: int = 0, threads: int = 0) -> tuple[int, int]:
    """Parallel inference streams and intra-op threads per stream for this machine.

    ``0`` means automatic: two streams on two or more cores (one runs while the other's images are
    letterboxed and decoded, and two single-threaded forward passes use two cores better than one
    two-threaded one), up to four on big machines, the cores shared among them. The engines give
    their first stream, the one a lone request gets, every core anyway (see :class:`OnnxEngine`)."""
    cores = cpu_cores()
    streams = int(streams) if streams and streams > 0 else max(1, min(4, cores // 2 if cores >= 8 else min(cores, 2)))
    threads = int(threads) if threads and threads > 0 else max(1, cores // streams)
    return streams, threads


def model_metadata(path: Path) -> dict[str, str]:
    """Ultralytics' export metadata (names, stride, end2end, ...) of an ONNX file, or of an OpenVINO IR
    from the ``metadata.yaml`` beside it (where Ultralytics' own OpenVINO loader looks too)."""
    if path.suffix.lower() == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}
    sidecar = path.parent / "metadata.yaml"
    if not sidecar.is_file():
        return {}
    import yaml

    loaded = yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


class _ArrayEngine:
    """Letterboxing, batching and YOLO output decoding shared by the ONNX Runtime and OpenVINO engines;
    a subclass only says how a float32 NCHW tensor becomes the model's raw output (:meth:`_infer`).

    ``streams`` concurrent :meth:`predict` calls run in parallel (each on its own ORT session or
    OpenVINO infer request); more callers wait for a free stream."""

    name = "?"
    streams = 1

    def _setup(
        self,
        path: Path,
        class_keys: Sequence[str],
        imgsz: int,
        version: str | None,
        max_det: int,
        max_batch: int,
        meta: dict[str, str],
        input_shape: Sequence[object],
        output_shape: Sequence[object],
    ) -> None:
        self.path = path
        self.class_keys = list(class_keys)
        self.version = version or sha256_file(path)[:12]
        self.max_det = max_det
        self._end2end = meta.get("end2end", "False").lower() == "true"
        batch, _, height, width = input_shape
        # A static-shape export dictates the input size and batch; a dynamic one takes ours.
        self.imgsz = int(height) if isinstance(height, int) and height > 0 and height == width else int(imgsz)
        self._rect = not (isinstance(height, int) and height > 0) and not (isinstance(width, int) and width > 0)
        self._static_batch = isinstance(batch, int) and batch > 0
        self._batch = int(batch) if self._static_batch else max_batch  # type: ignore[call-overload]
        model_classes = _onnx_class_count(meta, output_shape, self._end2end)
        if model_classes is not None and model_classes != len(self.class_keys):
            raise Invalid(f"model has {model_classes} classes but {len(self.class_keys)} class keys were given")

    def _infer(self, tensor: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _input_shape(self, images: Sequence[np.ndarray]) -> int | tuple[int, int]:
        """Rectangular input like Ultralytics' predictor: the long side at imgsz, the short side padded
        only to the stride (a 1280x704 photo runs at 640x352, not 640x640: ~45% less work)."""
        if not self._rect:
            return self.imgsz
        heights, widths = [], []
        for image in images:
            h, w = image.shape[:2]
            r = self.imgsz / max(h, w)
            heights.append(math.ceil(max(round(h * r), 1) / STRIDE) * STRIDE)
            widths.append(math.ceil(max(round(w * r), 1) / STRIDE) * STRIDE)
        return max(heights), max(widths)

    def _tensor(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[float, tuple[int, int]]]]:
        shape = self._input_shape(images)
        boxed = [letterbox(image, shape) for image in images]
        # BGR HWC uint8 -> RGB CHW float32 in [0, 1], written once into the batch (no stacked copy)
        first = boxed[0][0]
        tensor = np.empty((len(boxed), 3, first.shape[0], first.shape[1]), dtype=np.float32)
        for i, (padded, _, _) in enumerate(boxed):
            np.divide(padded[..., ::-1].transpose(2, 0, 1), np.float32(255.0), out=tensor[i], casting="unsafe")
        return tensor, [(b[1], b[2]) for b in boxed]

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(tensor), self._batch):
            part = tensor[start : start + self._batch]
            short = self._batch - len(part) if self._static_batch else 0
            if short:  # static batch export: pad with copies and drop their outputs
                part = np.concatenate([part, np.repeat(part[-1:], short, axis=0)])
            out = self._infer(part)
            chunks.append(out[: len(out) - short] if short else out)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def raw(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model's undecoded output for letterboxed ``images``; for parity checks and debugging."""
        _check_images(images)
        return self._run(self._tensor(images)[0])

    def _decode(self, pred: np.ndarray, conf: float, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._end2end:  # (K, 6): x1, y1, x2, y2, score, class, already NMS-ed
            pred = pred[pred[:, 4] > conf][: self.max_det]
            return pred[:, :4], pred[:, 4], pred[:, 5].astype(np.int64)
        if pred.shape[0] - 4 != len(self.class_keys):
            raise Invalid(f"model outputs {pred.shape[0] - 4} classes, {len(self.class_keys)} class keys given")
        # Threshold on the (nc, N) layout first: only the few candidates above ``conf`` are transposed
        # and copied (the full transpose of 8400 anchors was a third of the post-processing time).
        class_scores = pred[4:]
        best = class_scores.max(axis=0)
        candidates = np.flatnonzero(best > conf)
        if len(candidates) > MAX_NMS:
            candidates = candidates[np.argsort(-best[candidates], kind="stable")[:MAX_NMS]]
        scores = best[candidates]
        classes = class_scores[:, candidates].argmax(axis=0)
        cx, cy, w, h = pred[0, candidates], pred[1, candidates], pred[2, candidates], pred[3, candidates]
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        keep = nms_per_class(xyxy, scores, classes, iou, self.max_det)
        return xyxy[keep], scores[keep], classes[keep]

    def predict(self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.45) -> list[Detections]:
        if len(images) == 0:
            return []
        _check_images(images)
        tensor, geometry = self._tensor(images)
        output = self._run(tensor)
        results = []
        keys = np.asarray(self.class_keys, dtype=object)
        for image, pred, (ratio, pad) in zip(images, output, geometry, strict=True):
            xyxy, scores, classes = self._decode(pred, conf, iou)
            if len(classes) and (classes.min() < 0 or classes.max() >= len(keys)):
                raise Invalid(f"model predicted class {int(classes.max())} outside the {len(keys)} class keys")
            height, width = image.shape[:2]
            boxes = boxes_to_original(xyxy, ratio, pad, (width, height))
            results.append(Detections(boxes, keys[classes], scores))
        return results


class _Pool:
    """Per-stream objects (ORT sessions, OpenVINO infer requests) handed out one per call, plus an
    optional *solo* object that uses every core.

    The solo object is handed out only when nothing else runs and nobody waits, so a lone request
    keeps the latency of all cores; under load the calls share the per-stream objects and never run
    beside the solo one. Running both at once puts more threads than cores to work: on this 2-core
    machine one 2-thread and one 1-thread ORT session side by side took 37 ms per image, two 1-thread
    sessions 29 ms, one 2-thread session alone 34 ms (``benchmarks/serve_bench.py`` prints the
    engine's own ceiling beside the service's figures)."""

    def __init__(self, items: Sequence[Any], solo: Any = None) -> None:
        self._free = list(reversed(items))  # a stack: the most recently used (warm) object first
        self._solo = solo
        self._solo_busy = False
        self._busy = 0
        self._waiting = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self) -> Iterator[Any]:
        with self._cond:
            solo = self._solo is not None and self._busy == 0 and self._waiting == 0
            if solo:
                item, self._solo_busy = self._solo, True
            else:
                self._waiting += 1
                try:
                    while self._solo_busy or not self._free:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                item = self._free.pop()
            self._busy += 1
        try:
            yield item
        finally:
            with self._cond:
                self._busy -= 1
                if solo:
                    self._solo_busy = False
                else:
                    self._free.append(item)
                self._cond.notify_all()


class OnnxEngine(_ArrayEngine):
    """YOLOv8/11 (and end-to-end YOLO26) ONNX models on ONNX Runtime, FP32 or INT8 (QDQ) alike.

    ``streams`` sessions of the same file with ``threads`` intra-op threads each, so that concurrent
    batches run side by side instead of queueing for one session's thread pool, and with more than
    one stream a solo session on every core that a lone request gets (see :class:`_Pool`): a single
    request keeps the latency of all cores, a loaded server the throughput of parallel streams."""

    name = "onnx"

    def __init__(
        self,
        onnx_path: Path | str,
        class_keys: Sequence[str],
        imgsz: int = 640,
        providers: Sequence[str] | None = None,
        *,
        version: str | None = None,
        max_det: int = MAX_DET,
        device: str = "auto",
        max_batch: int = 32,
        streams: int = 1,
        threads: int = 0,
        name: str = "onnx",
    ) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise NotFound(f"ONNX model {path} does not exist")
        self.name = name
        providers = list(providers or _onnx_providers(device))
        on_gpu = providers[0] != "CPUExecutionProvider"
        self.streams = max(1, int(streams)) if not on_gpu else 1  # one GPU session batches instead
        threads = int(threads) if threads and threads > 0 else max(1, cpu_cores() // self.streams)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle ORT threads spin by default; on a busy CPU-only server that steals the cores the next
        # request needs (measured here: 255 ms -> 96 ms per 640 px image under load).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions = [ort.InferenceSession(str(path), sess_options=options, providers=providers)]
        sessions += [
            ort.InferenceSession(str(path), sess_options=options, providers=providers) for _ in range(self.streams - 1)
        ]
        solo = None
        if self.streams > 1:
            options.intra_op_num_threads = max(threads, cpu_cores())
            solo = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self._session = sessions[0]
        self._sessions = _Pool(sessions, solo)
        self.threads = threads
        meta = self._session.get_modelmeta().custom_metadata_map or {}
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._setup(
            path,
            class_keys,
            imgsz,
            version,
            max_det,
            max_batch,
            meta,
            inp.shape,
            self._session.get_outputs()[0].shape,
        )
        self.providers = self._session.get_providers()

    def _infer(self, tensor: np.ndarray) -> np.ndarray:
        with self._sessions.take() as session:
            return cast(np.ndarray, session.run(None, {self._input_name: tensor})[0])

    def close(self) -> None:
        self._session = None  # releases the ORT arenas once unreferenced
        self._sessions = _Pool([])


class OpenVinoEngine(_ArrayEngine):
    """The same ONNX export (FP32) or an NNCF-quantised INT8 IR on Intel's OpenVINO runtime (CPU).

    ``streams`` infer requests from one compilation in OpenVINO's throughput mode run in parallel under
    load; with more than one stream a lone request gets a solo one compiled in latency mode on every
    core instead (see :class:`_Pool`). FP32 is asked for explicitly: on CPUs with BF16 support the
    runtime would otherwise quietly infer in BF16, which moves boxes by pixels."""

    name = "openvino"

    def __init__(
        self,
        model_path: Path | str,
        class_keys: Sequence[str],
        imgsz: int = 640,
        *,
        version: str | None = None,
        max_det: int = MAX_DET,
        max_batch: int = 32,
        streams: int = 1,
        threads: int = 0,
        name: str = "openvino",
        meta: dict[str, str] | None = None,
    ) -> None:
        import openvino as ov

        path = Path(model_path)
        if not path.is_file():
            raise NotFound(f"OpenVINO model {path} does not exist")
        self.name = name
        self.streams = max(1, int(streams))
        per_stream = int(threads) if threads and threads > 0 else max(1, cpu_cores() // self.streams)
        core = ov.Core()
        model = core.read_model(str(path))
        f32 = ov.Type.f32

        # The streams: one compilation in throughput mode, ``threads`` per stream; with one stream,
        # latency mode. The solo request (a lone caller's, with several streams): latency mode on every core.
        def compiled(hint: str, streams: int, threads: int) -> Any:
            config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads}
            if hint == "THROUGHPUT":
                config["NUM_STREAMS"] = str(streams)
            config["INFERENCE_PRECISION_HINT"] = f32
            return core.compile_model(model, "CPU", config)

        if self.streams == 1:
            self._compiled = [compiled("LATENCY", 1, per_stream)]
            requests, solo = [self._compiled[0].create_infer_request()], None
        else:
            self._compiled = [
                compiled("THROUGHPUT", self.streams, per_stream * self.streams),
                compiled("LATENCY", 1, max(per_stream, cpu_cores())),
            ]
            requests = [self._compiled[0].create_infer_request() for _ in range(self.streams)]
            solo = self._compiled[1].create_infer_request()
        self._requests = _Pool(requests, solo)
        self.threads = per_stream
        self.providers = ["OpenVINO:CPU"]
        self.device = "cpu"
        inp = model.inputs[0].get_partial_shape()
        out = model.outputs[0].get_partial_shape()

        def dims(shape: Any) -> list[object]:
            return [d.get_length() if d.is_static else None for d in shape]

        meta = meta if meta is not None else model_metadata(path)
        self._setup(path, class_keys, imgsz, version, max_det, max_batch, meta, dims(inp), dims(out))

    def _infer(self, tensor: np.ndarray) -> np.ndarray:
        with self._requests.take() as request:
            request.infer({0: tensor}, share_inputs=True)
            return np.array(request.get_output_tensor(0).data)  # copied: the request's buffer is reused

    def close(self) -> None:
        self._requests = _Pool([])
        self._compiled = []


class UltralyticsEngine:
    """The ``.pt`` on PyTorch through Ultralytics; serialised because its predictor is not thread-safe."""

    name = "ultralytics"

    def __init__(
        self,
        pt_path: Path | str,
        class_keys: Sequence[str],
        imgsz: int = 640,
        device: str = "auto",
        *,
        version: str | None = None,
        max_det: int = MAX_DET,
        half: bool = False,
    ) -> None:
        path = Path(pt_path)
        if not path.is_file():
            raise NotFound(f"model weights {path} do not exist")
        prepare_ultralytics()
        from ultralytics import YOLO

        self.path = path
        self.class_keys = list(class_keys)
        self.imgsz = int(imgsz)
        self.version = version or sha256_file(path)[:12]
        self.max_det = max_det
        self.device = _resolve_torch_device(device)
        self.half = half and self.device.startswith("cuda")
        self._precision = _precision_args(self.half)
        self._lock = threading.Lock()
        self._model = YOLO(str(path), task="detect")
        names = self._model.names or {}
        if len(names) != len(self.class_keys):
            raise Invalid(f"model has {len(names)} classes but {len(self.class_keys)} class keys were given")

    def predict(self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.45) -> list[Detections]:
        if len(images) == 0:
            return []
        _check_images(images)
        keys = np.asarray(self.class_keys, dtype=object)
        with self._lock:
            # a list of Results (stream=False); Ultralytics' annotations also admit a Tensor
            results = cast(
                list[Any],
                self._model.predict(
                    list(images),
                    conf=conf,
                    iou=iou,
                    imgsz=self.imgsz,
                    device=self.device,
                    max_det=self.max_det,
                    verbose=False,
                    save=False,
                    stream=False,
                    **self._precision,
                ),
            )
        out = []
        for result in results:
            boxes = result.boxes
            xyxy = boxes.xyxy.cpu().numpy()
            classes = boxes.cls.cpu().numpy().astype(np.int64)
            out.append(Detections(xyxy, keys[classes], boxes.conf.cpu().numpy()))
        return out

    def close(self) -> None:
        with self._lock:
            self._model = None  # type: ignore[assignment]


_export_locks: dict[Path, threading.Lock] = {}
_export_locks_guard = threading.Lock()


@contextlib.contextmanager
def _export_lock(out_path: Path) -> Iterator[None]:
    """Serialise exports of one file across threads and processes (several workers may start at once)."""
    with _export_locks_guard:
        lock = _export_locks.setdefault(out_path, threading.Lock())
    with lock, open(out_path.with_name(out_path.name + ".lock"), "a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: threads are still serialised
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _meta_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".json")


def _cached(out_path: Path, source_sha256: str, imgsz: int) -> bool:
    try:
        meta = json.loads(_meta_path(out_path).read_text())
    except (OSError, ValueError):
        return False
    return out_path.is_file() and meta.get("source_sha256") == source_sha256 and meta.get("imgsz") == imgsz


def export_onnx(
    pt_path: Path | str,
    out_path: Path | str,
    imgsz: int = 640,
    *,
    opset: int | None = None,
    source_sha256: str | None = None,
) -> Path:
    """Export ``pt_path`` to ONNX (dynamic batch and size) at ``out_path``, or reuse a previous export.

    A JSON file next to the ONNX records the sha256 of the ``.pt`` it came from, so retrained weights
    saved under the same name are never served from a stale export. ``opset=None`` lets Ultralytics
    pick the newest opset both the installed torch and onnx support.
    """
    pt_path, out_path = Path(pt_path), Path(out_path)
    if not pt_path.is_file():
        raise NotFound(f"model weights {pt_path} do not exist")
    source_sha256 = source_sha256 or sha256_file(pt_path)
    if _cached(out_path, source_sha256, imgsz):
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _export_lock(out_path):
        if _cached(out_path, source_sha256, imgsz):  # another worker finished it while we waited
            return out_path
        prepare_ultralytics()
        from ultralytics import YOLO

        # Export in a private folder: Ultralytics writes next to the .pt, which may be read-only or shared.
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_path.parent))
        try:
            local_pt = work / "model.pt"
            shutil.copyfile(pt_path, local_pt)
            try:
                produced = YOLO(str(local_pt), task="detect").export(
                    format="onnx",
                    dynamic=True,
                    simplify=False,
                    imgsz=imgsz,
                    opset=opset,
                    nms=False,
                    device="cpu",
                    batch=1,
                    verbose=False,
                )
            except Exception as exc:
                raise HazardError(
                    f"ONNX export of {pt_path.name} failed: {exc}", code="export_failed", status=500
                ) from exc
            if not produced or not Path(produced).is_file():
                raise HazardError(f"ONNX export of {pt_path.name} produced no file", code="export_failed", status=500)
            os.replace(produced, out_path)
            meta = {
                "source": str(pt_path),
                "source_sha256": source_sha256,
                "imgsz": imgsz,
                "onnx_sha256": sha256_file(out_path),
            }
            tmp_meta = work / "meta.json"
            tmp_meta.write_text(json.dumps(meta, indent=2))
            os.replace(tmp_meta, _meta_path(out_path))  # written last: its presence means "complete"
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s to %s", pt_path, out_path)
    return out_path


def load_engine(
    kind: EngineKind | str,
    weights_pt: Path | str,
    class_keys: Sequence[str],
    imgsz: int,
    cache_dir: Path | str,
    *,
    device: str = "auto",
    version: str | None = None,
    streams: int = 1,
    threads: int = 0,
) -> Engine:
    """Build a back-end for a registry model (``settings.engine`` / ``settings.device``).

    For ``onnx`` and ``openvino`` the ONNX file is derived from the ``.pt`` on first use and cached in
    ``cache_dir`` under a name that includes the weights' hash; an ``.onnx`` given directly is used as
    is. The INT8 kinds take the quantised variant's file itself (``.onnx`` for ``onnx-int8``, the IR's
    ``.xml`` for ``openvino-int8``; see :mod:`hazardlens.models.quantize`).
    """
    weights = Path(weights_pt)
    if not weights.is_file():
        raise NotFound(f"model weights {weights} do not exist")
    kind = parse_engine(kind)
    if kind == "ultralytics":
        return UltralyticsEngine(weights, class_keys, imgsz, device, version=version)
    if kind == "auto":
        raise Invalid("engine 'auto' is resolved by the model manager, not load_engine")
    if kind in INT8_KINDS and weights.suffix.lower() == ".pt":
        raise Invalid(f"engine {kind!r} needs the quantised variant (hazardlens models quantize), not a .pt")
    if weights.suffix.lower() == ".pt":
        sha = sha256_file(weights)
        weights = Path(cache_dir) / "onnx" / f"{weights.stem}-{sha[:16]}-{imgsz}.onnx"
        export_onnx(weights_pt, weights, imgsz, source_sha256=sha)
        version = version or sha[:12]
    if kind in ("onnx", "onnx-int8"):
        return OnnxEngine(
            weights, class_keys, imgsz, version=version, device=device, streams=streams, threads=threads, name=kind
        )
    if _wants_cuda(device):
        raise Invalid(f"engine {kind!r} runs on the CPU; use 'onnx' with device {device!r}")
    return OpenVinoEngine(weights, class_keys, imgsz, version=version, streams=streams, threads=threads, name=kind)


def _wants_cuda(device: str) -> bool:
    return (device or "").lower().startswith("cuda")
