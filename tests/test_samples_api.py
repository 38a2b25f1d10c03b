"""/v1/samples over HTTP: the real app, a real catalogue and store (tests/fixtures/core.py)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from hazardlens.context import Context
from hazardlens.orm import Sample
from hazardlens.settings import Settings
from tests.fixtures.core import auth, make_image

LIMIT = 200_000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A small byte limit, so that 'too large' needs no large test file."""
    return Settings(home=tmp_path / "home", max_upload_bytes=LIMIT)


def upload(client: Any, key: str | None, data: bytes, name: str = "photo.jpg", **form: str) -> Any:
    form.setdefault("sector", "general")
    headers = auth(key) if key else {}
    return client.post(
        "/v1/samples", headers=headers, files={"file": (name, data, "application/octet-stream")}, data=form
    )


def rows(ctx: Context) -> int:
    with ctx.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Sample)) or 0)


def error(resp: Any) -> tuple[int, str]:
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert body["error"]["message"]
    return resp.status_code, body["error"]["code"]


def test_key_required(client: Any, make_key: Callable[..., str]) -> None:
    assert error(upload(client, None, make_image())) == (401, "missing_key")
    assert error(upload(client, "hl_nope_nope", make_image())) == (401, "invalid_key")
    assert error(client.get("/v1/samples")) == (401, "missing_key")
    assert error(client.get("/v1/samples/1/image")) == (401, "missing_key")


