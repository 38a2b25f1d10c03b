"""Issue 19: the OpenVINO and INT8 engines behind the one detector interface, the quantisation registry
step (calibrate, evaluate against FP32, accept or refuse, record), ``auto``, parallel streams, and
the queue cap answering 503 with Retry-After. All on the tiny random-weight YOLO11 of
tests/fixtures/engines.py; the agreement checks use a real photo from ../shared/data when present."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from hazardlens.context import Context
from hazardlens.detections import Detections, box_iou
from hazardlens.errors import HazardError, Invalid, NotFound
from hazardlens.models.batching import MicroBatcher, Overloaded
from hazardlens.models.engines import OnnxEngine, OpenVinoEngine, load_engine, parse_engine, plan_streams
from hazardlens.models.quantize import calibration_tensors, judge, quantize_onnx
from tests.fixtures.core import shared_data
from tests.fixtures.engines import TINY_CLASS_KEYS, TINY_IMGSZ, textured_image

CONF = 0.3


def _real_photo() -> np.ndarray:
    """A real inspection photo (sfchd PPE) when the shared data is present, else textured blobs."""
    root = shared_data()
    folder = root / "sfchd-ppe" / "images" if root else None
    files = sorted(folder.glob("*.jpg"))[:1] if folder and folder.is_dir() else []
    image = cv2.imread(str(files[0])) if files else None
    return image if image is not None else textured_image(320, 240, seed=5)


def _calibration() -> list[np.ndarray]:
    """Real photos when present (the agreement photo excluded), else textured frames."""
    root = shared_data()
    folder = root / "sfchd-ppe" / "images" if root else None
    files = sorted(folder.glob("*.jpg"))[1:17] if folder and folder.is_dir() else []
    frames: list[bytes | Path] = list(files) or [
        cv2.imencode(".jpg", textured_image(96, 72, seed=s))[1].tobytes() for s in range(10)
    ]
    return calibration_tensors(frames, TINY_IMGSZ)


@pytest.fixture(scope="module")
def int8_variants(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both INT8 variants of the tiny model, quantised once for the module."""
    out = tmp_path_factory.mktemp("int8")
    calibration = _calibration()
    return {kind: quantize_onnx(tiny_onnx, kind, calibration, out / kind)[0] for kind in ("onnx-int8", "openvino-int8")}


def _matched(reference: Detections, other: Detections, iou: float = 0.5) -> float:
    """Share of ``reference``'s boxes that ``other`` found too (same class, IoU >= ``iou``)."""
    if len(reference) == 0:
        return 1.0
    if len(other) == 0:
        return 0.0
    overlaps = box_iou(reference.xyxy, other.xyxy)
    same = np.asarray(reference.class_keys)[:, None] == np.asarray(other.class_keys)[None, :]
    return float(((overlaps >= iou) & same).any(axis=1).mean())


# --- engines -------------------------------------------------------------------------------------


