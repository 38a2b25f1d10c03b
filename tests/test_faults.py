"""Fault suite (issue 13): the real server (``hazardlens serve`` in its own process, its own home)
against real failures of what it stands on.

- kill -9 during an upload burst: every upload answered 2xx is there after a restart, byte for
  byte, and nothing half-written remains (no temporary file, no catalogue row without its blob);
- the MinIO/S3 store (a moto server on loopback) stopped mid-run: clear 503 ``store_unavailable``
  answers in the one error shape, ``/readyz`` names the store, and service comes back by itself;
- PostgreSQL restarted mid-run: a private cluster of this machine's PostgreSQL binaries (never the
  shared server), 503 ``catalogue_unavailable`` while it is down, service back by itself;
- disk full: a small tmpfs as the home, filled up: 507 ``insufficient_storage``, ``/readyz`` says
  not ready, and uploads work again once space is freed.

Each of those starts one or two servers (seconds each on an idle machine) and is marked slow; the
pieces they rest on (start-up recovery, the outage translation) have quick tests of their own.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from hazardlens.context import Context
from hazardlens.settings import Settings

HAZARDLENS = Path(sys.executable).parent / "hazardlens"
START_TIMEOUT_S = 300.0  # generous: a loaded 2-core CI box needs tens of seconds to import the app
TMP_PREFIX = ".hl-tmp-"
S3_KEY = "testing"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def noise_png(seed: int, side: int = 256) -> bytes:
    """A photo no other test has: random pixels, so the bytes (and their hash) are unique and the
    PNG barely compresses (a write takes long enough for a kill to land in it)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Server:
    """``hazardlens serve`` as an operator starts it, on a free loopback port."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> Settings:
        """The same settings the server reads from its environment, for the test's own look at the
        catalogue and the store."""
        kwargs: dict[str, Any] = {"home": self.home}
        if "HAZARDLENS_DATABASE_URL" in self.env:
            kwargs["database_url"] = self.env["HAZARDLENS_DATABASE_URL"]
        if self.env.get("HAZARDLENS_STORE") == "minio":
            kwargs.update(
                store="minio",
                minio_endpoint=self.env["HAZARDLENS_MINIO_ENDPOINT"],
                minio_access_key=S3_KEY,
                minio_secret_key=S3_KEY,
                minio_bucket=self.env["HAZARDLENS_MINIO_BUCKET"],
            )
        return Settings(**kwargs)

    def make_key(self, org: str = "420000", role: str = "curator") -> str:
        from hazardlens.auth import create_key

        ctx = Context(self.settings())
        try:
            ctx.db.init()
            with ctx.db.session() as s:
                key, _ = create_key(s, org, role, None)
        finally:
            ctx.close()
        return key

    def start(self) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HAZARDLENS_")}
        env.update({"HAZARDLENS_HOME": str(self.home), "HAZARDLENS_MODEL_POLL_S": "60", **self.env})
        log = open(self.home.parent / f"server-{self.port}.log", "wb")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            [str(HAZARDLENS), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"the server did not answer /healthz in {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        path = self.home.parent / f"server-{self.port}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def server_factory() -> Iterator[Any]:
    started: list[Server] = []

    def make(home: Path, **env: str) -> Server:
        home.mkdir(parents=True, exist_ok=True)
        server = Server(home=home, env=dict(env))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def upload(client: httpx.Client, key: str, data: bytes, name: str = "photo.png") -> httpx.Response:
    return client.post(
        "/v1/samples",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": (name, data, "image/png")},
        data={"sector": "general"},
    )


def assert_error(resp: httpx.Response, status: int, code: str) -> None:
    """The one JSON error shape, with the status and the code a client can act on."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def temp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"{TMP_PREFIX}*") if p.is_file())


# -- kill -9 during an upload burst ----------------------------------------------------------------


