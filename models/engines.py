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

EngineKind = Literal["onnx", "ultralytics"]

#: Ultralytics' defaults, kept so both back-ends cut candidates the same way.
MAX_DET = 300
MAX_NMS = 30000


@runtime_checkable
class Engine(Protocol):
    """What serving, evaluation and label suggestions need from a detector."""

    name: str  # back-end: "onnx" | "ultralytics"
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


class OnnxEngine:
    """YOLOv8/11 (and end-to-end YOLO26) ONNX models on ONNX Runtime."""

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
    ) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise NotFound(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        # Idle ORT threads spin by default; on a busy CPU-only server that steals the cores the next
        # request needs (measured here: 255 ms -> 96 ms per 640 px image under load).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=list(providers or _onnx_providers(device))
        )
        self.path = path
        self.class_keys = list(class_keys)
        self.version = version or sha256_file(path)[:12]
        self.max_det = max_det
        meta = self._session.get_modelmeta().custom_metadata_map or {}
        self._end2end = meta.get("end2end", "False").lower() == "true"

        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        batch, _, height, width = inp.shape
        # A static-shape export dictates the input size and batch; a dynamic one takes ours.
        self.imgsz = int(height) if isinstance(height, int) and height == width else int(imgsz)
        self._rect = not isinstance(height, int) and not isinstance(width, int)
        self._static_batch = isinstance(batch, int) and batch > 0
        self._batch = batch if self._static_batch else max_batch

        model_classes = _onnx_class_count(meta, self._session.get_outputs()[0].shape, self._end2end)
        if model_classes is not None and model_classes != len(self.class_keys):
            raise Invalid(f"model has {model_classes} classes but {len(self.class_keys)} class keys were given")
        self.providers = self._session.get_providers()

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
        batch = np.stack([b[0] for b in boxed])[..., ::-1].transpose(0, 3, 1, 2)  # BGR HWC -> RGB CHW
        tensor = np.ascontiguousarray(batch, dtype=np.float32) / 255.0
        return tensor, [(b[1], b[2]) for b in boxed]

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(tensor), self._batch):
            part = tensor[start : start + self._batch]
            short = self._batch - len(part) if self._static_batch else 0
            if short:  # static batch export: pad with copies and drop their outputs
                part = np.concatenate([part, np.repeat(part[-1:], short, axis=0)])
            out = self._session.run(None, {self._input_name: part})[0]
            chunks.append(out[: len(out) - short] if short else out)
        return np.concatenate(chunks)

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
        pred = pred.T  # (N, 4 + nc)
        class_scores = pred[:, 4:]
        classes = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(pred)), classes]
        mask = scores > conf
        pred, scores, classes = pred[mask], scores[mask], classes[mask]
        if len(scores) > MAX_NMS:
            top = np.argsort(-scores, kind="stable")[:MAX_NMS]
            pred, scores, classes = pred[top], scores[top], classes[top]
        cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
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

    def close(self) -> None:
        self._session = None  # releases the ORT arena once unreferenced


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
) -> Engine:
    """Build the configured back-end for a registry model (``settings.engine`` / ``settings.device``).

    For ``onnx`` the ONNX file is derived from the ``.pt`` on first use and cached in ``cache_dir``
    under a name that includes the weights' hash; an ``.onnx`` given directly is used as is.
    """
    weights = Path(weights_pt)
    if not weights.is_file():
        raise NotFound(f"model weights {weights} do not exist")
    kind = (kind or "").lower()
    if kind == "ultralytics":
        return UltralyticsEngine(weights, class_keys, imgsz, device, version=version)
    if kind != "onnx":
        raise Invalid(f"unknown engine {kind!r}; use 'onnx' or 'ultralytics'")
    if weights.suffix.lower() == ".onnx":
        return OnnxEngine(weights, class_keys, imgsz, version=version, device=device)
    sha = sha256_file(weights)
    onnx_path = Path(cache_dir) / "onnx" / f"{weights.stem}-{sha[:16]}-{imgsz}.onnx"
    export_onnx(weights, onnx_path, imgsz, source_sha256=sha)
    return OnnxEngine(onnx_path, class_keys, imgsz, version=version or sha[:12], device=device)
