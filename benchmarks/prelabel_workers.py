"""Pre-labelling throughput on Celery workers: two single-core workers against one (issue 16 goal:
>= 1.8x), the same model and photos.

    .venv/bin/python benchmarks/prelabel_workers.py [--count 400] [--shard-size 50] [--redis redis://127.0.0.1:6379/12]

A fresh home (SQLite catalogue, filesystem store) gets ``--count`` real JPEGs from ../shared/data
(generated photos when it is absent) and the shipped baseline as the production model, its ONNX export
made before any timing. Then, for 1 and for 2 workers, ``hazardlens worker --concurrency 1`` processes
are started, each pinned to its own core (``os.sched_setaffinity`` through ``taskset``) with one ONNX
Runtime thread (``OMP_NUM_THREADS=1``), they are given time to load the model (a warm-up job of
one sample), and one ``prelabel`` job over every photo is timed from submission to completion. The
Redis database named by ``--redis`` is flushed before and after. Prints photos/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAZARDLENS_SHARED_DATA", ROOT.parent / "shared" / "data"))
HAZARDLENS = str(Path(sys.executable).with_name("hazardlens"))


def photos(count: int) -> list[bytes]:
    files: list[Path] = []
    for sub in ("sfchd-ppe/images", "fire-smoke/images"):
        folder = DATA / sub
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(files) >= count:
        return [p.read_bytes() for p in files[:count]]
    import io

    import numpy as np
    from PIL import Image

    out = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((1280, 960)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def prepare(home: Path, count: int) -> None:
    from hazardlens.auth import Principal, ensure_user
    from hazardlens.context import Context
    from hazardlens.datasets.library import IngestMeta, ingest
    from hazardlens.models.manager import ModelManager
    from hazardlens.settings import Settings

    ctx = Context(Settings(home=home))
    ctx.init()
    manager = ModelManager(ctx, poll_s=3600)
    manager.start(background=False)  # registers the baseline and makes its ONNX export (cached in the home)
    manager.close()
    with ctx.db.session() as s:
        user = ensure_user(s, "420000", "bench-uploader", "curator")
        who = Principal(user.id, user.name, "420000", "curator")
        for data in photos(count):
            ingest(ctx, s, who, data, IngestMeta(sector="general", tags=("bench",)))
    ctx.close()


def run_job(env: dict[str, str], shard_size: int, tag: str) -> float:
    """Submit a prelabel job through the CLI and follow it; seconds from the job's submission to its
    end, as the catalogue recorded them (the CLI's own start-up is not counted)."""
    from datetime import datetime

    args = [HAZARDLENS, "prelabel", "--org", "420000", "--shard-size", str(shard_size), "--tag", tag, "--json"]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{") :])
    assert job["status"] == "completed" and job["result"]["failed"] == 0, job
    return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()


def measure(home: Path, env: dict[str, str], workers: int, shard_size: int, count: int) -> float:
    procs = []
    try:
        for core in range(workers):
            wenv = {**env, "OMP_NUM_THREADS": "1", "HAZARDLENS_INFER_THREADS": "1", "HAZARDLENS_INFER_STREAMS": "1"}
            procs.append(
                subprocess.Popen(
                    ["taskset", "-c", str(core), HAZARDLENS, "worker", "--name", f"bench{core}@local"],
                    env=wenv,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        # warm-up: every worker loads the model on its first shard (shards of one sample)
        run_job(env, 1, "warmup")
        seconds = run_job(env, shard_size, "bench")
        return count / seconds
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs at least 2 cores")
    import redis

    broker = redis.Redis.from_url(args.redis)
    broker.flushdb()
    home = Path(tempfile.mkdtemp(prefix="hazardlens-prelabel-bench-"))
    try:
        prepare(home, args.count)
        # the warm-up photos: one per worker, tagged apart from the measured ones
        env = {
            **os.environ,
            "HAZARDLENS_HOME": str(home),
            "HAZARDLENS_BROKER_URL": args.redis,
            "YOLO_OFFLINE": "1",
        }
        warm = photos(args.count + 2)[args.count :]
        from hazardlens.auth import Principal, ensure_user
        from hazardlens.context import Context
        from hazardlens.datasets.library import IngestMeta, ingest
        from hazardlens.settings import Settings

        ctx = Context(Settings(home=home))
        with ctx.db.session() as s:
            user = ensure_user(s, "420000", "bench-uploader", "curator")
            who = Principal(user.id, user.name, "420000", "curator")
            for data in warm:
                ingest(ctx, s, who, data, IngestMeta(sector="general", tags=("warmup",)))
        ctx.close()
        rates = {n: measure(home, env, n, args.shard_size, args.count) for n in (1, 2)}
        for n, rate in rates.items():
            print(f"{n} single-core worker(s): {rate:.2f} photos/s ({args.count} photos, shards of {args.shard_size})")
        print(f"two workers / one worker: {rates[2] / rates[1]:.2f}x (goal >= 1.8x)")
    finally:
        broker.flushdb()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
