"""Where a POST /v1/detect request's time goes, beyond JPEG decode and the model's forward pass.

    .venv/bin/python benchmarks/profile_detect.py [--count 30] [--engine onnx] [--pyinstrument out.txt]

The shipped baseline is served by the real app (``create_app``) through Starlette's TestClient, one
request at a time, with real sfchd photos. Each stage of the request path is timed by wrapping the
function that does it (multipart parsing, reading the upload, decode, letterbox/tensor, inference,
box decoding + NMS, the JSON body with rule findings); what is left of the client's wall time is
routing, authentication, middleware, the micro-batcher hand-off and serialisation. With
``--pyinstrument`` the same path minus HTTP (``ModelManager.detect`` + the route's body) also runs
under pyinstrument in this thread and its call tree is written to that file.

Runs against whatever ``hazardlens`` is importable, so an older checkout can be measured with
``PYTHONPATH=<its link tree>`` (see .ci/linktree.py) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(os.environ.get("HAZARDLENS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

_spent: dict[str, float] = defaultdict(float)  # wall seconds per stage
_cpu: dict[str, float] = defaultdict(float)  # CPU seconds per stage, of the thread that ran it
_lock = threading.Lock()
_local = threading.local()


def _timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``func`` so its own time (not that of other wrapped stages inside it) adds to ``name``."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return await func(*args, **kwargs)
            finally:
                with _lock:
                    _spent[name] += time.perf_counter() - start
                    _cpu[name] += time.thread_time() - cpu

        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        start, cpu = time.perf_counter(), time.thread_time()
        stack.append([0.0, 0.0])
        try:
            return func(*args, **kwargs)
        finally:
            took, took_cpu = time.perf_counter() - start, time.thread_time() - cpu
            inner = stack.pop()
            if stack:
                stack[-1][0] += took
                stack[-1][1] += took_cpu
            with _lock:
                _spent[name] += took - inner[0]
                _cpu[name] += took_cpu - inner[1]

    return wrapper


def _patch(owner: Any, attr: str, name: str) -> bool:
    func = getattr(owner, attr, None)
    if func is None:
        return False
    setattr(owner, attr, _timed(name, func))
    return True


def instrument() -> None:
    import starlette.requests

    from hazardlens.models import engines, manager
    from hazardlens.serving.routes import detect

    _patch(starlette.requests.Request, "_get_form", "multipart parsing")
    _patch(detect, "read_upload", "read upload")
    _patch(manager, "decode_image", "decode")
    base = getattr(engines, "_ArrayEngine", engines.OnnxEngine)
    _patch(base, "_tensor", "letterbox + tensor")
    if hasattr(base, "_infer"):  # after issue 19
        for cls in (engines.OnnxEngine, getattr(engines, "OpenVinoEngine", None)):
            if cls is not None:
                _patch(cls, "_infer", "inference")
    else:
        _patch(engines.OnnxEngine, "_run", "inference")
    _patch(base, "_decode", "box decode + NMS")
    _patch(engines, "boxes_to_original", "box decode + NMS")
    _patch(detect, "_body", "JSON body + rule findings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--engine", default="onnx")
    parser.add_argument("--pyinstrument", help="write pyinstrument's call tree of the in-process path here")
    parser.add_argument("--json", help="also write the breakdown to this file")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from hazardlens.auth import create_key
    from hazardlens.context import Context
    from hazardlens.models import registry
    from hazardlens.serving.app import create_app
    from hazardlens.settings import Settings

    files = sorted((DATA / "sfchd-ppe" / "images").glob("*.jpg"))[: args.count]
    payloads = [(f.name, f.read_bytes()) for f in files]
    home = Path(tempfile.mkdtemp(prefix="hazardlens-profile-"))
    os.environ["HAZARDLENS_HOME"] = str(home)
    ctx = Context(Settings(home=home, engine=args.engine, device="cpu"))
    ctx.init()
    mv = registry.ensure_baseline(ctx)
    if os.environ.get("PROFILE_ONNX") and mv is not None:  # a previous export of the same weights: no re-export
        import shutil

        src = Path(os.environ["PROFILE_ONNX"])
        dst = ctx.settings.cache_dir / "onnx" / f"{mv.weights_sha256[:16]}-{int(mv.imgsz)}.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        shutil.copyfile(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    with ctx.db.session() as s:
        key, _ = create_key(s, "420000", "service", "profile")
    instrument()
    app = create_app(ctx, start_background=False)
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        for name, data in payloads[:3]:  # load the model, warm up
            assert client.post("/v1/detect", files={"file": (name, data, "image/jpeg")}, headers=headers).is_success
        _spent.clear()
        _cpu.clear()
        walls = []
        cpu_start = time.process_time()
        for name, data in payloads:
            start = time.perf_counter()
            r = client.post("/v1/detect", files={"file": (name, data, "image/jpeg")}, headers=headers)
            walls.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
        n = len(walls)
        cpu_total = (time.process_time() - cpu_start) / n * 1000
        stages = {k: v / n * 1000 for k, v in _spent.items()}
        cpu_stages = {k: v / n * 1000 for k, v in _cpu.items()}
        wall = sum(walls) / n * 1000
        rest = wall - sum(stages.values())
        walls.sort()
        result = {
            "engine": args.engine,
            "requests": n,
            "mean_ms": round(wall, 2),
            "p50_ms": round(walls[n // 2] * 1000, 2),
            "stages_ms": {k: round(v, 2) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
            "rest_ms (routing, auth, middleware, batcher hand-off, serialisation)": round(rest, 2),
            # CPU time does not count the waits of a busy machine: the figures to compare across runs.
            # Inference's CPU is only its calling thread's (more intra-op threads run elsewhere); the
            # process total includes the test client's own work (multipart encoding, httpx).
            "cpu_ms_process_per_request": round(cpu_total, 2),
            "cpu_ms_stages": {k: round(v, 2) for k, v in sorted(cpu_stages.items(), key=lambda kv: -kv[1])},
            "cpu_ms_rest": round(cpu_total - sum(cpu_stages.values()), 2),
        }
        if args.pyinstrument:
            from pyinstrument import Profiler

            from hazardlens.detector import detection_taxonomy, relevant
            from hazardlens.serving.routes.detect import _findings

            models = app.state.models
            profiler = Profiler(interval=0.0005)
            profiler.start()
            for _, data in payloads:
                res = models.detect(data, conf=0.25, max_pixels=ctx.settings.max_pixels)
                tax = detection_taxonomy(ctx)
                relevant(tax, res.detections, None)
                _findings(ctx, tax, res, None, 0.25)
            profiler.stop()
            Path(args.pyinstrument).write_text(profiler.output_text(unicode=False, color=False), encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
