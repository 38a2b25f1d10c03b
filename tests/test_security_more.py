"""Issue 13, items 7 and 8: each replayed as it was reported (over HTTP where it was), so that none
comes back. Each test fails on the code before its fix.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hazardlens.context import Context
from tests.fixtures.core import auth, make_image

# -- item 7: reads and authentication took SQLite's write lock -------------------------------------

DUST = {"class_key": "person", "x1": 4, "y1": 4, "x2": 40, "y2": 30}


def _db_path(ctx: Context) -> str:
    return ctx.settings.database.removeprefix("sqlite:///")


def _try_write(ctx: Context, timeout_s: float = 0.2) -> str | None:
    """What a writer elsewhere (another worker, the CLI) meets: None when its write went through,
    else SQLite's error ('database is locked'). A short busy timeout, so that a held lock shows."""
    conn = sqlite3.connect(_db_path(ctx), timeout=timeout_s, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE organisations SET name = name WHERE code = '420000'")
        conn.execute("COMMIT")
        return None
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        conn.close()


class Pause:
    """Wraps a function on the read path so that the request stops there (after the real call)
    until released: the test then knows the request is in the middle of its read."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(*args, **kwargs)
        self.entered.set()
        assert self.release.wait(30), "the test never released the paused request"
        return out


def _during(pause: Pause, request: Callable[[], Any], ctx: Context) -> tuple[str | None, Any]:
    """Start ``request`` in a thread, wait until it reaches the pause, try a write, let it finish."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", request()))
    thread.start()
    try:
        assert pause.entered.wait(30), "the request never reached the paused function"
        error = _try_write(ctx)
    finally:
        pause.release.set()
        thread.join(30)
    return error, result.get("r")


@pytest.fixture
def cast(make_key: Callable[..., str]) -> dict[str, dict[str, str]]:
    return {
        "curator": auth(make_key("420000", "curator", "cur")),
        "reviewer": auth(make_key("420000", "reviewer", "rev")),
        "admin": auth(make_key("420000", "admin", "adm")),
    }


