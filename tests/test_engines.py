"""Inference engines, preprocessing, micro-batching and offline Ultralytics, on a tiny random YOLO11."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hazardlens.detections import Detections, box_iou
from hazardlens.errors import HazardError, Invalid, TooLarge, UnsupportedMedia
from hazardlens.models.batching import MicroBatcher
from hazardlens.models.engines import Engine, OnnxEngine, UltralyticsEngine, export_onnx, load_engine
from hazardlens.models.preprocess import boxes_to_original, decode_image, letterbox, scale_detections
from tests.fixtures.engines import TINY_CLASS_KEYS, TINY_IMGSZ, textured_image

# --- preprocessing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "size", "auto"),
    [
        ((50, 100), 64, False),
        ((90, 37), 64, False),
        ((50, 100), 64, True),
        ((64, 64), 64, False),
        ((33, 47), (64, 96), False),
    ],
)
def test_letterbox_matches_ultralytics(shape: tuple[int, int], size: int | tuple[int, int], auto: bool) -> None:
    from ultralytics.data.augment import LetterBox

    image = textured_image(shape[1], shape[0], seed=3)
    ours, _, _ = letterbox(image, size, auto=auto)
    theirs = LetterBox(size, auto=auto, stride=32)(image=image)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


def test_letterbox_box_round_trip() -> None:
    image = np.zeros((50, 100, 3), np.uint8)  # h=50, w=100
    image[10:20, 10:30] = 255  # an object at x 10..30, y 10..20
    padded, ratio, pad = letterbox(image, 64)
    assert padded.shape == (64, 64, 3)
    assert ratio == pytest.approx(0.64)
    assert pad == (0, 16)
    assert (padded[:16] == 114).all() and (padded[-16:] == 114).all()
    ys, xs = np.nonzero(padded[..., 0] > 200)  # where the object landed in model input
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = boxes_to_original(found, ratio, pad, (100, 50))
    assert np.allclose(back, [[10, 10, 30, 20]], atol=1 / ratio)
    exact = np.array([[10 * 0.64, 10 * 0.64 + 16, 30 * 0.64, 20 * 0.64 + 16]], np.float32)
    assert np.allclose(boxes_to_original(exact, ratio, pad, (100, 50)), [[10, 10, 30, 20]], atol=1e-4)
    outside = np.array([[-5, 0, 70, 70]], np.float32)
    assert np.allclose(boxes_to_original(outside, ratio, pad, (100, 50)), [[0, 0, 100, 50]])


def test_scale_detections_to_original_pixels() -> None:
    det = Detections([[10, 20, 30, 40]], ["a"], [0.9])
    scaled = scale_detections(det, (50, 100), (200, 400))
    assert np.allclose(scaled.xyxy, [[40, 80, 120, 160]])
    assert list(scaled.class_keys) == ["a"] and scaled.confidence is not None


def _jpeg(width: int, height: int, orientation: int | None) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 4, height // 4))  # red marker at the stored top-left
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_decode_applies_exif_orientation_and_reports_original_size() -> None:
    data = _jpeg(400, 200, orientation=6)  # stored landscape, shown rotated 90 degrees clockwise
    image, size = decode_image(data, max_side=None)
    assert size == (200, 400)
    assert image.shape == (400, 200, 3)
    red = image[..., 2] > 200
    assert red[:50, -50:].all() and not red[:50, :50].any()  # top-left marker moved to the top-right

    small, size = decode_image(data, max_side=50)  # 400 px long side: libjpeg decodes at 1/8
    assert size == (200, 400)
    assert small.shape == (50, 25, 3)
    assert max(small.shape[:2]) >= 50

    image, size = decode_image(_jpeg(300, 120, orientation=None), max_side=100)  # only 1/2 keeps >= 100
    assert size == (300, 120) and image.shape == (60, 150, 3)


def test_decode_rejects_garbage_and_bombs() -> None:
    with pytest.raises(UnsupportedMedia):
        decode_image(b"not an image", None)
    with pytest.raises(UnsupportedMedia):
        decode_image(b"", None)
    with pytest.raises(TooLarge):
        decode_image(_jpeg(400, 200, None), None, max_pixels=1000)


# --- engines -------------------------------------------------------------------------------------


def _inside(det: Detections, width: int, height: int) -> bool:
    x = det.xyxy
    return bool(
        (x[:, [0, 2]] >= 0).all()
        and (x[:, [0, 2]] <= width).all()
        and (x[:, [1, 3]] >= 0).all()
        and (x[:, [1, 3]] <= height).all()
        and (x[:, 2] >= x[:, 0]).all()
        and (x[:, 3] >= x[:, 1]).all()
    )


@pytest.mark.parametrize("engine_fixture", ["onnx_engine", "ultralytics_engine"])
def test_engine_returns_detections_inside_each_image(engine_fixture: str, request: pytest.FixtureRequest) -> None:
    engine = request.getfixturevalue(engine_fixture)
    assert isinstance(engine, Engine)
    images = [textured_image(80, 48, seed=1), textured_image(40, 100, seed=2), textured_image(64, 64, seed=0)]
    results = engine.predict(images, conf=0.3, iou=0.5)
    assert len(results) == 3
    for image, det in zip(images, results, strict=True):
        assert isinstance(det, Detections) and len(det) > 0
        assert _inside(det, image.shape[1], image.shape[0])
        assert set(det.class_keys) <= set(TINY_CLASS_KEYS)
        assert det.confidence is not None and (det.confidence > 0.3).all()
        assert (np.diff(det.confidence) <= 1e-6).all()  # best first
    assert engine.predict([], 0.3, 0.5) == []
    with pytest.raises(Invalid):
        engine.predict([np.zeros((10, 10), np.uint8)], 0.3, 0.5)


def test_onnx_raw_output_matches_pytorch(onnx_engine: OnnxEngine, tiny_yolo_pt: Path) -> None:
    import torch
    from ultralytics import YOLO

    image = textured_image(TINY_IMGSZ, TINY_IMGSZ, seed=5)
    ours = onnx_engine.raw([image])
    model = YOLO(str(tiny_yolo_pt)).model.float().eval()
    x = torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))).float()[None] / 255
    with torch.no_grad():
        out = model(x)
    reference = (out[0] if isinstance(out, (list, tuple)) else out).numpy()
    assert ours.shape == reference.shape == (1, 4 + len(TINY_CLASS_KEYS), 84)
    assert np.allclose(ours[:, 4:], reference[:, 4:], atol=1e-3)  # class scores
    # box pixels (up to ~420 here): float32 sums over the network differ by ~1e-4 relative between runtimes
    assert np.allclose(ours[:, :4], reference[:, :4], rtol=1e-3, atol=0.05)


def test_onnx_and_ultralytics_agree(onnx_engine: OnnxEngine, ultralytics_engine: UltralyticsEngine) -> None:
    image = textured_image(TINY_IMGSZ, TINY_IMGSZ, seed=7)  # square: both engines see the same tensor
    a = onnx_engine.predict([image], conf=0.5, iou=0.5)[0]
    b = ultralytics_engine.predict([image], conf=0.5, iou=0.5)[0]
    assert len(a) > 0 and abs(len(a) - len(b)) <= 1
    assert a.confidence is not None and b.confidence is not None
    for i in range(min(5, len(a))):
        same_class = b.class_keys == a.class_keys[i]
        ious = box_iou(a.xyxy[i : i + 1], b.xyxy)[0] * same_class
        j = int(ious.argmax())
        assert ious[j] > 0.98
        assert abs(float(a.confidence[i]) - float(b.confidence[j])) < 2e-3


def test_batched_equals_single(onnx_engine: OnnxEngine) -> None:
    images = [textured_image(64, 64, seed=s) for s in range(3)]
    batched = onnx_engine.predict(images, 0.4, 0.5)
    for image, det in zip(images, batched, strict=True):
        single = onnx_engine.predict([image], 0.4, 0.5)[0]
        assert np.allclose(single.xyxy, det.xyxy, atol=1e-3)
        assert list(single.class_keys) == list(det.class_keys)


def test_class_key_count_must_match_model(tiny_onnx: Path, tiny_yolo_pt: Path) -> None:
    with pytest.raises(Invalid):
        OnnxEngine(tiny_onnx, ["only_one"], TINY_IMGSZ)
    with pytest.raises(Invalid):
        UltralyticsEngine(tiny_yolo_pt, ["a", "b", "c"], TINY_IMGSZ, device="cpu")


def test_export_is_cached_by_source_hash(tiny_yolo_pt: Path, tmp_path: Path) -> None:
    pt = tmp_path / "model.pt"
    shutil.copyfile(tiny_yolo_pt, pt)
    out = tmp_path / "model.onnx"
    export_onnx(pt, out, TINY_IMGSZ)
    first = out.stat().st_mtime_ns
    time.sleep(0.01)
    assert export_onnx(pt, out, TINY_IMGSZ) == out and out.stat().st_mtime_ns == first  # reused
    with open(pt, "ab") as fh:  # "retrained" weights under the same name
        fh.write(b"\0")
    export_onnx(pt, out, TINY_IMGSZ)
    assert out.stat().st_mtime_ns != first


def test_load_engine_derives_onnx_once(tiny_yolo_pt: Path, tmp_path: Path) -> None:
    engine = load_engine("onnx", tiny_yolo_pt, TINY_CLASS_KEYS, TINY_IMGSZ, tmp_path)
    assert isinstance(engine, OnnxEngine) and engine.name == "onnx"
    files = sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 1
    again = load_engine("onnx", tiny_yolo_pt, TINY_CLASS_KEYS, TINY_IMGSZ, tmp_path)
    assert again.version == engine.version
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == files
    with pytest.raises(Invalid):
        load_engine("tensorrt", tiny_yolo_pt, TINY_CLASS_KEYS, TINY_IMGSZ, tmp_path)


# --- micro-batching ------------------------------------------------------------------------------


class _RecordingEngine:
    """Answers one box whose x1 is the image's first pixel value, so each caller can check it got its own."""

    name, version, class_keys, imgsz = "fake", "0", ["a"], 64

    def __init__(self, delay: float = 0.05) -> None:
        self.calls: list[int] = []
        self.delay = delay

    def predict(self, images: list[np.ndarray], conf: float = 0.25, iou: float = 0.45) -> list[Detections]:
        self.calls.append(len(images))
        time.sleep(self.delay)
        out = []
        for image in images:
            tag = int(image[0, 0, 0])
            if tag == 13:
                raise ValueError("unlucky image")
            out.append(Detections([[tag, 0, tag + 1, 1]], ["a"], [conf]))
        return out

    def close(self) -> None:
        pass