@pytest.mark.slow
def test_kill9_during_upload_burst_keeps_every_acknowledged_upload(tmp_path: Path, server_factory: Any) -> None:
    server = server_factory(tmp_path / "home")
    key = server.make_key()
    server.start()
    store_root = server.settings().store_root
    acknowledged: dict[str, int] = {}  # sha256 -> sample id, for every upload answered 2xx
    lock = threading.Lock()
    killed = threading.Event()
    failures_before_kill: list[str] = []

    def burst(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for i in range(10_000):
                if killed.is_set():
                    return
                data = noise_png(worker * 100_000 + i)
                try:
                    resp = upload(client, key, data)
                except httpx.HTTPError as exc:
                    if not killed.is_set():
                        failures_before_kill.append(repr(exc))
                    return
                if resp.status_code in (200, 201):
                    with lock:
                        acknowledged[sha(data)] = resp.json()["id"]
                elif not killed.is_set():
                    failures_before_kill.append(f"{resp.status_code} {resp.text[:200]}")

    threads = [threading.Thread(target=burst, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    # Let some uploads through, then kill while a write is under way (a temporary file exists) if we
    # catch one in the act within a few seconds, else anyway.
    deadline = time.monotonic() + 120
    while len(acknowledged) < 8 and time.monotonic() < deadline and not failures_before_kill:
        time.sleep(0.05)
    assert not failures_before_kill, failures_before_kill
    assert len(acknowledged) >= 8, "the burst did not get going"
    catch_until = time.monotonic() + 10
    while time.monotonic() < catch_until and not temp_files(store_root):
        time.sleep(0.002)
    server.kill9()
    killed.set()
    for t in threads:
        t.join(60)
    left_by_the_crash = temp_files(store_root)

    server.start()  # same home: start-up recovers
    assert temp_files(store_root) == [], f"half-written files remain (the crash left {left_by_the_crash})"
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        for digest, sample_id in acknowledged.items():
            resp = client.get(f"/v1/samples/{sample_id}/image")
            assert resp.status_code == 200, (sample_id, resp.status_code, resp.text[:200])
            assert sha(resp.content) == digest, f"sample {sample_id} is not the bytes uploaded"
        # Still takes uploads after the crash.
        after = noise_png(999_999)
        assert upload(client, key, after).status_code == 201

    # No catalogue row without its whole blob and thumbnail; the catalogue file itself is sound.
    from hazardlens.orm import Sample
    from hazardlens.store import blob_key

    ctx = Context(server.settings())
    try:
        with ctx.db.read_session() as session:
            rows = session.query(Sample.id, Sample.sha256).all()
        assert {s for _, s in rows} >= set(acknowledged)
        for sample_id, digest in rows:
            assert sha(ctx.store.get(blob_key(digest))) == digest, f"row {sample_id} has a broken blob"
            assert ctx.store.exists(f"thumbnails/{digest}.jpg"), f"row {sample_id} has no thumbnail"
    finally:
        ctx.close()
    with contextlib.closing(sqlite3.connect(server.home / "catalogue.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- the object store stopped mid-run --------------------------------------------------------------


class MotoS3:
    """A moto S3 server on a fixed loopback port that can be stopped (its socket closed, so callers
    meet a refused connection as with a dead MinIO) and started again with its objects kept."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server._server.server_close()  # release the port: connections are refused, not queued
            self._server = None


@pytest.mark.slow
def test_s3_store_stopped_mid_run_answers_503_and_recovers(tmp_path: Path, server_factory: Any) -> None:
    import uuid

    s3 = MotoS3()
    s3.start()
    try:
        server = server_factory(
            tmp_path / "home",
            HAZARDLENS_STORE="minio",
            HAZARDLENS_MINIO_ENDPOINT=s3.endpoint,
            HAZARDLENS_MINIO_ACCESS_KEY=S3_KEY,
            HAZARDLENS_MINIO_SECRET_KEY=S3_KEY,
            HAZARDLENS_MINIO_BUCKET=f"hl-faults-{uuid.uuid4().hex[:12]}",
        )
        key = server.make_key()
        server.start()
        first, second = noise_png(1), noise_png(2)
        with httpx.Client(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            created = upload(client, key, first)
            assert created.status_code == 201, created.text
            sample_id = created.json()["id"]

            s3.stop()
            started = time.monotonic()
            assert_error(upload(client, key, second), 503, "store_unavailable")
            assert time.monotonic() - started < 60, "the refusal took longer than a client waits"
            assert_error(client.get(f"/v1/samples/{sample_id}/image"), 503, "store_unavailable")
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["store"] == "failed", ready.text
            assert ready.json()["checks"]["catalogue"] == "ok"
            assert client.get("/v1/samples").status_code == 200  # what needs no store still works

            s3.start()  # back, same port, objects kept: no server restart needed
            again = upload(client, key, second)
            assert again.status_code == 201, again.text
            image = client.get(f"/v1/samples/{sample_id}/image")
            assert image.status_code == 200 and image.content == first
            assert client.get("/readyz").json()["checks"]["store"] == "ok"
    finally:
        s3.stop()


# -- PostgreSQL restarted mid-run --------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (this machine's binaries, a temporary folder, a free port),
    so stopping it disturbs nobody else's database. As root it runs as the ``postgres`` user."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hl-faults-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run a private PostgreSQL as")
            self.user = "postgres"
            os.chmod(self.dir, 0o755)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self.user, timeout=120)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.slow
def test_postgres_restarted_mid_run_answers_503_and_recovers(tmp_path: Path, server_factory: Any) -> None:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) on this machine")
    pg = PrivatePostgres(bin_dir)
    try:
        pg.init()
        pg.start()
        server = server_factory(tmp_path / "home", HAZARDLENS_DATABASE_URL=pg.url)
        key = server.make_key()
        server.start()
        with httpx.Client(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            created = upload(client, key, noise_png(11))
            assert created.status_code == 201, created.text

            pg.stop()
            assert_error(upload(client, key, noise_png(12)), 503, "catalogue_unavailable")
            assert_error(client.get("/v1/samples"), 503, "catalogue_unavailable")
            assert_error(client.get(f"/v1/samples/{created.json()['id']}"), 503, "catalogue_unavailable")
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["catalogue"] == "failed", ready.text

            pg.start()  # back: the very next request works, no server restart
            again = upload(client, key, noise_png(12))
            assert again.status_code == 201, again.text
            listed = client.get("/v1/samples")
            assert listed.status_code == 200
            assert {s["id"] for s in listed.json()["items"]} >= {created.json()["id"], again.json()["id"]}
            assert client.get("/readyz").json()["checks"]["catalogue"] == "ok"
    finally:
        pg.remove()


# -- disk full ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 48 MiB tmpfs: a disk that really fills up (needs root; skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is simulated with a small tmpfs mount, which needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="hl-faults-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(mountpoint)], capture_output=True
    )
    if done.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def fill(path: Path) -> int:
    """Write until the disk refuses; answers how much was written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError:
                break
        for size in (1 << 16, 1 << 12, 1 << 9, 1):  # the last pages too
            with contextlib.suppress(OSError):
                while True:
                    written += fh.write(b"\0" * size)
    return written


@pytest.mark.slow
def test_disk_full_answers_507_and_readyz_says_so(tmp_path: Path, small_disk: Path, server_factory: Any) -> None:
    server = server_factory(small_disk / "home")
    key = server.make_key()
    server.start()
    filler = small_disk / "filler"
    with httpx.Client(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        assert upload(client, key, noise_png(21)).status_code == 201
        assert client.get("/readyz").json()["checks"]["store"] == "ok"

        assert fill(filler) > 0
        assert_error(upload(client, key, noise_png(22)), 507, "insufficient_storage")
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        failed = {name for name, state in ready.json()["checks"].items() if state == "failed"}
        assert failed & {"store", "disk"}, ready.json()
        assert temp_files(server.settings().store_root) == []  # the refused write left nothing
        assert client.get("/v1/samples").status_code == 200  # reads still work on a full disk

        filler.unlink()  # space again: no restart needed
        again = upload(client, key, noise_png(22))
        assert again.status_code == 201, again.text
        assert client.get(f"/v1/samples/{again.json()['id']}/image").content == noise_png(22)
        assert client.get("/readyz").json()["checks"]["store"] == "ok"


# -- the pieces, quickly ----------------------------------------------------------------------------


def test_recover_removes_dead_writers_temp_files_only(tmp_path: Path) -> None:
    from hazardlens.store.filesystem import FilesystemStore

    store = FilesystemStore(tmp_path)
    store.put("blobs/ab/abc", b"whole")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "blobs" / "ab"
    (folder / f"{TMP_PREFIX}{dead.pid}-x1").write_bytes(b"half")  # a writer killed mid-write
    (folder / f"{TMP_PREFIX}{os.getpid()}-x2").write_bytes(b"in flight")  # a live worker's
    (folder / f"{TMP_PREFIX}old-name").write_bytes(b"?")  # no pid: left until it is a day old
    stale = folder / f"{TMP_PREFIX}stale-name"
    stale.write_bytes(b"?")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    assert store.recover() == 2
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["abc", f"{TMP_PREFIX}{os.getpid()}-x2", f"{TMP_PREFIX}old-name"]
    )
    assert store.get("blobs/ab/abc") == b"whole" and list(store.list()) == ["blobs/ab/abc"]


def test_catalogue_errors_become_codes() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    from hazardlens.outages import catalogue_error

    def op(message: str) -> OperationalError:
        return OperationalError("SELECT 1", {}, Exception(message))

    refused = catalogue_error(op('connection to server at "127.0.0.1", port 5432 failed: Connection refused'))
    assert refused is not None and (refused.status, refused.code) == (503, "catalogue_unavailable")
    full = catalogue_error(op("database or disk is full"))
    assert full is not None and (full.status, full.code) == (507, "insufficient_storage")
    locked = catalogue_error(op("database is locked"))
    assert locked is not None and locked.code == "catalogue_unavailable" and "busy" in locked.message
    assert catalogue_error(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))) is None


def test_filesystem_store_full_disk_is_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC mid-write: StoreFull, and the temporary file is gone (the real disk: the slow test)."""
    import errno

    from hazardlens.store import StoreFull
    from hazardlens.store.filesystem import FilesystemStore

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = FilesystemStore(tmp_path)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreFull) as caught:
        store.put("blobs/ab/abd", b"x" * 100)
    assert (caught.value.status, caught.value.code) == (507, "insufficient_storage")
    assert temp_files(tmp_path) == [] and not store.exists("blobs/ab/abd")
