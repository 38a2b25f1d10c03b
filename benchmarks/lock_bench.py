"""Mixed load against a real server on the embedded SQLite catalogue, with a model promotion in the
middle: does any request fail, does any writer meet ``database is locked`` (issue 13, item 7)?

    .venv/bin/python benchmarks/lock_bench.py [--seconds 60] [--concurrency 16]

A uvicorn server in this process (``create_app``, background model loading and job runner on) on a
fresh home with the shipped baseline as production and the same network under new bytes registered
as a candidate. ``--concurrency`` workers loop over a mix of what callers do: detection, uploads,
label saves and submits, searches, thumbnails (rebuilt: the stored one is deleted first), the review
queue, exports, key checks. Half-way, the system organisation's admin promotes the candidate. A
probe writer outside the server (its own SQLite connection with a 5 s busy timeout, as a CLI or a
second worker would be) writes in a loop all along; it waits only for the server's own writers,
never for a read, so its longest wait is the longest write transaction.

Prints requests per outcome, failed requests (anything but the expected answers, and transport
errors), the probe's ``database is locked`` count and longest wait, the version that answered after the promotion,
and p50/p95 latency per kind of request. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "detect": {200},
    "upload": {200, 201},
    "label": {200},
    "submit": {200, 409},  # 409: already submitted by another worker's turn on the same sample
    "search": {200},
    "thumbnail": {200},
    "review_queue": {200},
    "export": {200, 422},  # 422: nothing approved yet matches
    "me": {200},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _image(seed: int, width: int = 320, height: int = 240) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _variant(src: Path, dst: Path) -> Path:
    """The same network under different bytes: the registry refuses the same weights twice."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt["hazardlens_variant"] = 2
    torch.save(ckpt, dst)
    return dst