def _approved_sample(client: Any, cast: dict[str, dict[str, str]], seed: int, status: str = "approved") -> int:
    r = client.post(
        "/v1/samples",
        headers=cast["curator"],
        data={"sector": "general"},
        files={"file": ("p.jpg", make_image(64, 48, seed=seed), "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    sid = int(r.json()["id"])
    url = f"/v1/samples/{sid}/annotations"
    assert client.put(url, headers=cast["curator"], json={"boxes": [DUST]}).status_code == 200
    if status in ("submitted", "approved"):
        assert client.post(f"{url}/submit", headers=cast["curator"]).status_code == 200
    if status == "approved":
        assert client.post(f"{url}/approve", headers=cast["reviewer"]).status_code == 200
    return sid


def test_authentication_does_not_hold_the_write_lock(
    client: Any, ctx: Context, cast: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hazardlens.serving.deps as deps

    pause = Pause(deps.authenticate)
    monkeypatch.setattr(deps, "authenticate", pause)
    error, resp = _during(pause, lambda: client.get("/v1/me", headers=cast["curator"]), ctx)
    assert error is None, f"a writer failed while a key was being checked: {error}"
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("hazardlens.datasets.library.search", "/v1/samples"),
        ("hazardlens.labeling.agreement.review_queue", "/v1/review/queue"),
        ("hazardlens.labeling.queues.my_queue", "/v1/labeling/queue"),
    ],
)
def test_reads_do_not_hold_the_write_lock(
    client: Any,
    ctx: Context,
    cast: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    path: str,
) -> None:
    _approved_sample(client, cast, seed=1, status="submitted")
    module_name, _, name = target.rpartition(".")
    module = __import__(module_name, fromlist=[name])
    pause = Pause(getattr(module, name))
    monkeypatch.setattr(module, name, pause)
    headers = cast["admin"]
    error, resp = _during(pause, lambda: client.get(path, headers=headers), ctx)
    assert error is None, f"a writer failed during GET {path}: {error}"
    assert resp.status_code == 200, resp.text


def test_a_thumbnail_rebuild_does_not_hold_the_write_lock(
    client: Any, ctx: Context, cast: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The report: a thumbnail rebuilt from the original held 'database is locked' for 0.57 s.
    import hazardlens.serving.routes.samples as samples_route
    from hazardlens.datasets import library

    sid = _approved_sample(client, cast, seed=2, status="none")
    sha = client.get(f"/v1/samples/{sid}", headers=cast["curator"]).json()["sha256"]
    ctx.store.delete(library.thumbnail_key(sha))
    pause = Pause(samples_route.make_thumbnail)
    monkeypatch.setattr(samples_route, "make_thumbnail", pause)
    error, resp = _during(pause, lambda: client.get(f"/v1/samples/{sid}/thumbnail", headers=cast["curator"]), ctx)
    assert error is None, f"a writer failed during a thumbnail rebuild: {error}"
    assert resp.status_code == 200 and resp.content[:2] == b"\xff\xd8"
    assert ctx.store.exists(library.thumbnail_key(sha))


def test_an_export_writes_its_files_outside_the_write_lock(
    client: Any, ctx: Context, cast: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hazardlens.labeling.exporters as exporters

    _approved_sample(client, cast, seed=3)
    pause = Pause(exporters.write_yolo)
    monkeypatch.setattr(exporters, "write_yolo", pause)
    error, resp = _during(
        pause, lambda: client.post("/v1/exports", headers=cast["reviewer"], json={"format": "yolo"}), ctx
    )
    assert error is None, f"a writer failed while an export wrote its files: {error}"
    assert resp.status_code == 200 and resp.headers["X-Export-Images"] == "1"
    # the export is still on the record (written in its own short transaction)
    with ctx.db.read_session() as s:
        from sqlalchemy import select

        from hazardlens.orm import AuditEvent

        assert s.scalars(select(AuditEvent).where(AuditEvent.action == "labeling.export")).first() is not None


def test_a_read_session_refuses_to_write(catalogue_ctx: Context) -> None:
    """A read path that writes by mistake fails loudly (SQLite query_only, PostgreSQL READ ONLY)
    instead of quietly taking the lock; and what it read stays readable after it closes."""
    from sqlalchemy.exc import DBAPIError

    from hazardlens.orm import Organisation

    with catalogue_ctx.db.session() as s:
        s.add(Organisation(code="440000", name="Guangdong"))
    with catalogue_ctx.db.read_session() as s:
        org = s.get(Organisation, "440000")
    assert org is not None and org.name == "Guangdong"
    with pytest.raises(DBAPIError, match="(?i)read-?only"), catalogue_ctx.db.read_session() as s:
        s.add(Organisation(code="430000", name="x"))
        s.flush()
    catalogue_ctx.db.ping()


def test_concurrent_reads_never_lock_out_a_writer(client: Any, ctx: Context, cast: dict[str, dict[str, str]]) -> None:
    """Readers (search, thumbnails rebuilt each time, the review queue, key checks) on 6 threads for
    2 s while a writer with a 50 ms busy timeout writes in a loop: not one 'database is locked', and
    every request answered."""
    from hazardlens.datasets import library

    ids = [_approved_sample(client, cast, seed=10 + i, status="submitted") for i in range(3)]
    shas = [client.get(f"/v1/samples/{i}", headers=cast["curator"]).json()["sha256"] for i in ids]
    paths = ["/v1/samples", "/v1/review/queue", "/v1/me", *[f"/v1/samples/{i}/thumbnail" for i in ids]]
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def reader(n: int) -> None:
        i = n
        while not stop.is_set():
            for sha in shas:  # each thumbnail request rebuilds it
                ctx.store.delete(library.thumbnail_key(sha))
            r = client.get(paths[i % len(paths)], headers=cast["admin"])
            with lock:
                outcomes[str(r.status_code)] += 1
            i += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    writes, locked = 0, []
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            error = _try_write(ctx, timeout_s=0.05)
            writes += 1
            if error is not None:
                locked.append(error)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not locked, f"{len(locked)} of {writes} writes failed: {locked[:3]}"
    assert writes > 10 and set(outcomes) == {"200"}, outcomes


# -- item 8: smaller findings ----------------------------------------------------------------------


def test_jobs_are_visible_to_their_organisation_only_and_without_server_paths(
    ctx: Context, client: Any, make_key: Callable[..., str], tiny_dataset: Any
) -> None:
    """B's admin listed and read A's jobs, with the server's paths and the traceback of a failure."""
    from hazardlens.jobs import JobRunner

    home = str(ctx.settings.home.resolve())

    def fails(_ctx: Context, _job: Any, _principal: Any, _progress: Any) -> dict[str, Any]:
        open(f"{home}/exports/missing/part-0.zip", "rb")  # noqa: SIM115 - the failure under test
        return {}

    client.app.state.job_runner = JobRunner(ctx, handlers={"dataset_export": fails})
    a_admin, b_admin = auth(make_key("420000", "admin", "a-adm")), auth(make_key("310000", "admin", "b-adm"))
    system = auth(make_key("000000", "admin", "sys-adm"))
    r = client.post(
        "/v1/jobs", headers=a_admin, json={"kind": "dataset_export", "params": {"dataset": tiny_dataset.ref}}
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    client.app.state.job_runner.run_pending()

    # another organisation's admin: the job does not exist for them
    assert client.get(f"/v1/jobs/{job_id}", headers=b_admin).status_code == 404
    assert client.get("/v1/jobs", headers=b_admin).json()["items"] == []
    # the owning organisation sees it, failed, with the reason but no server path or traceback
    own = client.get(f"/v1/jobs/{job_id}", headers=a_admin)
    assert own.status_code == 200 and own.json()["status"] == "failed"
    assert "FileNotFoundError" in own.json()["error"]
    listed = client.get("/v1/jobs", headers=a_admin).json()["items"]
    assert [j["id"] for j in listed] == [job_id]
    for text in (own.text, str(listed)):
        assert home not in text and "/exports/" not in text and "Traceback" not in text and 'File "' not in text
    # the system organisation (the operator's side) sees everything, the path included
    full = client.get(f"/v1/jobs/{job_id}", headers=system)
    assert full.status_code == 200 and home in full.json()["error"] and "Traceback" in full.json()["log"]
    assert [j["id"] for j in client.get("/v1/jobs", headers=system).json()["items"]] == [job_id]


def test_a_queued_job_is_resumed_after_a_restart(
    ctx: Context, client: Any, make_key: Callable[..., str], tiny_dataset: Any
) -> None:
    """Queued jobs were failed ('interrupted by restart') when the server came back; they never
    started, so the restarted server runs them."""
    from fastapi.testclient import TestClient

    from hazardlens.serving.app import create_app
    from tests.fixtures.serving import wait_for

    curator = auth(make_key("420000", "curator", "cur-jobs"))
    r = client.post(
        "/v1/jobs", headers=curator, json={"kind": "dataset_export", "params": {"dataset": tiny_dataset.ref}}
    )
    assert r.status_code == 202 and r.json()["status"] == "queued"
    job_id = r.json()["id"]
    with TestClient(create_app(ctx, start_background=True)) as restarted:  # the server after a restart

        def status() -> str:
            return str(restarted.get(f"/v1/jobs/{job_id}", headers=curator).json()["status"])

        assert wait_for(lambda: status() not in ("queued", "running"), timeout=120)
        body = restarted.get(f"/v1/jobs/{job_id}", headers=curator).json()
        assert body["status"] == "completed", body


def _one_bit_png(side: int = 10_000) -> bytes:
    """A 1-bit side x side PNG with a few lines on it, built row by row (a few KB; nothing big is
    held here, so the test process stays small too)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    width_bytes = (side + 7) // 8
    blank, line = b"\x00" + b"\xff" * width_bytes, b"\x00" + b"\x00" * width_bytes
    z = zlib.compressobj(9)
    parts = [z.compress(line if y % 1000 < 40 else blank) for y in range(side)]
    raw = b"".join(parts) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


_PEAK_SCRIPT = """
import resource, sys
from hazardlens.images import inspect_image, make_thumbnail
small = open(sys.argv[2], "rb").read()
inspect_image(small, 100_000_000)  # every lazy import done before the baseline
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = inspect_image(data, 100_000_000)
make_thumbnail(data, 100_000_000)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, info.width, info.height, info.format)
"""


def test_a_one_bit_png_is_thumbnailed_without_converting_it_whole(tmp_path: Path) -> None:
    """A 12 KB 1-bit 10000x10000 PNG cost 480 MB: decoded (100 MB, one byte a pixel), converted to
    RGB whole (300 MB), then resized. Now the decode plus a few bands: well under twice the decode."""
    import subprocess
    import sys

    from PIL import Image

    png = _one_bit_png()
    assert len(png) < 50_000
    (tmp_path / "big.png").write_bytes(png)
    (tmp_path / "small.png").write_bytes(make_image(64, 48, fmt="PNG"))
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path / "big.png"), str(tmp_path / "small.png")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    peak_mb, width, height, fmt = float(out[0]), int(out[1]), int(out[2]), out[3]
    assert (width, height, fmt) == (10_000, 10_000, "png")
    assert peak_mb < 200, f"inspecting a 1-bit 10000x10000 PNG raised the peak RSS by {peak_mb:.0f} MB"

    # and the thumbnail still shows the picture: dark lines on white, averaged, not dropped
    import io

    from hazardlens.images import make_thumbnail

    thumb = Image.open(io.BytesIO(make_thumbnail(_one_bit_png(2_000), 100_000_000)))
    assert thumb.size == (320, 320) and thumb.mode == "RGB"
    column = [thumb.getpixel((160, y))[0] for y in range(320)]
    assert min(column) < 100 and max(column) > 200


def test_assign_neither_reveals_nor_reaches_another_organisations_users(
    ctx: Context, client: Any, make_key: Callable[..., str]
) -> None:
    """B's reviewer named A's users by id, learnt their roles from the refusals, and pushed B's
    shared samples into A's curator's queue."""
    from sqlalchemy import select

    from hazardlens.orm import User

    a_curator = make_key("420000", "curator", "cur-a")
    make_key("420000", "inspector", "insp-a")
    b_reviewer, b_curator = auth(make_key("310000", "reviewer", "rev-b")), auth(make_key("310000", "curator", "cur-b"))
    r = client.post(
        "/v1/samples",
        headers=b_curator,
        data={"sector": "general", "scope": "shared"},
        files={"file": ("p.jpg", make_image(64, 48, seed=40), "image/jpeg")},
    )
    assert r.status_code == 201
    with ctx.db.read_session() as s:
        a_id = s.scalar(select(User.id).where(User.name == "cur-a"))
    assert a_id is not None
    answers = set()
    for assignee, filters in ((a_id, {}), ("cur-a", {"org": "420000"}), ("insp-a", {"org": "420000"}), (a_id + 1, {})):
        r = client.post("/v1/labeling/assign", headers=b_reviewer, json={"assignee": assignee, "filters": filters})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_user", r.text
        assert "inspector" not in r.text and "curator" not in r.text
        answers.add(r.json()["error"]["message"].split(" in ")[-1])
    assert answers == {"your organisation"}  # the same answer whether the user exists elsewhere or not
    assert client.get("/v1/labeling/queue", headers=auth(a_curator)).json()["items"] == []
    # inside the organisation it still works
    r = client.post("/v1/labeling/assign", headers=b_reviewer, json={"assignee": "cur-b"})
    assert r.status_code == 200 and r.json()["assigned"] == 1


def _zip_of(count: int) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(count):
            zf.writestr(f"n/{i}.txt", b"")
    return buf.getvalue()


def test_an_archive_with_too_many_entries_is_refused_whole(client: Any, make_key: Callable[..., str]) -> None:
    """100,000 entries took 83 MB and answered 7.8 MB; now over 10,000 is one clear 413."""
    from hazardlens.datasets.bulk import MAX_ARCHIVE_ENTRIES

    curator = auth(make_key("420000", "curator", "cur-zip"))
    started = time.monotonic()
    r = client.post(
        "/v1/samples/archive",
        headers=curator,
        data={"sector": "general"},
        files={"file": ("many.zip", _zip_of(MAX_ARCHIVE_ENTRIES + 1), "application/zip")},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "archive_too_large", r.text[:300]
    assert f"{MAX_ARCHIVE_ENTRIES:,}" in r.json()["error"]["message"] and len(r.content) < 1000
    assert time.monotonic() - started < 60
    # at the limit it is read (and these entries are skipped as not images)
    r = client.post(
        "/v1/samples/archive",
        headers=curator,
        data={"sector": "general"},
        files={"file": ("ok.zip", _zip_of(3), "application/zip")},
    )
    assert r.status_code == 200, r.text


def test_an_inspector_cannot_restore_a_deleted_sample(client: Any, make_key: Callable[..., str]) -> None:
    """A curator deleted a private photo; an inspector uploaded the same bytes with scope=shared and
    the sample came back, shared with every organisation."""
    curator, inspector = auth(make_key("420000", "curator", "cur-del")), auth(make_key("420000", "inspector", "ins"))
    photo = make_image(64, 48, seed=41)
    r = client.post(
        "/v1/samples", headers=curator, data={"sector": "general"}, files={"file": ("p.jpg", photo, "image/jpeg")}
    )
    sid = r.json()["id"]
    assert client.delete(f"/v1/samples/{sid}", headers=curator).status_code == 200
    r = client.post(
        "/v1/samples",
        headers=inspector,
        data={"sector": "general", "scope": "shared"},
        files={"file": ("p.jpg", photo, "image/jpeg")},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert client.get(f"/v1/samples/{sid}", headers=curator).status_code == 404  # still deleted
    other = auth(make_key("310000", "curator", "cur-other"))
    assert client.get(f"/v1/samples/{sid}", headers=other).status_code == 404  # and not shared
    # a curator may bring it back (as before)
    r = client.post(
        "/v1/samples", headers=curator, data={"sector": "general"}, files={"file": ("p.jpg", photo, "image/jpeg")}
    )
    assert r.status_code == 201 and r.json()["id"] == sid


def test_request_ids_are_bounded_and_a_500_sends_its_own(
    ctx: Context, client: Any, make_key: Callable[..., str]
) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from hazardlens.orm import AuditEvent
    from hazardlens.serving.app import create_app

    curator = auth(make_key("420000", "curator", "cur-rid"))
    junk = "x" * 10_000 + "\u202e"
    for seed, sent in enumerate((junk, "a b", "-starts-with-dash", "ok-id_1.2:3")):
        r = client.post(
            "/v1/samples",
            headers={**curator, "X-Request-ID": sent.encode()},
            data={"sector": "general"},
            files={"file": ("p.jpg", make_image(64, 48, seed=60 + seed), "image/jpeg")},
        )
        assert r.status_code == 201, r.text
        rid = r.headers["X-Request-ID"]
        assert rid == sent if sent == "ok-id_1.2:3" else (len(rid) == 32 and rid != sent)
        with ctx.db.read_session() as s:
            stored = s.scalars(select(AuditEvent.request_id).where(AuditEvent.sample_id == r.json()["id"])).first()
        assert stored == rid

    app = create_app(ctx, start_background=False)

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("unexpected")

    with TestClient(app, raise_server_exceptions=False) as raw:
        r = raw.get("/boom", headers={"X-Request-ID": "trace-500"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
        assert r.headers.get("X-Request-ID") == "trace-500"
        r = raw.get("/boom")
        assert r.status_code == 500 and len(r.headers.get("X-Request-ID", "")) == 32


def test_record_numbers_have_one_spelling(api: Any, make_key: Callable[..., str]) -> None:
    """Full-width digits, zero-width and bidi characters made look-alike records."""
    client = api
    from urllib.parse import quote

    service = auth(make_key("420000", "service", "svc-rec"))
    plain, wide = "鄂应急检〔2026〕3号", "鄂应急检〔２０２６〕３号"

    def post(record: str, seed: int) -> Any:
        return client.post(
            f"/v1/inspections/{quote(record)}/photos",
            headers=service,
            data={"enterprise_id": "E1", "sector": "general"},
            files={"file": ("p.jpg", make_image(64, 48, seed=seed), "image/jpeg")},
        )

    r = post(wide, 50)
    assert r.status_code == 201, r.text
    assert post(plain, 53).status_code == 201
    for record in (plain, wide):  # one record, whichever way it was typed
        got = client.get(f"/v1/inspections/{quote(record)}", headers=service)
        assert got.status_code == 200 and got.json()["record_no"] == plain, got.text
        assert len(got.json()["photos"]) == 2
    for hidden in ("鄂应急检〔2026〕3\u200b号", "\u202e鄂应急检〔2026〕3号", "鄂应急检\u2066〔2026〕3号"):
        r = post(hidden, 51)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_record_no", r.text
        assert client.get(f"/v1/inspections/{quote(hidden)}", headers=service).status_code == 404
    # a sample's free-text inspection_record gets the same spelling (invisible characters dropped)
    curator = auth(make_key("420000", "curator", "cur-rec"))
    r = client.post(
        "/v1/samples",
        headers=curator,
        data={"sector": "general", "inspection_record": "鄂应急检〔２０２６〕\u200b３号"},
        files={"file": ("p.jpg", make_image(64, 48, seed=52), "image/jpeg")},
    )
    assert r.status_code == 201 and r.json()["inspection_record"] == plain, r.text


def test_readyz_is_not_ready_below_the_free_space_threshold(ctx: Context) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from hazardlens.serving.app import create_app
    from hazardlens.serving.routes.health import disk_space

    free = shutil.disk_usage(ctx.settings.home).free
    assert "bytes free" in disk_space(ctx)
    full = Context(ctx.settings.with_(min_free_bytes=free * 2))  # this disk, as if nearly full
    with TestClient(create_app(full, start_background=False)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["disk"] == "failed", r.text
        assert str(ctx.settings.home) not in r.text  # unauthenticated: which check, not the details
    full.close()
    with TestClient(create_app(ctx, start_background=False)) as c:
        assert c.get("/readyz").json()["checks"]["disk"] == "ok"