def test_openvino_fp32_matches_onnx_runtime(onnx_engine: OnnxEngine, tiny_onnx: Path) -> None:
    photo = _real_photo()
    engine = load_engine("openvino", tiny_onnx, TINY_CLASS_KEYS, TINY_IMGSZ, tiny_onnx.parent, streams=2)
    try:
        assert isinstance(engine, OpenVinoEngine) and engine.name == "openvino" and engine.streams == 2
        np.testing.assert_allclose(engine.raw([photo]), onnx_engine.raw([photo]), atol=0.05, rtol=1e-3)  # px, score
        ours, ref = engine.predict([photo], CONF)[0], onnx_engine.predict([photo], CONF)[0]
        assert len(ref) > 0
        assert len(ours) == len(ref) and list(ours.class_keys) == list(ref.class_keys)
        np.testing.assert_allclose(ours.xyxy, ref.xyxy, atol=0.5)
        # parallel streams: concurrent calls answer what a lone call answers
        results: list[Detections] = []
        threads = [threading.Thread(target=lambda: results.append(engine.predict([photo], CONF)[0])) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 4 and all(np.allclose(r.xyxy, ours.xyxy) for r in results)
    finally:
        engine.close()


@pytest.mark.slow  # two NNCF quantisations of the tiny model (calibration + bias correction)
@pytest.mark.parametrize("kind", ["onnx-int8", "openvino-int8"])
def test_int8_engines_agree_with_fp32(kind: str, int8_variants: dict[str, Path], onnx_engine: OnnxEngine) -> None:
    path = int8_variants[kind]
    engine = load_engine(kind, path, TINY_CLASS_KEYS, TINY_IMGSZ, path.parent)
    try:
        assert engine.name == kind
        photos = [_real_photo(), textured_image(96, 72, seed=42)]
        raw, ref_raw = engine.raw(photos), onnx_engine.raw(photos)
        # A random-weight network is the worst case for INT8 (no trained, well-behaved ranges), so the
        # tolerance is loose: half the raw box coordinates within a quarter of the 64 px input (measured
        # ~8 px), class scores within a fifth on average, about as many detections, mostly the same.
        assert np.median(np.abs(raw[:, :4] - ref_raw[:, :4])) < 16.0
        assert np.abs(raw[:, 4:] - ref_raw[:, 4:]).mean() < 0.2
        for ours, ref in zip(engine.predict(photos, CONF), onnx_engine.predict(photos, CONF), strict=True):
            assert len(ref) > 0
            assert 0.5 * len(ref) <= len(ours) <= 1.5 * len(ref)
            assert _matched(ref, ours, iou=0.3) >= 0.3
    finally:
        engine.close()


def test_engine_names_and_stream_plan(tiny_yolo_pt: Path, tmp_path: Path) -> None:
    assert parse_engine(" OpenVINO-INT8 ") == "openvino-int8"
    with pytest.raises(Invalid) as info:
        parse_engine("tensorrt")
    assert info.value.code == "unknown_engine"
    with pytest.raises(Invalid):  # an INT8 engine needs the quantised variant, never the .pt
        load_engine("onnx-int8", tiny_yolo_pt, TINY_CLASS_KEYS, TINY_IMGSZ, tmp_path)
    streams, threads = plan_streams()
    assert streams >= 1 and threads >= 1
    assert plan_streams(3, 1) == (3, 1)


def test_judge_refuses_a_negative_allowance() -> None:
    assert judge(0.5, 0.495, 0.01) == (0.005, True)
    assert judge(0.5, 0.48, 0.01) == (0.02, False)
    assert judge(0.5, 0.5, -0.001) == (0.0, False)  # nothing passes: FP32 forced


# --- the registry step ---------------------------------------------------------------------------


@pytest.fixture
def quantize_home(
    home: Path, tiny_yolo_pt: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Context, str]]:
    """A home with the tiny dataset version and the tiny model (its classes) registered as version 1;
    the dataset's organisation is the system organisation, so the CLI's admin may run the registry."""
    import shutil

    import torch

    from hazardlens.auth import SYSTEM
    from hazardlens.models.engines import sha256_file
    from hazardlens.models.registry import register_model
    from hazardlens.settings import get_settings
    from tests.fixtures.dataset_versions import ORG
    from tests.fixtures.training import TINY_CLASSES, make_tiny_dataset

    monkeypatch.setenv("HAZARDLENS_SYSTEM_ORG", ORG)
    get_settings.cache_clear()
    ctx = Context(get_settings())
    ctx.init()
    tiny = make_tiny_dataset(ctx, n=20)  # 10 train images: enough to calibrate
    ckpt = torch.load(tiny_yolo_pt, map_location="cpu", weights_only=False)
    ckpt["model"].names = dict(enumerate(TINY_CLASSES))
    weights = home / "tiny-dataset-classes.pt"
    torch.save(ckpt, weights)
    with ctx.db.session() as s:
        register_model(
            ctx, s, SYSTEM, weights, classes=list(TINY_CLASSES), imgsz=TINY_IMGSZ, card={}, stage="production"
        )
    # the FP32 export is the tiny fixture's own graph (same weights, names aside): skip a second export
    sha = sha256_file(weights)
    cached = ctx.settings.cache_dir / "onnx" / f"{sha[:16]}-{TINY_IMGSZ}.onnx"
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_onnx, cached)
    meta = {"source_sha256": sha, "imgsz": TINY_IMGSZ}
    cached.with_name(cached.name + ".json").write_text(json.dumps(meta))
    yield ctx, tiny.ref
    ctx.close()


def _variants(ctx: Context) -> dict[str, Any]:
    from hazardlens.models.registry import get_model

    with ctx.db.session() as s:
        return dict((get_model(s, "hazardlens", "1").card or {}).get("variants") or {})


def _load(ctx: Context, engine: str) -> Any:
    from hazardlens.models.manager import default_loader
    from hazardlens.models.registry import get_model

    with ctx.db.session() as s:
        mv = get_model(s, "hazardlens", "1")
    saved = ctx.settings
    ctx.settings = saved.with_(engine=engine)
    try:
        return default_loader(ctx, mv)
    finally:
        ctx.settings = saved


