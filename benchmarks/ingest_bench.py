"""Ingest throughput and memory of the sample library, on real photographs.

    .venv/bin/python benchmarks/ingest_bench.py [--count 1000] [--workers 0] [--skip-minio] [--scaling 100,800]

For each object-store backend (filesystem; S3 via a moto server started here on loopback, standing
in for MinIO) it ingests ``--count`` real JPEGs from ../shared/data (sfchd-ppe, then fire-smoke)
into a fresh home, and compares with the floor: reading the same files and putting the same bytes
into the same kind of store with no processing at all. The goal is a ratio >= 0.6 on S3/MinIO (issue 16;
the filesystem's bare write is a local copy, printed for comparison), i.e. decoding,
hashing, thumbnails, dedup, near-duplicate search and the catalogue together cost no more than the
bare store write.

Then it measures the peak memory (RSS high-water mark, in a fresh subprocess) of ingesting one
generated 48-megapixel JPEG, against fully decoding the same file, because phones send photos that
large and a server decoding each at full size would run out of memory under a few parallel uploads.
Last, the peak memory of folder ingests of ``--scaling`` photo counts, each in a fresh process: flat in
the number of files (the decode pool is bounded), not growing with the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAZARDLENS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def real_jpegs(count: int) -> list[Path]:
    files: list[Path] = []
    for sub in ("sfchd-ppe/images", "fire-smoke/images"):
        folder = DATA / sub
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
    if len(files) < count:
        sys.exit(f"need {count} JPEGs under {DATA}, found {len(files)}")
    return files[:count]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"the S3 server on port {port} did not start")


def raw_put_rate(store, files: list[Path]) -> float:  # type: ignore[no-untyped-def]
    """Images/s for read + put with no processing (the floor any ingest is compared with)."""
    from hazardlens.store import blob_key

    keys = [blob_key(hashlib.sha256(p.name.encode()).hexdigest()) for p in files]
    start = time.perf_counter()
    for path, key in zip(files, keys, strict=True):
        store.put(key, path.read_bytes(), content_type="image/jpeg")
    return len(files) / (time.perf_counter() - start)


def ingest_rate(settings, files: list[Path], workers: int) -> tuple[float, dict[str, int]]:  # type: ignore[no-untyped-def]
    from hazardlens.auth import ensure_user, principal_of
    from hazardlens.context import Context
    from hazardlens.datasets.library import IngestMeta, ingest_paths

    ctx = Context(settings)
    ctx.init()
    with ctx.db.session() as s:
        user = ensure_user(s, "420000", "cli-420000", "admin")
        who = principal_of(user)
    start = time.perf_counter()
    summary = ingest_paths(ctx, who, files, IngestMeta(sector="general"), workers=workers or None)
    rate = len(files) / (time.perf_counter() - start)
    ctx.close()
    counts = {
        "stored": summary.stored,
        "deduplicated": summary.deduplicated,
        "near_duplicates": summary.near_duplicates,
        "refused": len(summary.refused),
    }
    return rate, counts


def bench_backends(count: int, workers: int, rounds: int, skip_minio: bool) -> list[dict[str, object]]:
    """Raw puts and ingest alternate, each into a fresh store/home, ``rounds`` times per backend; the
    median ratio is reported, so that a burst of load from other work on the machine during one
    side of one round does not decide the result."""
    from hazardlens.settings import Settings
    from hazardlens.store.filesystem import FilesystemStore
    from hazardlens.store.minio_store import MinioStore

    files = real_jpegs(count)
    for p in files:  # warm the page cache, so neither side pays for the first disk read
        p.read_bytes()
    results: list[dict[str, object]] = []

    def run(backend: str, raw_store, settings_for) -> None:  # type: ignore[no-untyped-def]
        rows = []
        for i in range(rounds):
            raw = raw_put_rate(raw_store(i), files)
            rate, counts = ingest_rate(settings_for(i), files, workers)
            rows.append({"raw_put_per_s": raw, "ingest_per_s": rate, "ratio": rate / raw, **counts})
        rows.sort(key=lambda r: r["ratio"])
        results.append({"backend": backend, **rows[len(rows) // 2], "ratios": [r["ratio"] for r in rows]})

    with tempfile.TemporaryDirectory(prefix="hl-bench-") as tmp:
        base = Path(tmp)
        run("filesystem", lambda i: FilesystemStore(base / f"raw-{i}"), lambda i: Settings(home=base / f"fs-{i}"))
        if not skip_minio:
            # Its own process, as MinIO would be: an in-process server would compete for our GIL.
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port(port)
                endpoint = f"127.0.0.1:{port}"
                run(
                    "minio (moto S3 server)",
                    lambda i: MinioStore(endpoint, "bench", "bench", f"raw-{uuid.uuid4().hex[:12]}"),
                    lambda i: Settings(
                        home=base / f"s3-{i}",
                        store="minio",
                        minio_endpoint=endpoint,
                        minio_access_key="bench",
                        minio_secret_key="bench",
                        minio_bucket=f"hl-{uuid.uuid4().hex[:12]}",
                    ),
                )
            finally:
                server.terminate()
                server.wait(10)
    return results


# -- memory ---------------------------------------------------------------------------------------

_CHILD = r"""
import json, sys, time
from pathlib import Path
mode, home, files = sys.argv[1], Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
from PIL import Image
from hazardlens.settings import Settings
from hazardlens.context import Context
from hazardlens.auth import ensure_user, principal_of
from hazardlens.datasets.library import IngestMeta, ingest, ingest_paths
ctx = Context(Settings(home=home)); ctx.init()
with ctx.db.session() as s:
    u = ensure_user(s, "420000", "bench", "admin"); who = principal_of(u)