def test_upload_then_same_bytes_is_deduplicated(client: Any, ctx: Context, make_key: Callable[..., str]) -> None:
    key = make_key("420000", "inspector")
    data = make_image(320, 240, seed=1)
    first = upload(
        client,
        key,
        data,
        camera_id="cam-7",
        tags="积尘, vent",
        inspection_record="JC-2024-001",
        captured_at="2024-05-01T08:30:00+08:00",
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["deduplicated"] is False and body["near_duplicates"] == []
    assert (body["width"], body["height"], body["format"], body["size_bytes"]) == (320, 240, "jpeg", len(data))
    assert body["tags"] == ["积尘", "vent"] and body["camera_id"] == "cam-7" and body["source"] == "inspection"
    assert body["captured_at"] == "2024-05-01T00:30:00+00:00" and body["original_name"] == "photo.jpg"
    assert body["uploader"] == "inspector-420000" and len(body["sha256"]) == 64
    second = upload(client, key, data)
    assert second.status_code == 200
    assert second.json()["deduplicated"] is True and second.json()["id"] == body["id"]
    assert rows(ctx) == 1
    got = client.get(f"/v1/samples/{body['id']}", headers=auth(key))
    assert got.status_code == 200 and got.json()["sha256"] == body["sha256"]


def test_original_bytes_and_thumbnail(client: Any, make_key: Callable[..., str]) -> None:
    key = make_key()
    data = make_image(64, 48, seed=2, exif_orientation=6)
    sid = upload(client, key, data).json()["id"]
    sample = client.get(f"/v1/samples/{sid}", headers=auth(key)).json()
    assert (sample["width"], sample["height"]) == (48, 64)  # EXIF-oriented
    img = client.get(f"/v1/samples/{sid}/image", headers=auth(key))
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert img.content == data  # byte for byte, orientation tag and all
    thumb = client.get(f"/v1/samples/{sid}/thumbnail", headers=auth(key))
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (48, 64)


def test_png_webp_heic_keep_their_content_type(client: Any, make_key: Callable[..., str]) -> None:
    key = make_key()
    for fmt, mime in (("PNG", "image/png"), ("WEBP", "image/webp"), ("HEIF", "image/heic")):
        data = make_image(40, 30, fmt=fmt, seed=3)
        resp = upload(client, key, data, name=f"x.{fmt.lower()}")
        assert resp.status_code == 201, resp.text
        img = client.get(f"/v1/samples/{resp.json()['id']}/image", headers=auth(key))
        assert img.headers["content-type"] == mime and img.content == data


def test_bad_inputs_answer_an_error_and_leave_nothing(client: Any, ctx: Context, make_key: Callable[..., str]) -> None:
    key = make_key()
    good = make_image(100, 80, seed=5)
    big = good + b"\0" * LIMIT  # a valid JPEG with trailing bytes: refused on size before decoding
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("a.jpg", good)
    cases = [
        (b"", "general", (422, "empty_file")),
        (b"just some text", "general", (415, "not_an_image")),
        (make_image(32, 32, fmt="GIF"), "general", (415, "unsupported_format")),
        (good[: len(good) // 2], "general", (422, "truncated_image")),
        (big, "general", (413, "file_too_large")),
        (zipped.getvalue(), "general", (415, "not_an_image")),
        (good, "bakery", (422, "unknown_sector")),
    ]
    for data, sector, expected in cases:
        assert error(upload(client, key, data, sector=sector)) == expected
    assert error(upload(client, key, good, scope="everyone")) == (422, "invalid_scope")
    assert error(upload(client, key, good, captured_at="last tuesday")) == (422, "invalid_date")
    missing = client.post("/v1/samples", headers=auth(key), data={"sector": "general"})
    assert error(missing)[0] == 422
    assert rows(ctx) == 0
    assert list(ctx.store.list("")) == []  # no blob, no thumbnail


def test_permissions_and_other_org_private_is_404(client: Any, make_key: Callable[..., str]) -> None:
    hubei, hunan = make_key("420000", "curator"), make_key("430000", "admin")
    private = upload(client, hubei, make_image(seed=6)).json()["id"]
    shared = upload(client, hubei, make_image(seed=7), scope="shared").json()["id"]
    for path in ("", "/image", "/thumbnail", "/near-duplicates", "/history"):
        assert error(client.get(f"/v1/samples/{private}{path}", headers=auth(hunan))) == (404, "not_found")
    assert error(client.delete(f"/v1/samples/{private}", headers=auth(hunan))) == (404, "not_found")
    assert error(client.get("/v1/samples/999999", headers=auth(hubei))) == (404, "not_found")
    assert client.get(f"/v1/samples/{shared}", headers=auth(hunan)).status_code == 200
    assert error(client.delete(f"/v1/samples/{shared}", headers=auth(hunan))) == (403, "not_owner")
    listed = client.get("/v1/samples", headers=auth(hunan)).json()
    assert [x["id"] for x in listed["items"]] == [shared]
    # A service key may upload but not delete; an inspector may not read the audit history.
    service, inspector = make_key("420000", "service"), make_key("420000", "inspector")
    assert error(client.delete(f"/v1/samples/{private}", headers=auth(service))) == (403, "forbidden")
    assert error(client.get(f"/v1/samples/{private}/history", headers=auth(inspector))) == (403, "forbidden")


def test_search_filters_and_pagination(client: Any, make_key: Callable[..., str]) -> None:
    key = make_key()
    made = []
    for i in range(5):
        made.append(
            upload(
                client,
                key,
                make_image(16, 16, seed=50 + i, pattern="flat"),
                sector="dust" if i % 2 else "steel",
                camera_id=f"c{i % 2}",
                tags=f"t{i}",
            ).json()["id"]
        )
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/samples", headers=auth(key), params=params).json()
        seen += [x["id"] for x in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(made, reverse=True)
    dust = client.get("/v1/samples", headers=auth(key), params={"sector": "dust", "camera": "c1"}).json()
    assert {x["id"] for x in dust["items"]} == {made[1], made[3]}
    assert [x["id"] for x in client.get("/v1/samples", headers=auth(key), params={"tag": "t4"}).json()["items"]] == [
        made[4]
    ]
    assert client.get("/v1/samples", headers=auth(key), params={"class": "head"}).json()["items"] == []
    today = client.get(f"/v1/samples/{made[0]}", headers=auth(key)).json()["created_at"][:10]
    dated = client.get("/v1/samples", headers=auth(key), params={"created_from": today, "created_to": today})
    assert len(dated.json()["items"]) == 5
    assert error(client.get("/v1/samples", headers=auth(key), params={"limit": 1001}))[0] == 422
    assert error(client.get("/v1/samples", headers=auth(key), params={"cursor": "zzz"})) == (422, "invalid_cursor")
    assert error(client.get("/v1/samples", headers=auth(key), params={"captured_from": "May"})) == (422, "invalid_date")
    assert len(client.get("/v1/samples", headers=auth(key), params={"limit": 1000}).json()["items"]) == 5


def test_near_duplicates_delete_and_history(client: Any, make_key: Callable[..., str]) -> None:
    key = make_key("420000", "curator")
    original = make_image(320, 240, seed=8)
    buf = io.BytesIO()
    Image.open(io.BytesIO(original)).save(buf, "JPEG", quality=30)
    a = upload(client, key, original).json()
    b = upload(client, key, buf.getvalue())
    assert b.status_code == 201 and b.json()["near_duplicates"] == [a["id"]]
    near = client.get(f"/v1/samples/{a['id']}/near-duplicates", headers=auth(key)).json()["items"]
    assert [(x["id"], x["distance"] <= 6) for x in near] == [(b.json()["id"], True)]
    gone = client.delete(f"/v1/samples/{a['id']}", headers=auth(key))
    assert gone.status_code == 200 and gone.json()["deleted_at"]
    assert error(client.get(f"/v1/samples/{a['id']}", headers=auth(key))) == (404, "not_found")
    assert client.get(f"/v1/samples/{b.json()['id']}/near-duplicates", headers=auth(key)).json()["items"] == []
    hist = client.get(f"/v1/samples/{a['id']}/history", headers=auth(key)).json()["items"]
    assert [e["action"] for e in hist] == ["sample.create", "sample.dup_group", "sample.delete"]
    assert hist[-1]["before"]["deleted_at"] is None and hist[-1]["after"]["deleted_at"]
    assert hist[0]["request_id"]  # the request that made it


def test_zip_archive_with_escaping_entries(client: Any, ctx: Context, make_key: Callable[..., str]) -> None:
    key = make_key()
    good, other = make_image(64, 48, seed=9), make_image(64, 48, seed=10)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("site/a.jpg", good)
        zf.writestr("../evil.jpg", other)
        zf.writestr("/etc/abs.jpg", other)
        zf.writestr("site/..\\..\\win.jpg", other)
        zf.writestr("__MACOSX/site/._a.jpg", b"\x00\x05\x16\x07")
        zf.writestr("notes.txt", b"hello")
        zf.writestr("broken.jpg", good[:100])
        zf.writestr("site/again.jpg", good)
    resp = client.post(
        "/v1/samples/archive",
        headers=auth(key),
        data={"sector": "general", "camera_id": "c1"},
        files={"file": ("batch.zip", buf.getvalue(), "application/zip")},
    )
    assert resp.status_code == 200, resp.text
    summary = resp.json()
    assert (summary["stored"], summary["deduplicated"]) == (1, 1)
    refused = {r["name"].split("!", 1)[1]: r["code"] for r in summary["refused"]}
    assert refused == {
        "../evil.jpg": "unsafe_path",
        "/etc/abs.jpg": "unsafe_path",
        "site/..\\..\\win.jpg": "unsafe_path",
        "broken.jpg": "truncated_image",
    }
    assert {r["name"].split("!", 1)[1] for r in summary["skipped"]} == {"__MACOSX/site/._a.jpg", "notes.txt"}
    assert rows(ctx) == 1
    sample = client.get(f"/v1/samples/{summary['sample_ids'][0]}", headers=auth(key)).json()
    assert sample["original_name"] == "site/a.jpg" and sample["camera_id"] == "c1"
    assert error(
        client.post(
            "/v1/samples/archive",
            headers=auth(key),
            data={"sector": "general"},
            files={"file": ("x.zip", b"not a zip", "application/zip")},
        )
    ) == (422, "bad_archive")
    assert error(
        client.post(
            "/v1/samples/archive",
            headers=auth(key),
            data={"sector": "nope"},
            files={"file": ("x.zip", buf.getvalue(), "application/zip")},
        )
    ) == (422, "unknown_sector")