def main() -> int:  # noqa: C901 - one script: set-up, the workers, the promotion, the report
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()

    import httpx
    import uvicorn

    from hazardlens.auth import SYSTEM, create_key
    from hazardlens.context import Context
    from hazardlens.datasets import library
    from hazardlens.models import registry
    from hazardlens.serving.app import create_app
    from hazardlens.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="hl-lockbench-")) / "home"
    ctx = Context(Settings(home=home, model_poll_s=0.5))
    ctx.init()
    base = registry.ensure_baseline(ctx)
    if base is None:
        sys.exit("needs the shipped baseline (models/baseline/baseline.pt and card.json)")
    with ctx.db.session() as s:
        cand = registry.register_model(
            ctx,
            s,
            SYSTEM,
            _variant(registry.BASELINE_DIR / "baseline.pt", home / "variant.pt"),
            classes=list(base.classes),
            imgsz=int(base.imgsz),
            card={"source": "lock_bench"},
            version="bench-2",
        )
        keys = {role: create_key(s, "420000", role, f"{role}-bench")[0] for role in ("curator", "reviewer")}
        keys["service"] = create_key(s, "420000", "service", "service-bench")[0]
        keys["system"] = create_key(s, "000000", "admin", "system-bench")[0]
    heads = {role: {"Authorization": f"Bearer {key}"} for role, key in keys.items()}
    images = [_image(i) for i in range(64)]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), lifespan="on", log_config=None, access_log=False, timeout_keep_alive=5)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    with httpx.Client(base_url=url, timeout=120) as probe:
        deadline = time.monotonic() + 300
        while True:
            try:
                if (
                    probe.get("/readyz").status_code == 200
                    and probe.post(
                        "/v1/detect", headers=heads["service"], files={"file": ("p.jpg", images[0], "image/jpeg")}
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit("the server did not get ready in 300 s")
            time.sleep(0.5)

    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    latency: dict[str, list[float]] = defaultdict(list)
    versions_after: Counter[str] = Counter()
    sample_ids: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    promoted = threading.Event()
    kinds = list(EXPECTED)

    def call(http: httpx.Client, kind: str, n: int) -> httpx.Response | None:
        with lock:
            sid = sample_ids[n % len(sample_ids)] if sample_ids else None
        img = images[n % len(images)]
        if kind == "detect":
            return http.post("/v1/detect", headers=heads["service"], files={"file": ("p.jpg", img, "image/jpeg")})
        if kind == "upload":
            fresh = _image(10_000 + n)
            return http.post(
                "/v1/samples",
                headers=heads["curator"],
                data={"sector": "general"},
                files={"file": ("p.jpg", fresh, "image/jpeg")},
            )
        if kind in ("label", "submit", "thumbnail") and sid is None:
            return None
        if kind == "label":
            box = {"class_key": "person", "x1": 10, "y1": 10, "x2": 100 + n % 50, "y2": 120}
            return http.put(f"/v1/samples/{sid}/annotations", headers=heads["curator"], json={"boxes": [box]})
        if kind == "submit":
            return http.post(f"/v1/samples/{sid}/annotations/submit", headers=heads["curator"])
        if kind == "search":
            return http.get("/v1/samples", headers=heads["reviewer"], params={"limit": 50})
        if kind == "thumbnail":
            sha = http.get(f"/v1/samples/{sid}", headers=heads["curator"]).json()["sha256"]
            ctx.store.delete(library.thumbnail_key(sha))
            return http.get(f"/v1/samples/{sid}/thumbnail", headers=heads["curator"])
        if kind == "review_queue":
            return http.get("/v1/review/queue", headers=heads["reviewer"])
        if kind == "export":
            return http.post("/v1/exports", headers=heads["reviewer"], json={"format": "coco", "status": "submitted"})
        return http.get("/v1/me", headers=heads["curator"])

    def worker(w: int) -> None:
        n = w
        with httpx.Client(base_url=url, timeout=120) as http:
            while not stop.is_set():
                kind = kinds[n % len(kinds)]
                started = time.perf_counter()
                try:
                    r = call(http, kind, n)
                except httpx.HTTPError as exc:
                    with lock:
                        outcomes[f"{kind} {type(exc).__name__}"] += 1
                        failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    n += args.concurrency
                    continue
                took = time.perf_counter() - started
                if r is not None:
                    with lock:
                        outcomes[f"{kind} {r.status_code}"] += 1
                        latency[kind].append(took)
                        if r.status_code not in EXPECTED[kind]:
                            failures.append(f"{kind}: {r.status_code} {r.text[:200]}")
                        if kind == "upload" and r.status_code in (200, 201):
                            sample_ids.append(int(r.json()["id"]))
                        if kind == "detect" and r.status_code == 200 and promoted.is_set():
                            versions_after[r.json()["model"]["version"]] += 1
                n += args.concurrency

    probe_writes, probe_locked, probe_waits = 0, [], []

    def probe_writer() -> None:
        nonlocal probe_writes
        db = ctx.settings.database.removeprefix("sqlite:///")
        while not stop.is_set():
            conn = sqlite3.connect(db, timeout=5.0, isolation_level=None)
            try:
                began = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                probe_waits.append(time.perf_counter() - began)
                conn.execute("UPDATE organisations SET name = name WHERE code = '420000'")
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                probe_locked.append(str(exc))
            finally:
                conn.close()
            probe_writes += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
    threads.append(threading.Thread(target=probe_writer))
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.seconds / 2)
    with httpx.Client(base_url=url, timeout=120) as admin:
        r = admin.post(f"/v1/models/{cand.name}/{cand.version}/promote", headers=heads["system"])
        print(f"promotion of {cand.version} at {time.monotonic() - started:.1f} s: {r.status_code}")
        if r.status_code != 200:
            failures.append(f"promote: {r.status_code} {r.text[:200]}")
    promoted.set()
    time.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
    stop.set()
    for t in threads:
        t.join(180)
    elapsed = time.monotonic() - started
    server.should_exit = True
    thread.join(30)
    ctx.close()

    total = sum(outcomes.values())
    print(f"{total} requests in {elapsed:.1f} s at concurrency {args.concurrency} ({total / elapsed:.1f}/s)")
    for key in sorted(outcomes):
        print(f"  {key:<28} {outcomes[key]}")
    for kind in kinds:
        if latency[kind]:
            print(
                f"  {kind:<14} p50 {percentile(latency[kind], 0.5) * 1000:7.1f} ms"
                f"  p95 {percentile(latency[kind], 0.95) * 1000:7.1f} ms"
            )
    print(f"detections after the promotion by version: {dict(versions_after)}")
    print(f"failed requests: {len(failures)}")
    for line in failures[:10]:
        print(f"  {line}")
    print(
        f"probe writer: {probe_writes} writes, {len(probe_locked)} 'database is locked', "
        f"lock wait p50 {percentile(probe_waits, 0.5) * 1000:.1f} ms, max {max(probe_waits, default=0) * 1000:.1f} ms"
    )
    return 1 if failures or probe_locked else 0


if __name__ == "__main__":
    sys.exit(main())