data = files[0].read_bytes() if mode != "folder" else b""
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])  # KiB
# ru_maxrss would carry the parent's peak over fork; VmHWM is this process's own, and writing 5 to
# clear_refs resets it to the current RSS, so the delta is what the ingest itself added.
try:
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
before = status("VmRSS")
start = time.perf_counter()
out = {}
if mode == "ingest":
    with ctx.db.session() as s:
        r = ingest(ctx, s, who, data, IngestMeta(sector="general"))
        out["dims"] = (r.sample.width, r.sample.height)
elif mode == "folder":  # the folder ingest (bounded decode pool) of every file given
    out["stored"] = ingest_paths(ctx, who, files, IngestMeta(sector="general")).stored
else:
    with Image.open(files[0]) as im:
        im.load(); out["dims"] = im.size  # what a decoder without reduced decoding would hold
elapsed = time.perf_counter() - start
after = status("VmHWM")
print(json.dumps({"delta_mib": (after - before) / 1024, "peak_mib": after / 1024, "s": elapsed, **out}))
"""


def _child(mode: str, home: Path, files: list[Path]) -> dict[str, Any]:
    """Run :data:`_CHILD` in a fresh process (its own peak memory) and return what it printed."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(home), *map(str, files)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def make_48mp_jpeg(path: Path) -> int:
    """8000x6000 with photo-like content (smooth shapes plus sensor-like noise), about phone size."""
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).resize(
        (1000, 750), Image.Resampling.BICUBIC
    )
    big = small.filter(ImageFilter.GaussianBlur(4)).resize((8000, 6000), Image.Resampling.BILINEAR)
    arr = np.asarray(big, dtype=np.int16)
    arr += rng.integers(-6, 7, arr.shape, dtype=np.int16)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path.stat().st_size


def bench_memory() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="hl-bench-mem-") as tmp:
        image = Path(tmp) / "48mp.jpg"
        size = make_48mp_jpeg(image)
        out: dict[str, object] = {"file_mib": size / 2**20}
        for mode in ("ingest", "full_decode"):
            home = Path(tmp) / f"home-{mode}"
            out[mode] = _child(mode, home, [image])
            shutil.rmtree(home, ignore_errors=True)
        return out


def bench_memory_scaling(counts: list[int]) -> list[dict[str, object]]:
    """Peak memory of one folder ingest of each of ``counts`` real photos, each in a fresh process
    (filesystem store): the issue asks for peak memory flat in the number of files, i.e. what the
    bounded decode pool holds, not what the folder holds."""
    out: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="hl-bench-scale-") as tmp:
        for n in counts:
            files = real_jpegs(n)
            home = Path(tmp) / f"home-{n}"
            out.append({"files": n, **_child("folder", home, files)})
            shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=0, help="decode threads (0: the library's default)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/ingest rounds (median kept)")
    parser.add_argument("--skip-minio", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--scaling", default="100,800", help="file counts whose folder-ingest peak memory is compared ('' skips)"
    )
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} images={args.count} python={sys.version.split()[0]}")
    for r in bench_backends(args.count, args.workers, args.rounds, args.skip_minio):
        ratio = float(r["ratio"])  # type: ignore[arg-type]
        every = ", ".join(f"{x:.2f}" for x in r["ratios"])  # type: ignore[attr-defined]
        print(
            f"{r['backend']:>22}: ingest {r['ingest_per_s']:6.1f} img/s | raw put {r['raw_put_per_s']:6.1f} img/s"
            f" | ratio {ratio:.2f} (median of {every}; goal >= 0.6: {'met' if ratio >= 0.6 else 'NOT met'})"
            f" | stored {r['stored']} dedup {r['deduplicated']} near-dup {r['near_duplicates']}"
            f" refused {r['refused']}"
        )
    if not args.skip_memory:
        m = bench_memory()
        ing, full = m["ingest"], m["full_decode"]
        print(
            f"48 MP JPEG ({m['file_mib']:.1f} MiB, {ing['dims'][0]}x{ing['dims'][1]}):"  # type: ignore[index]
            f" ingest peak RSS +{ing['delta_mib']:.0f} MiB in {ing['s']:.2f} s;"  # type: ignore[index]
            f" a full decode alone +{full['delta_mib']:.0f} MiB in {full['s']:.2f} s"
        )  # type: ignore[index]
    counts = [int(c) for c in args.scaling.split(",") if c.strip()]
    if counts:
        rows = bench_memory_scaling(counts)
        for r in rows:
            print(f"folder ingest of {r['files']} photos: peak RSS +{r['delta_mib']:.0f} MiB ({r['peak_mib']:.0f} MiB)")
        if len(rows) > 1:
            grow = float(rows[-1]["delta_mib"]) / max(1.0, float(rows[0]["delta_mib"]))  # type: ignore[arg-type]
            print(
                f"peak growth {rows[0]['files']} -> {rows[-1]['files']} photos: x{grow:.2f}"
                f" (goal: flat in the number of files, about x1)"
            )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