@pytest.mark.slow  # two quantisations, four Ultralytics evaluations, three engines timed: ~1 min idle
def test_quantize_refuses_then_accepts_and_serves(quantize_home: tuple[Context, str]) -> None:
    from tests.fixtures.cli import run
    from tests.fixtures.dataset_versions import ORG

    ctx, dataset = quantize_home
    args = ["models", "quantize", "hazardlens", "1", "--engine", "onnx-int8", "--dataset", dataset]
    args += ["--split", "val", "--calibrate-on", "dataset", "--org", ORG]
    code, out = run(*args, "--max-loss", "-1")  # nothing can lose less than nothing
    assert code == 2, out
    assert "quantization_rejected" in out
    refused = _variants(ctx)["onnx-int8"]
    assert refused["accepted"] is False and refused["files"] == {}
    assert refused["allowed_loss"] == -1 and refused["loss"] > -1
    assert refused["calibration"]["images"] >= 8 and refused["dataset"] == dataset
    with pytest.raises(NotFound) as info:  # a refused variant is never served
        _load(ctx, "onnx-int8")
    assert info.value.code == "variant_not_found"

    code, out = run(*args, "--max-loss", "1")
    assert code == 0, out
    accepted = _variants(ctx)["onnx-int8"]
    assert accepted["accepted"] is True and accepted["main"] in accepted["files"]
    engine = _load(ctx, "onnx-int8")
    try:
        assert engine.name == "onnx-int8"
        assert len(engine.predict([textured_image(96, 72, seed=1)], 0.01)) == 1
    finally:
        engine.close()

    chosen = _load(ctx, "auto")  # times onnx, openvino and the accepted variant; caches the winner
    try:
        assert chosen.name in ("onnx", "openvino", "onnx-int8")
        cache = json.loads((ctx.settings.cache_dir / "engine-choice.json").read_text())
        (entry,) = cache.values()
        assert entry["engine"] == chosen.name and set(entry["ms"]) == {"onnx", "openvino", "onnx-int8"}
    finally:
        chosen.close()


# --- concurrency and the queue cap ---------------------------------------------------------------


class _Slow:
    """A stand-in engine that takes a while and says how many calls overlapped."""

    def __init__(self, delay: float, streams: int = 1) -> None:
        self.delay, self.streams = delay, streams
        self.running = self.peak = 0
        self.lock = threading.Lock()

    def predict(self, images: list[np.ndarray], conf: float = 0.25, iou: float = 0.45) -> list[Detections]:
        import time

        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        return [Detections.empty() for _ in images]


def _hammer(call: Callable[[], Any], n: int) -> list[Any]:
    out: list[Any] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            result: Any = call()
        except HazardError as exc:
            result = exc
        with lock:
            out.append(result)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)  # generous: a busy CI machine is slow, and the client must outlive its callers
    return out


def test_batcher_runs_streams_in_parallel_and_caps_its_queue() -> None:
    engine = _Slow(1.0, streams=2)
    with MicroBatcher(engine, max_batch=1, max_wait_ms=0, max_queue=4) as batcher:  # type: ignore[arg-type]
        assert batcher.workers == 2
        results = _hammer(lambda: batcher.submit(np.zeros((8, 8, 3), np.uint8)), 8)
        assert engine.peak == 2  # two streams busy at once, never more
        refused = [r for r in results if isinstance(r, Overloaded)]
        # 8 at once against a cap of 4 images in flight: the first 4 get in, the rest are refused
        assert len(refused) == 4 and batcher.refused == 4
        assert all(r.status == 503 and int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert all(isinstance(r, Detections) for r in results if not isinstance(r, Overloaded))


def test_queue_cap_answers_503_with_retry_after(
    serving_app: Callable[..., Any], ctx: Context, model_variants: list[Path], tracked: Any, make_key: Any
) -> None:
    from fastapi.testclient import TestClient

    from tests.fixtures.serving import photo, register

    loader, _, knobs = tracked
    knobs["delay"]["1"] = 1.0
    register(ctx, model_variants[0], "1")
    ctx.settings = ctx.settings.with_(max_queue=1)
    key = make_key(role="inspector")
    with TestClient(serving_app(loader=loader)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        data = photo(seed=3)
        assert client.post("/v1/detect", files={"file": ("a.jpg", data)}, headers=headers).status_code == 200
        answers = _hammer(lambda: client.post("/v1/detect", files={"file": ("a.jpg", data)}, headers=headers), 4)
    statuses = sorted(r.status_code for r in answers)
    assert 200 in statuses and 503 in statuses, statuses
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["error"]["code"] == "overloaded"
    assert int(busy.headers["Retry-After"]) >= 1
