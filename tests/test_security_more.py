"""Issue 13, items 7 and 8: each replayed as it was reported (over HTTP where it was), so that none
comes back. Each test fails on the code before its fix.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
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
