"""Catalogue suite for the sample library: runs on SQLite and on PostgreSQL (``catalogue_ctx``)."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from sqlalchemy import func, select

from hazardlens.audit import history
from hazardlens.auth import Principal, ensure_user
from hazardlens.context import Context
from hazardlens.datasets import library as lib
from hazardlens.datasets.library import IngestMeta, SampleFilter
from hazardlens.errors import Forbidden, Invalid, NotFound, TooLarge
from hazardlens.orm import NearDuplicate, Sample, SampleClass
from hazardlens.store import blob_key
from tests.fixtures.core import make_image


def principal(ctx: Context, org: str = "420000", role: str = "curator", name: str | None = None) -> Principal:
    with ctx.db.session() as s:
        user = ensure_user(s, org, name or f"{role}-{org}", role)
        return Principal(user.id, user.name, user.org_code, user.role)


def ingest(ctx: Context, who: Principal, data: bytes, **meta: object) -> lib.IngestResult:
    meta.setdefault("sector", "general")
    with ctx.db.session() as s:
        return lib.ingest(ctx, s, who, data, IngestMeta(**meta))  # type: ignore[arg-type]


def count(ctx: Context, *where: object) -> int:
    with ctx.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Sample).where(*where)) or 0)


def reencode(data: bytes, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_ingest_stores_bytes_thumbnail_row_and_audit(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    data = make_image(320, 240, seed=1)
    res = ingest(ctx, who, data, camera_id="cam-1", tags=["钢铁", "ladle", "ladle", " "], original_name="a.jpg")
    assert not res.deduplicated and res.near_duplicates == []
    s = res.sample
    assert (s.width, s.height, s.format, s.size_bytes, s.org_code, s.scope) == (
        320,
        240,
        "jpeg",
        len(data),
        "420000",
        "private",
    )
    assert s.tags == ["钢铁", "ladle"]
    assert ctx.store.get(blob_key(s.sha256)) == data
    assert Image.open(io.BytesIO(ctx.store.get(lib.thumbnail_key(s.sha256)))).format == "JPEG"
    with ctx.db.session() as session:
        events = history(session, sample_id=s.id)
        assert [e.action for e in events] == ["sample.create"]
        assert events[0].before is None and events[0].after["sha256"] == s.sha256
        assert events[0].actor == who.name and events[0].org_code == "420000"
        d = lib.sample_dict(lib.get_sample(session, who, s.id))
    assert d["uploader"] == who.name and d["camera_id"] == "cam-1" and d["original_name"] == "a.jpg"
    assert d["created_at"].endswith("+00:00")


def test_unknown_sector_and_bad_meta_are_refused_with_nothing_stored(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    for meta, code in (
        ({"sector": "bakery"}, "unknown_sector"),
        ({"scope": "public"}, "invalid_scope"),
        ({"source": "web"}, "invalid_source"),
        ({"site_id": "x" * 101}, "invalid_meta"),
    ):
        with pytest.raises(Invalid) as err:
            ingest(ctx, who, make_image(seed=2), **meta)
        assert err.value.code == code
    assert count(ctx) == 0
    assert list(ctx.store.list("blobs/")) == []


def test_same_bytes_twice_is_one_sample(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    data = make_image(seed=3)
    first = ingest(ctx, who, data)
    second = ingest(ctx, who, data, camera_id="other")
    assert second.deduplicated and second.sample.id == first.sample.id
    assert second.sample.camera_id is None  # metadata of the first upload is kept
    assert count(ctx) == 1


def test_concurrent_uploads_of_the_same_bytes_make_one_row(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    data = make_image(seed=4)
    barrier = threading.Barrier(8)
    results: list[lib.IngestResult] = []
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            prepared = lib.prepare(ctx, data, IngestMeta(sector="general"))
            barrier.wait(timeout=30)  # all eight reach the catalogue together
            with ctx.db.session() as s:
                results.append(lib.record(ctx, s, who, prepared))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len({r.sample.id for r in results}) == 1
    assert sorted(r.deduplicated for r in results) == [False] + [True] * 7
    assert count(ctx) == 1
    with ctx.db.session() as s:
        assert [e.action for e in history(s, sample_id=results[0].sample.id)] == ["sample.create"]


def test_near_duplicates_are_linked_and_grouped(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    original = make_image(480, 360, seed=5)
    a = ingest(ctx, who, original)
    unrelated = ingest(ctx, who, make_image(480, 360, seed=6))
    b = ingest(ctx, who, reencode(original, 30))
    assert not b.deduplicated and b.near_duplicates == [a.sample.id]
    c = ingest(ctx, who, reencode(original, 60))
    assert sorted(c.near_duplicates) == sorted([a.sample.id, b.sample.id])
    assert unrelated.near_duplicates == []
    with ctx.db.session() as s:
        groups = dict(s.execute(select(Sample.id, Sample.dup_group)).all())
        links = set(s.execute(select(NearDuplicate.sample_id, NearDuplicate.other_id)).all())
        assert groups == {
            a.sample.id: a.sample.id,
            unrelated.sample.id: None,
            b.sample.id: a.sample.id,
            c.sample.id: a.sample.id,
        }
        ids = (a.sample.id, b.sample.id, c.sample.id)
        assert links == {(x, y) for x in ids for y in ids if x != y}
        assert {i for i, _ in lib.near_duplicates(s, who, a.sample.id)} == {b.sample.id, c.sample.id}
        items, _ = lib.search(s, who, SampleFilter(dup_group=a.sample.id))
        assert {x.id for x in items} == set(ids)
        events = [e.action for e in history(s, sample_id=a.sample.id)]
        assert events == ["sample.create", "sample.dup_group"]


def test_near_duplicate_groups_merge_to_the_smallest_id(catalogue_ctx: Context) -> None:
    """Two separate groups bridged by a new sample become one group, named by its smallest id.

    Perceptual hashes are set directly, so that the distances are exact (threshold 6)."""
    ctx = catalogue_ctx
    who = principal(ctx)

    def add(seed: int, phash: int) -> lib.IngestResult:
        prepared = lib.prepare(ctx, make_image(seed=seed), IngestMeta(sector="general"))
        prepared = replace(prepared, info=replace(prepared.info, phash=phash))
        with ctx.db.session() as s:
            return lib.record(ctx, s, who, prepared)

    a1 = add(40, 0x0).sample.id
    b1 = add(41, 0xFFF).sample.id  # 12 bits away from a1: no link
    a2 = add(42, 0x1).sample.id
    b2 = add(43, 0xFFE).sample.id
    far = add(44, -1).sample.id  # all 64 bits set
    bridge = add(45, 0x3F)  # 6 from a1 and b1, 5 from a2, 7 from b2
    assert set(bridge.near_duplicates) == {a1, a2, b1}
    with ctx.db.session() as s:
        groups = dict(s.execute(select(Sample.id, Sample.dup_group)).all())
        events = [e for e in history(s, sample_id=b2) if e.action == "sample.dup_group"]
    assert groups == {a1: a1, a2: a1, b1: a1, b2: a1, bridge.sample.id: a1, far: None}
    assert events[-1].before == {"dup_group": b1} and events[-1].after == {"dup_group": a1}


def test_tenancy_private_is_invisible_and_shared_is_visible(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    hubei, hunan = principal(ctx, "420000"), principal(ctx, "430000")
    private = ingest(ctx, hubei, make_image(seed=10)).sample
    shared = ingest(ctx, hubei, make_image(seed=11), scope="shared").sample
    with ctx.db.session() as s:
        with pytest.raises(NotFound):
            lib.get_sample(s, hunan, private.id)
        assert lib.get_sample(s, hunan, shared.id).id == shared.id
        items, _ = lib.search(s, hunan, SampleFilter())
        assert [x.id for x in items] == [shared.id]
        with pytest.raises(NotFound):
            lib.near_duplicates(s, hunan, private.id)
    # The same bytes as another organisation's private sample: a sample of its own.
    own = ingest(ctx, hunan, make_image(seed=10))
    assert not own.deduplicated and own.sample.id != private.id and own.sample.org_code == "430000"
    # ... but not linked to the private one it cannot see (same picture, distance 0).
    assert own.near_duplicates == []
    # The same bytes as a shared sample: that sample.
    again = ingest(ctx, hunan, make_image(seed=11))
    assert again.deduplicated and again.sample.id == shared.id
    # A near-duplicate of a shared sample is linked to it across organisations.
    near = ingest(ctx, hunan, reencode(make_image(seed=11), 40))
    assert near.near_duplicates == [shared.id]
    # Deleting is for the owner only, and another organisation's private sample stays not found.
    hunan_admin = principal(ctx, "430000", "admin")
    with ctx.db.session() as s, pytest.raises(Forbidden):
        lib.soft_delete(s, hunan_admin, shared.id)
    with ctx.db.session() as s, pytest.raises(NotFound):
        lib.soft_delete(s, hunan_admin, private.id)


def test_search_filters(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    other = principal(ctx, "430000")
    when = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    a = ingest(
        ctx,
        who,
        make_image(seed=20),
        sector="dust",
        camera_id="c1",
        site_id="s1",
        enterprise_id="e1",
        tags=["积尘", "vent"],
        captured_at=when,
        source="inspection",
    ).sample
    b = ingest(
        ctx,
        who,
        make_image(seed=21),
        sector="steel",
        camera_id="c2",
        site_id="s1",
        enterprise_id="e2",
        tags=["ladle"],
        captured_at=when + timedelta(days=3),
        scope="shared",
    ).sample
    c = ingest(ctx, other, make_image(seed=22), sector="dust", scope="shared", tags=["vent"]).sample
    with ctx.db.session() as s:
        s.add(SampleClass(sample_id=a.id, class_key="dust_accumulation"))
        s.get(Sample, b.id).annotation_status = "approved"

    def ids(**kw: object) -> set[int]:
        with ctx.db.session() as s:
            items, _ = lib.search(s, who, SampleFilter(**kw))  # type: ignore[arg-type]
            return {x.id for x in items}

    assert ids() == {a.id, b.id, c.id}
    assert ids(sector="dust") == {a.id, c.id}
    assert ids(camera="c1") == {a.id}
    assert ids(site="s1") == {a.id, b.id}
    assert ids(enterprise="e2") == {b.id}
    assert ids(tag="vent") == {a.id, c.id}
    assert ids(tag="积尘") == {a.id}
    assert ids(tag="ven") == set()
    assert ids(org="430000") == {c.id}
    assert ids(scope="shared") == {b.id, c.id}
    assert ids(source="inspection") == {a.id}
    assert ids(status="approved") == {b.id}
    assert ids(class_key="dust_accumulation") == {a.id}
    assert ids(captured_from=lib.parse_when("2024-05-02")) == {b.id}
    assert ids(captured_to=lib.parse_when("2024-05-01", end=True)) == {a.id}
    assert ids(
        captured_from=lib.parse_when("2024-05-01T08:00:00Z"), captured_to=lib.parse_when("2024-05-04T16:00:00+08:00")
    ) == {a.id, b.id}
    today = datetime.now(UTC).date().isoformat()
    assert ids(created_from=lib.parse_when(today), created_to=lib.parse_when(today, end=True)) == {a.id, b.id, c.id}
    assert ids(created_to=lib.parse_when("2000-01-01", end=True)) == set()
    assert ids(sector="dust", tag="vent", org="420000") == {a.id}
    with pytest.raises(Invalid):
        lib.parse_when("yesterday")


def test_keyset_pagination_has_no_repeats_or_gaps(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    made = [ingest(ctx, who, make_image(16, 16, seed=100 + i, pattern="flat")).sample.id for i in range(7)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        with ctx.db.session() as s:
            items, cursor = lib.search(s, who, SampleFilter(), limit=3, cursor=cursor)
        seen += [x.id for x in items]
        pages += 1
        if pages == 1:  # a sample added while paging must not shift later pages
            ingest(ctx, who, make_image(16, 16, seed=999, pattern="flat"))
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(made, reverse=True)
    for bad in ("nonsense", "czE6", "eDox"):
        with ctx.db.session() as s, pytest.raises(Invalid):
            lib.search(s, who, SampleFilter(), cursor=bad)
    with ctx.db.session() as s, pytest.raises(Invalid):
        lib.search(s, who, SampleFilter(), limit=1001)


def test_soft_delete_hides_keeps_history_and_reupload_restores(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    who = principal(ctx)
    data = make_image(seed=30)
    sample = ingest(ctx, who, data, camera_id="c9").sample
    inspector = principal(ctx, role="inspector")
    with ctx.db.session() as s, pytest.raises(Forbidden):
        lib.soft_delete(s, inspector, sample.id)
    with ctx.db.session() as s:
        deleted = lib.soft_delete(s, who, sample.id)
        assert deleted.deleted_at is not None
    with ctx.db.session() as s:
        with pytest.raises(NotFound):
            lib.get_sample(s, who, sample.id)
        assert lib.search(s, who, SampleFilter())[0] == []
        assert lib.get_sample(s, who, sample.id, include_deleted=True).id == sample.id
        events = history(s, sample_id=sample.id)
        assert [e.action for e in events] == ["sample.create", "sample.delete"]
        assert events[1].before["deleted_at"] is None and events[1].after["deleted_at"] is not None
    assert ctx.store.get(blob_key(sample.sha256)) == data  # the bytes stay for the record
    again = ingest(ctx, who, data, camera_id="c10")
    assert again.restored and not again.deduplicated and again.sample.id == sample.id
    assert again.sample.camera_id == "c10" and again.sample.deleted_at is None
    assert count(ctx) == 1
    with ctx.db.session() as s:
        events = history(s, sample_id=sample.id)
        assert [e.action for e in events][-1] == "sample.restore"
        assert events[-1].before["camera_id"] == "c9" and events[-1].after["camera_id"] == "c10"


def test_size_limit_and_bad_bytes_leave_nothing(catalogue_ctx: Context) -> None:
    ctx = Context(catalogue_ctx.settings.with_(max_upload_bytes=2_000))
    try:
        who = principal(ctx)
        with pytest.raises(TooLarge):
            ingest(ctx, who, make_image(200, 200, seed=1))
        with pytest.raises(Invalid):
            ingest(ctx, who, make_image(16, 16, pattern="flat")[:-40])
        assert count(ctx) == 0 and list(ctx.store.list("")) == []
    finally:
        ctx.close()
