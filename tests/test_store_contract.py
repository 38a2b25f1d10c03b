"""The object-store contract (hazardlens.store.base), run on both backends through the
parametrised ``store`` fixture, plus the few guarantees that only one backend can show."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.settings import Settings
from hazardlens.store import ObjectNotFound, ObjectStore, blob_key, open_store
from hazardlens.store.filesystem import FilesystemStore
from hazardlens.store.keys import MIN_PART_SIZE
from hazardlens.store.minio_store import MinioStore
from tests.fixtures.s3 import S3_ACCESS_KEY, S3_SECRET_KEY, unique_bucket

MiB = 1024 * 1024


class GeneratedStream:
    """A large stream made on the fly (each MiB different, so misordered parts would show),
    hashing what it hands out; ``fail_after`` makes it die mid-way like a dropped upload."""

    def __init__(self, total: int, fail_after: int | None = None) -> None:
        self.total = total
        self.sent = 0
        self.fail_after = fail_after
        self.sha = hashlib.sha256()
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise ConnectionResetError("client went away")
        want = self.total - self.sent if n is None or n < 0 else min(n, self.total - self.sent)
        while len(self._buf) < want:
            self._buf += os.urandom(MiB)
        out, self._buf = self._buf[:want], self._buf[want:]
        self.sent += len(out)
        self.sha.update(out)
        return out


# -- contract: both backends --------------------------------------------------------------------


def test_round_trip_is_byte_identical(store: ObjectStore) -> None:
    data = bytes(range(256)) * 64 + os.urandom(1000)
    info = store.put("samples/raw.bin", data, "application/octet-stream")
    assert info.key == "samples/raw.bin" and info.size == len(data)
    assert store.get("samples/raw.bin") == data
    store.put("empty", b"")
    assert store.get("empty") == b"" and store.stat("empty").size == 0


def test_overwrite_replaces_content(store: ObjectStore) -> None:
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"
    assert store.stat("k").size == 6


def test_stat_and_exists(store: ObjectStore) -> None:
    assert not store.exists("thumbnails/x.jpg")
    store.put("thumbnails/x.jpg", b"\xff\xd8jpeg", "image/jpeg")
    info = store.stat("thumbnails/x.jpg")
    assert info.key == "thumbnails/x.jpg" and info.size == 6
    assert info.content_type in (None, "image/jpeg")
    if store.name == "minio":
        assert info.content_type == "image/jpeg"
    assert store.exists("thumbnails/x.jpg")
    assert not store.exists("thumbnails")  # a prefix is not an object


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("a/b", b"x")
    store.delete("a/b")
    assert not store.exists("a/b")
    store.delete("a/b")
    store.delete("never/there")
    assert list(store.list()) == []


def test_list_is_sorted_and_filters_by_prefix(store: ObjectStore) -> None:
    assert list(store.list()) == []
    sha = hashlib.sha256(b"img").hexdigest()
    keys = ["a/b", "a.txt", "a/c/d", "ab", "b/x", blob_key(sha), "thumbnails/1.jpg"]
    for key in keys:
        store.put(key, key.encode())
    assert list(store.list()) == sorted(keys)  # "a.txt" before "a/b", as S3 orders them
    assert list(store.list("a")) == ["a.txt", "a/b", "a/c/d", "ab"]
    assert list(store.list("a/")) == ["a/b", "a/c/d"]
    assert list(store.list("a/c")) == ["a/c/d"]
    assert list(store.list("blobs/")) == [blob_key(sha)]
    assert list(store.list("zz")) == []
    store.delete("ab")
    assert "ab" not in list(store.list())


def test_list_info_has_sizes_and_times_of_writing(store: ObjectStore) -> None:
    """What garbage collection walks: the same keys as list(), each with its size and when it was
    written (to the second at worst), without a request per object."""
    assert list(store.list_info()) == []
    before = time.time()
    for key, data in (("blobs/aa/x", b"12345"), ("thumbnails/y.jpg", b"1"), ("z", b"")):
        store.put(key, data)
    infos = list(store.list_info())
    assert [i.key for i in infos] == list(store.list())
    assert {i.key: i.size for i in infos} == {"blobs/aa/x": 5, "thumbnails/y.jpg": 1, "z": 0}
    for info in infos:
        assert info.modified is not None and before - 2 <= info.modified <= time.time() + 2
    assert [i.key for i in store.list_info("thumbnails/")] == ["thumbnails/y.jpg"]


def test_missing_key_raises_object_not_found(store: ObjectStore) -> None:
    store.put("present", b"1")
    for call in (store.get, store.stat, store.open):
        with pytest.raises(ObjectNotFound) as err:
            call("absent/key")
        assert isinstance(err.value, NotFound) and err.value.status == 404


def test_put_stream_large_without_size_is_multipart(store: ObjectStore) -> None:
    total = 40 * MiB + 123  # several 5 MiB parts on S3 plus a short last one
    source = GeneratedStream(total)
    info = store.put_stream("weights/big.bin", source, content_type="application/octet-stream")
    assert info.size == total and store.stat("weights/big.bin").size == total
    got = hashlib.sha256()
    with store.open("weights/big.bin") as fh:
        while chunk := fh.read(3 * MiB):
            got.update(chunk)
    assert got.hexdigest() == source.sha.hexdigest()
    if isinstance(store, MinioStore):
        etag = store.client.stat_object(store.bucket, "weights/big.bin").etag
        assert etag.endswith("-9")  # 8 full parts + 1: really went up in parts


def test_put_stream_with_size(store: ObjectStore) -> None:
    data = os.urandom(300_000)
    info = store.put_stream("s", io.BytesIO(data), size=len(data))
    assert info.size == len(data) and store.get("s") == data
    # a stream shorter than promised stores nothing
    with pytest.raises(Invalid):
        store.put_stream("short", io.BytesIO(data[:1000]), size=5000)
    assert not store.exists("short")


def test_failed_stream_keeps_previous_object(store: ObjectStore) -> None:
    store.put("doc", b"old complete object")
    broken = GeneratedStream(12 * MiB, fail_after=6 * MiB)  # dies after the first S3 part went up
    with pytest.raises(ConnectionResetError):
        store.put_stream("doc", broken)
    assert store.get("doc") == b"old complete object"
    with pytest.raises(ConnectionResetError):
        store.put_stream("fresh", GeneratedStream(12 * MiB, fail_after=6 * MiB))
    assert not store.exists("fresh")
    assert list(store.list()) == ["doc"]


def test_open_streams_in_pieces(store: ObjectStore) -> None:
    data = os.urandom(2 * MiB + 17)
    store.put("o", data)
    pieces = []
    with store.open("o") as fh:
        while piece := fh.read(64 * 1024):
            assert len(piece) <= 64 * 1024
            pieces.append(piece)
    assert b"".join(pieces) == data and len(pieces) > 1
    assert fh.closed


def test_url(store: ObjectStore) -> None:
    data = os.urandom(5000)
    store.put("shared/img.jpg", data, "image/jpeg")
    url = store.url("shared/img.jpg", expires_s=600)
    if store.name == "filesystem":
        assert url is None
        return
    assert url is not None and "X-Amz-Signature=" in url
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.content == data


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "a/../../b",
        "a\\b",
        "a//b",
        "a/",
        "./a",
        "a/./b",
        ".hl-tmp-x",
        "a/\x00b",
        "x" * 1025,
    ],
)
def test_invalid_keys_are_refused(store: ObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.stat(key),
        lambda: store.put_stream(key, io.BytesIO(b"x")),
        lambda: store.delete(key),
        lambda: store.url(key),
        lambda: store.open(key),
    ):
        with pytest.raises(Invalid):
            call()
    assert list(store.list()) == []


def test_concurrent_writers_leave_one_complete_object(store: ObjectStore) -> None:
    size = 256 * 1024
    payloads = [bytes([i]) * size for i in range(8)]
    store.put("same", payloads[0])
    start = threading.Barrier(len(payloads) + 1)
    errors: list[BaseException] = []
    seen: list[bytes] = []
    writing = threading.Event()
    writing.set()

    def write(data: bytes) -> None:
        start.wait()
        try:
            for _ in range(3):
                store.put("same", data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        start.wait()
        while writing.is_set():
            seen.append(store.get("same"))

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    reader = threading.Thread(target=read)
    for t in [*threads, reader]:
        t.start()
    for t in threads:
        t.join(20)
    writing.clear()
    reader.join(20)
    assert not errors
    assert store.get("same") in payloads
    assert seen and all(s in payloads for s in seen)  # no reader ever saw a torn object
    assert list(store.list()) == ["same"]


# -- filesystem only ----------------------------------------------------------------------------


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_fs_crash_mid_write_leaves_nothing(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path / "store")
    with pytest.raises(ConnectionResetError):
        fs.put_stream("blobs/ab/abc", GeneratedStream(4 * MiB, fail_after=MiB))
    assert not fs.exists("blobs/ab/abc")
    assert _all_files(tmp_path / "store") == []  # no partial target, no temp file
    fs.put("blobs/ab/abc", b"ok")
    with pytest.raises(Invalid):
        fs.put_stream("blobs/ab/abc", io.BytesIO(b"12"), size=10)
    assert fs.get("blobs/ab/abc") == b"ok"
    assert _all_files(tmp_path / "store") == ["blobs/ab/abc"]


def test_fs_layout_and_no_temp_files(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path / "store")
    fs.put("thumbnails/a.jpg", b"1")
    fs.put_stream("thumbnails/a.jpg", io.BytesIO(b"22"))
    assert (tmp_path / "store" / "thumbnails" / "a.jpg").read_bytes() == b"22"
    assert _all_files(tmp_path / "store") == ["thumbnails/a.jpg"]
    assert fs.url("thumbnails/a.jpg") is None


def test_fs_open_reader_keeps_old_version_during_overwrite(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path)
    fs.put("k", b"A" * 100_000)
    with fs.open("k") as fh:
        first = fh.read(10)
        fs.put("k", b"B" * 50)
        rest = fh.read()
    assert first + rest == b"A" * 100_000
    assert fs.get("k") == b"B" * 50


def test_fs_object_and_prefix_cannot_share_a_name(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path)
    fs.put("a", b"file")
    with pytest.raises(Conflict):
        fs.put("a/b", b"below a file")
    fs.put("x/y", b"1")
    with pytest.raises(Conflict):
        fs.put("x", b"over a folder")
    assert list(fs.list()) == ["a", "x/y"]
    assert _all_files(tmp_path) == ["a", "x/y"]


def test_fs_ping(tmp_path: Path) -> None:
    FilesystemStore(tmp_path / "new" / "root").ping()  # creates the root
    assert (tmp_path / "new" / "root").is_dir() and _all_files(tmp_path) == []
    (tmp_path / "blocker").write_bytes(b"")
    with pytest.raises(OSError):
        FilesystemStore(tmp_path / "blocker" / "root").ping()


# -- minio only ---------------------------------------------------------------------------------


def test_minio_bucket_created_on_first_write(minio_settings: Settings) -> None:
    st = open_store(minio_settings)
    assert isinstance(st, MinioStore) and st.bucket == minio_settings.minio_bucket
    st.ping()  # reachable, bucket not needed yet
    assert not st.client.bucket_exists(st.bucket)
    assert list(st.list()) == [] and not st.exists("k")
    with pytest.raises(ObjectNotFound):
        st.get("k")
    st.delete("k")
    assert not st.client.bucket_exists(st.bucket)  # reads never create it
    st.put("k", b"v")
    assert st.client.bucket_exists(st.bucket) and st.get("k") == b"v"


def test_minio_bucket_creation_race(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = unique_bucket()
    stores = [MinioStore(s3_server, S3_ACCESS_KEY, S3_SECRET_KEY, bucket) for _ in range(6)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def first_write(i: int, st: MinioStore) -> None:
        start.wait()
        try:
            st.put(f"k{i}", b"x")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_write, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and len(list(stores[0].list())) == 6

    # MinIO answers a lost race with BucketAlreadyOwnedByYou (moto just says 200): simulate it.
    from minio.error import S3Error

    late = MinioStore(s3_server, S3_ACCESS_KEY, S3_SECRET_KEY, bucket)
    exists = iter([False, True])
    monkeypatch.setattr(late.client, "bucket_exists", lambda name: next(exists))

    def lost_race(name: str, location: str | None = None) -> None:
        raise S3Error(None, "BucketAlreadyOwnedByYou", "already yours", f"/{name}", "r", "h", bucket_name=name)

    monkeypatch.setattr(late.client, "make_bucket", lost_race)
    late.put("late", b"y")
    assert late.get("late") == b"y"


class _FlakyProxy(ThreadingHTTPServer):
    """Answers the next ``fail`` requests with 503 and forwards the rest to the S3 server, like a
    MinIO node restarting behind a load balancer."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail = 0
        self.failed: list[str] = []
        self.forwarded: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _FlakyHandler)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _FlakyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FlakyProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            failing = self.server.fail > 0
            self.server.fail -= failing
            (self.server.failed if failing else self.server.forwarded).append(self.command)
        if failing:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        host, port = self.server.upstream.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"connection", "keep-alive"}}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self.send_response_only(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in {"connection", "transfer-encoding", "content-length", "keep-alive"}:
                self.send_header(k, v)
        self.send_header(
            "Content-Length", resp.headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


@pytest.fixture
def flaky_proxy(s3_server: str) -> Iterator[_FlakyProxy]:
    proxy = _FlakyProxy(s3_server)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_minio_retries_transient_503(flaky_proxy: _FlakyProxy) -> None:
    st = MinioStore(
        flaky_proxy.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, unique_bucket(), region="us-east-1", part_size=MIN_PART_SIZE
    )
    st.put("warm", b"up")  # bucket made without failures

    flaky_proxy.fail = 2
    st.put("k", b"value")
    flaky_proxy.fail = 2
    assert st.get("k") == b"value"
    flaky_proxy.fail = 2  # the multipart start (POST) is retried too
    source = GeneratedStream(6 * MiB)
    st.put_stream("multi", source)
    assert flaky_proxy.failed == ["PUT", "PUT", "GET", "GET", "POST", "POST"]
    assert hashlib.sha256(st.get("multi")).hexdigest() == source.sha.hexdigest()

    retry = st.http.connection_pool_kw["retries"]
    assert retry.total == 5 and set(retry.status_forcelist) == {500, 502, 503, 504}
    assert retry.connect  # connection refused / reset is retried as well


# -- factory ------------------------------------------------------------------------------------


def test_open_store_picks_backend(tmp_path: Path, minio_settings: Settings) -> None:
    fs = open_store(Settings(home=tmp_path))
    assert isinstance(fs, FilesystemStore) and fs.root == Settings(home=tmp_path).store_root
    mn = open_store(minio_settings)
    assert isinstance(mn, MinioStore) and mn.bucket == minio_settings.minio_bucket
    with pytest.raises(ValueError):
        open_store(Settings(home=tmp_path, store="ftp"))
    with pytest.raises(ValueError):
        MinioStore("127.0.0.1:1", "a", "b", "c", part_size=MiB)
