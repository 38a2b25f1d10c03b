"""The detection service end to end against Ultralytics' own in-process predict, on real photos.

    .venv/bin/python benchmarks/serve_bench.py [--weights PATH] [--imgsz 640] [--count 150]
        [--engines onnx,openvino,openvino-int8] [--levels 1,16]

Same ``--count`` photos from ../shared/data/sfchd-ppe, same model, same machine, one run:

* the service, once per engine of ``--engines`` side by side: a real uvicorn server in its own
  process (``hazardlens.serving.main:app``, one worker, ``HAZARDLENS_ENGINE`` set to the engine), fed
  by httpx over loopback with multipart uploads of the JPEG bytes, at each concurrency of
  ``--levels`` (every photo once per level): p50, p95, throughput;
* the INT8 engines need a variant: the benchmark quantises the model itself (NNCF, calibrated on 32
  other photos of the same folder) and records it as accepted *for timing only* (its accuracy check
  is ``hazardlens models quantize``'s job, not the benchmark's);
* Ultralytics, the anchor: the same ``.pt`` exported to ONNX by Ultralytics in this run and
  ``YOLO(onnx).predict(path)`` in this process, batch 1, on the same files (so it, too, reads and
  decodes each JPEG); ``--torch`` adds its PyTorch predict;
* ratios per engine: service p50 @1 / Ultralytics ONNX p50 (goal <= 0.7) and throughput @16 / @1
  (goal >= 1.5); the server's RSS with one model loaded;
* the engine's own ceiling (FP32 engines): the decoded photos through ``predict`` in this process,
  one at a time and then from as many threads as streams, no HTTP: on a machine whose single
  request already uses every core, what parallel streams can gain at most.

On a shared, busy machine absolute figures swing; the ratios are measured in the same run.

The model: ``--weights`` if given (classes from ``--classes`` or the checkpoint's names, which must
be taxonomy keys), else the shipped baseline (models/baseline/baseline.pt) if present, else a
random-weight YOLO11n built here (timing only; it detects nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAZARDLENS_SHARED_DATA", ROOT.parent / "shared" / "data"))
PPE_CLASSES = ["person", "helmet", "head", "safety_clothes", "self_clothes"]


def photos(count: int) -> list[Path]:
    folder = DATA / "sfchd-ppe" / "images"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"}) if folder.is_dir() else []
    if len(files) < count:
        sys.exit(f"need {count} JPEGs under {folder}, found {len(files)}")
    return files[:count]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def random_yolo(path: Path, classes: list[str]) -> Path:
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    torch.manual_seed(0)
    wrapper = YOLO("yolo11n.yaml")
    model = DetectionModel(yaml_model_load("yolo11n.yaml"), nc=len(classes), verbose=False)
    model.names = dict(enumerate(classes))
    model.args = wrapper.model.args
    model.eval()
    wrapper.model = model
    wrapper.save(path)
    return path


def prepare_home(home: Path, args: argparse.Namespace) -> tuple[Path, str]:
    """Register the model in a fresh home; returns the .pt to give Ultralytics and a description."""
    from hazardlens.auth import SYSTEM
    from hazardlens.context import Context
    from hazardlens.models import registry
    from hazardlens.settings import Settings

    ctx = Context(Settings(home=home))
    ctx.init()
    try:
        if args.weights:
            weights = Path(args.weights).resolve()
            classes = args.classes.split(",") if args.classes else None
            if classes is None:
                from hazardlens.models.ultralytics_env import prepare_ultralytics

                prepare_ultralytics()
                from ultralytics import YOLO

                classes = list(YOLO(str(weights)).names.values())
            with ctx.db.session() as s:
                registry.register_model(
                    ctx,
                    s,
                    SYSTEM,
                    weights,
                    classes=classes,
                    imgsz=args.imgsz,
                    card={"source": "serve_bench"},
                    stage="production",
                )
            return weights, f"--weights {weights.name}"
        if (registry.BASELINE_DIR / "baseline.pt").is_file():
            mv = registry.ensure_baseline(ctx)
            assert mv is not None
            return registry.BASELINE_DIR / "baseline.pt", f"shipped baseline {mv.version} (imgsz {mv.imgsz})"
        weights = random_yolo(home / "random-yolo11n.pt", PPE_CLASSES)
        with ctx.db.session() as s:
            registry.register_model(
                ctx,
                s,
                SYSTEM,
                weights,
                classes=PPE_CLASSES,
                imgsz=args.imgsz,
                card={"source": "serve_bench", "random_weights": True},
                stage="production",
            )
        return weights, f"random-weight YOLO11n, imgsz {args.imgsz} (no baseline yet)"
    finally:
        ctx.close()


def run_level(url: str, key: str, payloads: list[tuple[str, bytes]], concurrency: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(payloads)))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                name, data = payloads[i]
                start = time.perf_counter()
                r = http.post("/v1/detect", files={"file": (name, data, "image/jpeg")})
                took = time.perf_counter() - start
                with lock:
                    if r.status_code == 200:
                        latencies.append(took)
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        sys.exit(f"{len(failures)} failed requests at concurrency {concurrency}: {failures[:3]}")
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "throughput_rps": len(latencies) / wall,
    }


def ultralytics_predict(weights: Path, files: list[Path], imgsz: int, device: str) -> dict[str, float]:
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    for f in files[:5]:  # warm-up, as the service is warm
        model.predict(str(f), imgsz=imgsz, device=device, verbose=False)
    latencies = []
    start = time.perf_counter()
    for f in files:
        t = time.perf_counter()
        model.predict(str(f), imgsz=imgsz, device=device, verbose=False)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "throughput_rps": len(latencies) / wall,
    }


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, high-water mark) of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = {
        line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM"))
    }
    return int(values["VmRSS"]) / 1024, int(values["VmHWM"]) / 1024


def quantize_for_timing(home: Path, engine: str, calibration: list[Path]) -> None:
    """Record an INT8 variant of the production model, calibrated on ``calibration``, as accepted for
    timing only (the evaluation is ``hazardlens models quantize``'s, not the benchmark's)."""
    from hazardlens.auth import SYSTEM
    from hazardlens.context import Context
    from hazardlens.models.manager import cached_onnx
    from hazardlens.models.quantize import calibration_tensors, quantize_onnx, record_variant, scratch
    from hazardlens.models.registry import production_model
    from hazardlens.settings import Settings

    ctx = Context(Settings(home=home))
    try:
        with ctx.db.session() as s:
            mv = production_model(s)
            assert mv is not None
        fp32 = cached_onnx(ctx, mv)
        with scratch(ctx) as work:
            target, files = quantize_onnx(fp32, engine, calibration_tensors(calibration, int(mv.imgsz)), work)
            record_variant(
                ctx,
                SYSTEM,
                mv.name,
                mv.version,
                engine,
                files,
                {"note": "serve_bench: timing only, not evaluated"},
                True,
            )
    finally:
        ctx.close()


def serve(home: Path, key: str, engine: str, args: argparse.Namespace, payloads: list[tuple[str, bytes]]) -> dict:
    """One uvicorn server with ``engine``: figures at each concurrency level."""
    port = free_port()
    env = {
        **os.environ,
        "HAZARDLENS_HOME": str(home),
        "HAZARDLENS_ENGINE": engine,
        "HAZARDLENS_DEVICE": args.device,
        "HAZARDLENS_LOG_LEVEL": "WARNING",
        "YOLO_OFFLINE": "1",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "hazardlens.serving.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--timeout-keep-alive",
            "5",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=home,
    )
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"engine": engine}
    try:
        import httpx

        deadline = time.monotonic() + 900
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server with engine {engine} did not become ready")
            time.sleep(0.5)
        out["rss_loaded_mb"] = round(rss_mb(server.pid)[0], 1)
        run_level(url, key, payloads[:6], 2)  # warm-up
        levels = [run_level(url, key, payloads, int(c)) for c in args.levels.split(",")]
        out["service"] = [{k: round(v, 2) for k, v in lv.items()} for lv in levels]
        rss, hwm = rss_mb(server.pid)
        out["rss_after_mb"], out["rss_peak_mb"] = round(rss, 1), round(hwm, 1)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            loaded = http.get("/v1/models").json()["loaded"]
        out["loaded"] = [
            {k: m.get(k) for k in ("version", "engine", "device", "streams", "batches_run", "images_run")}
            for m in loaded
        ]
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return out


def engine_ceiling(weights: Path, engine: str, files: list[Path], imgsz: int, home: Path) -> dict[str, float]:
    """What the engine alone can gain from concurrency here: the same decoded photos through
    ``engine.predict`` one at a time, then from as many threads as it has streams (no HTTP, no JSON,
    no decoding): the bound the service's throughput @16 / @1 can approach on this machine."""
    import cv2

    from hazardlens.models.engines import load_engine, plan_streams
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    classes = list(YOLO(str(weights)).names.values())
    streams, threads = plan_streams()
    eng = load_engine(engine, weights, classes, imgsz, home / "ceiling", streams=streams, threads=threads)
    images = [cv2.imread(str(f)) for f in files]
    try:
        for image in images[:4]:  # warm-up: every stream and the solo one
            eng.predict([image])
        start = time.perf_counter()
        for image in images:
            eng.predict([image])
        alone = len(images) / (time.perf_counter() - start)
        pending = list(range(len(images)))
        lock = threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    i = pending.pop()
                eng.predict([images[i]])

        workers = [threading.Thread(target=drain) for _ in range(max(2, streams))]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        together = len(images) / (time.perf_counter() - start)
    finally:
        eng.close()
    return {"streams": streams, "threads": threads, "alone_ips": alone, "parallel_ips": together}