def _concurrently(batcher: MicroBatcher, tags: list[int], conf: float = 0.25) -> dict[int, object]:
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(tags))

    def call(tag: int) -> None:
        barrier.wait()
        try:
            results[tag] = batcher.submit(np.full((4, 4, 3), tag, np.uint8), conf, 0.5, timeout=10)
        except Exception as exc:
            results[tag] = exc

    threads = [threading.Thread(target=call, args=(t,)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_microbatcher_batches_and_routes_results() -> None:
    engine = _RecordingEngine()
    with MicroBatcher(engine, max_batch=8, max_wait_ms=50) as batcher:
        results = _concurrently(batcher, list(range(1, 9)))
        assert batcher.queue_depth == 0
    assert sum(engine.calls) == 8
    assert len(engine.calls) < 8
    for tag, det in results.items():
        assert isinstance(det, Detections) and det.xyxy[0, 0] == tag


def test_microbatcher_errors_reach_only_their_caller() -> None:
    engine = _RecordingEngine(delay=0.0)
    with MicroBatcher(engine, max_batch=8, max_wait_ms=50) as batcher:
        results = _concurrently(batcher, [11, 12, 13, 14])
    assert isinstance(results[13], ValueError)
    for tag in (11, 12, 14):
        assert isinstance(results[tag], Detections) and results[tag].xyxy[0, 0] == tag


def test_microbatcher_keeps_thresholds_apart_and_closes() -> None:
    engine = _RecordingEngine(delay=0.0)
    batcher = MicroBatcher(engine, max_batch=8, max_wait_ms=50)
    low = batcher.submit(np.full((4, 4, 3), 1, np.uint8), conf=0.1)
    high = batcher.submit(np.full((4, 4, 3), 2, np.uint8), conf=0.9)
    assert low.confidence[0] == pytest.approx(0.1) and high.confidence[0] == pytest.approx(0.9)
    batcher.close()
    batcher.close()  # idempotent
    with pytest.raises(HazardError) as info:
        batcher.submit(np.zeros((4, 4, 3), np.uint8))
    assert info.value.status == 503


class _Counting:
    """Passes through to a real engine, counting how many ``predict`` calls reach it."""

    def __init__(self, engine: OnnxEngine) -> None:
        self.engine, self.calls = engine, []  # type: list[int]

    def predict(self, images: list[np.ndarray], conf: float = 0.25, iou: float = 0.45) -> list[Detections]:
        self.calls.append(len(images))
        return self.engine.predict(images, conf, iou)


def test_microbatcher_with_real_engine(onnx_engine: OnnxEngine) -> None:
    images = [textured_image(64, 64, seed=s) for s in range(8)]
    expected = onnx_engine.predict(images, 0.4, 0.5)
    counting = _Counting(onnx_engine)
    results: list[Detections | None] = [None] * 8
    barrier = threading.Barrier(8)
    with MicroBatcher(counting, max_batch=8, max_wait_ms=100) as batcher:  # type: ignore[arg-type]

        def call(i: int) -> None:
            barrier.wait()
            results[i] = batcher.submit(images[i], 0.4, 0.5, timeout=30)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(counting.calls) < 8 and sum(counting.calls) == 8
    for got, want in zip(results, expected, strict=True):
        assert got is not None and np.allclose(got.xyxy, want.xyxy, atol=1e-3)
        assert list(got.class_keys) == list(want.class_keys)


# --- offline -------------------------------------------------------------------------------------


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail loudly on any connection or name lookup that leaves this machine."""
    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host: object) -> bool:
        return str(host) in {"localhost", "::1", ""} or str(host).startswith("127.")

    def connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and not local(host):
            attempts.append(address)
            raise OSError(f"network access blocked in tests: {address}")
        return real_connect(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host is not None and not local(host):
            attempts.append(host)
            raise socket.gaierror(f"DNS blocked in tests: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_export_and_predict_fully_offline(
    no_network: list[object], tiny_yolo_pt: Path, tmp_path: Path, ultralytics_ready: Path
) -> None:
    pt = tmp_path / "fresh.pt"
    shutil.copyfile(tiny_yolo_pt, pt)  # a new path and cache dir force a real export
    image = textured_image(80, 48, seed=9)
    for kind in ("onnx", "ultralytics"):
        engine = load_engine(kind, pt, TINY_CLASS_KEYS, TINY_IMGSZ, tmp_path / "cache", device="cpu")
        det = engine.predict([image], 0.3, 0.5)[0]
        assert len(det) > 0 and _inside(det, 80, 48)
        engine.close()

    from ultralytics.utils.checks import check_font
    from ultralytics.utils.plotting import Annotator

    font = Path(check_font("Arial.Unicode.ttf"))  # Ultralytics' choice for non-ASCII labels
    assert font.parent == ultralytics_ready
    annotator = Annotator(image.copy(), line_width=1, example="消防通道堵塞")
    annotator.box_label([5, 5, 40, 30], "消防通道堵塞 0.91")
    assert annotator.result().shape == image.shape
    assert no_network == []


def test_prepare_ultralytics_switches_off_network_and_installs_fonts(ultralytics_ready: Path) -> None:
    import ultralytics.utils as uutils
    import ultralytics.utils.checks as uchecks

    from hazardlens.models.ultralytics_env import _has_glyphs, cjk_font_path, prepare_ultralytics

    prepare_ultralytics(Path("/nonexistent/elsewhere"))  # idempotent: the first home stays
    assert ultralytics_ready == uutils.USER_CONFIG_DIR
    assert uutils.SETTINGS["sync"] is False
    assert uchecks.AUTOINSTALL is False and uchecks.ONLINE is False
    assert uchecks.check_requirements("surely-not-installed-package-xyz") is False  # no pip install
    assert (ultralytics_ready / "Arial.ttf").stat().st_size > 100_000
    assert _has_glyphs(ultralytics_ready / "Arial.ttf", "Arial")
    try:
        cjk = cjk_font_path()
    except FileNotFoundError:
        pytest.skip("no CJK font package installed")
    assert _has_glyphs(cjk) and _has_glyphs(ultralytics_ready / "Arial.Unicode.ttf")
    from PIL import ImageFont

    font = ImageFont.truetype(str(cjk), 24)
    assert font.getbbox("隐患")[2] > 30  # two real glyphs, not empty boxes


def test_microbatcher_stream_workers_never_hold_a_batch_past_its_wait() -> None:
    """Two stream workers, callers announcing themselves (``expect``) and submitting a moment later:
    the gathering worker waits at most ``max_wait_ms`` for them. With CPython's SimpleQueue as the
    queue, ``get(timeout)`` in the gathering worker could block until the next put when the other
    worker took the item it woke for, holding its batch while every caller waited on it (the cluster
    test's stalled shard); each round here would then wait out the callers' timeout."""
    engine = _RecordingEngine(delay=0.0)
    rng = np.random.default_rng(0)
    stalled: list[BaseException] = []
    with MicroBatcher(engine, max_batch=8, max_wait_ms=5, workers=2) as batcher:  # type: ignore[arg-type]

        def caller(pause: float) -> None:
            try:
                with batcher.expect():
                    time.sleep(pause)
                batcher.submit(np.full((4, 4, 3), 1, np.uint8), timeout=2)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                stalled.append(exc)

        for _ in range(150):
            threads = [threading.Thread(target=caller, args=(float(p),)) for p in rng.uniform(0, 0.003, 4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            if stalled:
                break
    assert not stalled, stalled