def ultralytics_onnx(weights: Path, home: Path, imgsz: int) -> Path:
    """The same ``.pt`` exported by Ultralytics' own exporter (its defaults: static shape), in this run."""
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
    import shutil

    from ultralytics import YOLO

    local = home / "ultralytics-export" / "model.pt"
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, local)
    return Path(YOLO(str(local), task="detect").export(format="onnx", imgsz=imgsz, device="cpu", verbose=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a YOLO .pt (default: shipped baseline, else random weights)")
    parser.add_argument("--classes", help="comma-separated taxonomy keys of --weights' classes")
    parser.add_argument("--imgsz", type=int, default=640)
    # 150: at 60 photos, 16 callers make under four waves and the ramp and drain weigh on throughput@16
    parser.add_argument("--count", type=int, default=150)
    parser.add_argument("--engines", default=os.environ.get("HAZARDLENS_ENGINE", "onnx,openvino"))
    parser.add_argument("--device", default=os.environ.get("HAZARDLENS_DEVICE", "auto"))
    parser.add_argument("--levels", default="1,16")
    parser.add_argument("--torch", action="store_true", help="also time Ultralytics' PyTorch predict")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    files = photos(args.count)
    payloads = [(f.name, f.read_bytes()) for f in files]
    home = Path(tempfile.mkdtemp(prefix="hazardlens-serve-bench-"))
    weights, model_desc = prepare_home(home, args)

    from hazardlens.auth import create_key
    from hazardlens.context import Context
    from hazardlens.settings import Settings

    ctx = Context(Settings(home=home))
    with ctx.db.session() as s:
        key, _ = create_key(s, "420000", "service", "bench")
    ctx.close()

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    calibration = sorted((DATA / "sfchd-ppe" / "images").glob("*.jpg"))[-32:]
    for engine in engines:
        if engine.endswith("-int8"):
            quantize_for_timing(home, engine, calibration)
    results: dict[str, Any] = {
        "model": model_desc,
        "imgsz": args.imgsz,
        "photos": len(files),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_start": os.getloadavg(),
        "engines": [serve(home, key, engine, args, payloads) for engine in engines],
    }

    device = "cpu" if args.device in ("auto", "cpu") and not _cuda() else "cuda:0"
    ul_onnx = ultralytics_predict(ultralytics_onnx(weights, home, args.imgsz), files, args.imgsz, device)
    results["ultralytics_onnx"] = {k: round(v, 2) for k, v in ul_onnx.items()}
    if args.torch:
        results["ultralytics_torch"] = {
            k: round(v, 2) for k, v in ultralytics_predict(weights, files, args.imgsz, device).items()
        }
    for er in results["engines"]:
        if not er["engine"].endswith("-int8"):
            er["engine_ceiling"] = {
                k: round(v, 2) for k, v in engine_ceiling(weights, er["engine"], files, args.imgsz, home).items()
            }
    results["load_average_end"] = os.getloadavg()

    print(f"model: {model_desc}; {len(files)} photos; {os.cpu_count()} CPUs; load {results['load_average_start']}")
    print(f"{'':>30} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>8}")
    for er in results["engines"]:
        by_c = {lv["concurrency"]: lv for lv in er["service"]}
        for lv in er["service"]:
            label = f"{er['engine']} @{lv['concurrency']}"
            print(f"{label:>30} {lv['p50_ms']:>9.1f} {lv['p95_ms']:>9.1f} {lv['throughput_rps']:>8.2f}")
        if 1 in by_c:
            er["ratio_p50_vs_ultralytics_onnx"] = round(by_c[1]["p50_ms"] / ul_onnx["p50_ms"], 3)
        if 1 in by_c and 16 in by_c:
            er["ratio_throughput16_vs_1"] = round(by_c[16]["throughput_rps"] / by_c[1]["throughput_rps"], 3)
    for name in ("ultralytics_onnx", "ultralytics_torch"):
        if name in results:
            ul = results[name]
            print(f"{name + ' b1':>30} {ul['p50_ms']:>9.1f} {ul['p95_ms']:>9.1f} {ul['throughput_rps']:>8.2f}")
    base = next((er for er in results["engines"] if er["engine"] == "onnx"), None)
    for er in results["engines"]:
        ratio = er.get("ratio_p50_vs_ultralytics_onnx")
        line = f"{er['engine']:>14}: p50@1 / ultralytics onnx p50 = {ratio} (goal <= 0.7)"
        line += f"; throughput@16 / @1 = {er.get('ratio_throughput16_vs_1')} (goal >= 1.5)"
        if base is not None and er is not base:
            b1 = next(lv for lv in base["service"] if lv["concurrency"] == 1)
            e1 = next(lv for lv in er["service"] if lv["concurrency"] == 1)
            er["speed_vs_onnx_fp32_p50"] = round(b1["p50_ms"] / e1["p50_ms"], 3)
            line += f"; speed vs onnx FP32 (p50@1) = {er['speed_vs_onnx_fp32_p50']}x"
        print(line)
        if "engine_ceiling" in er:
            c = er["engine_ceiling"]
            er["ratio_engine_parallel_vs_alone"] = round(c["parallel_ips"] / c["alone_ips"], 3)
            print(
                f"{'':>16}the engine alone, no HTTP: {c['alone_ips']:.1f} images/s one at a time, "
                f"{c['parallel_ips']:.1f} from {int(c['streams'])} streams x {int(c['threads'])} threads: "
                f"x{er['ratio_engine_parallel_vs_alone']} (the bound on throughput@16 / @1 here)"
            )
    print(json.dumps(results, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


if __name__ == "__main__":
    main()
