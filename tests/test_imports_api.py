"""/v1/imports and /v1/exports over HTTP: zip in, summary out; zip out; roles and unsafe archives."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.core import auth, make_image

PPE_MAP = "mapping:\n  person: person\n  helmet: helmet\n  objects: ignore\n"


def _coco_zip(wrap: str = "") -> bytes:
    """A Roboflow-style COCO export (json beside the images), optionally inside a wrapping folder."""
    doc = {
        "categories": [{"id": 0, "name": "objects"}, {"id": 1, "name": "person"}, {"id": 2, "name": "helmet"}],
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 80, "height": 60},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": ["5", 6, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [8, 6, 10, 8]},
        ],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{wrap}_annotations.coco.json", json.dumps(doc))
        zf.writestr(f"{wrap}a.jpg", make_image(80, 60, seed=41))
        zf.writestr(f"{wrap}b.jpg", make_image(64, 48, seed=42))
    return buf.getvalue()


@pytest.fixture
def keys(make_key: Callable[..., str]) -> dict[str, dict[str, str]]:
    return {
        "admin": auth(make_key("420000", "admin", "adm")),
        "curator": auth(make_key("420000", "curator", "cur")),
        "reviewer": auth(make_key("420000", "reviewer", "rev")),
        "inspector": auth(make_key("420000", "inspector", "insp")),
    }


def _post_import(client: Any, headers: dict[str, str], data: bytes, **form: Any) -> Any:
    fields = {"format": "coco", "class_map": PPE_MAP, "sector": "general", **form}
    return client.post(
        "/v1/imports", headers=headers, data=fields, files={"file": ("export.zip", data, "application/zip")}
    )


def test_import_zip_then_export_round_trip(client: Any, keys: dict[str, dict[str, str]]) -> None:
    resp = _post_import(client, keys["admin"], _coco_zip("export/"), approved="true")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["stored"], body["revisions"], body["boxes"], body["negatives"]) == (2, 2, 2, 1)
    assert body["status"] == "approved" and body["repairs"] == {"string_bbox": 1}
    assert body["unused_categories"] == ["objects"] and body["source"].startswith("export.zip!")
    again = _post_import(client, keys["admin"], _coco_zip("export/"), approved="true").json()
    assert (again["stored"], again["deduplicated"], again["revisions"]) == (0, 2, 0)

    resp = client.post("/v1/exports", headers=keys["reviewer"], json={"format": "coco"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip" and resp.headers["x-export-images"] == "2"
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        names = zf.namelist()
        doc = json.loads(zf.read("annotations.json"))
    assert sorted(n for n in names if n.startswith("images/")) == sorted(
        f"images/{im['file_name']}" for im in doc["images"]
    )
    assert sorted(a["bbox"] for a in doc["annotations"]) == [[5, 6, 30, 40], [8, 6, 10, 8]]

    # The exported YOLO zip imports back as it is: same bytes, same labels, so nothing changes.
    yolo = client.post(
        "/v1/exports", headers=keys["admin"], json={"format": "yolo", "filters": {"class_key": "helmet"}}
    )
    assert yolo.status_code == 200 and yolo.headers["x-export-images"] == "1"
    with zipfile.ZipFile(io.BytesIO(yolo.content)) as zf:
        assert "path:" not in zf.read("data.yaml").decode()  # relative to data.yaml once unpacked
    body = _post_import(client, keys["curator"], yolo.content, format="yolo", class_map=PPE_MAP).json()
    assert (body["deduplicated"], body["unchanged"]) == (1, 1)


def test_import_roles_and_refusals(client: Any, keys: dict[str, dict[str, str]]) -> None:
    data = _coco_zip()
    resp = _post_import(client, keys["curator"], data, approved="true")
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    assert _post_import(client, keys["reviewer"], data).status_code == 403
    resp = _post_import(client, keys["curator"], data, class_map="mapping:\n  person: person\n")
    assert resp.status_code == 422
    assert resp.json()["error"]["details"] == {"unmapped": ["helmet"]}  # the unused "objects" needs none
    resp = _post_import(client, keys["curator"], data, class_map="no_such_map")
    assert resp.status_code == 404
    assert _post_import(client, keys["curator"], b"not a zip").json()["error"]["code"] == "bad_archive"
    assert client.get("/v1/samples", headers=keys["curator"]).json()["items"] == []  # nothing written
    # a shipped class map by name works
    resp = _post_import(client, keys["curator"], data, class_map="sfchd")
    assert resp.status_code == 200 and resp.json()["status"] == "submitted"


@pytest.mark.parametrize("entry", ["../evil.jpg", "/abs/evil.jpg", "ok/../../evil.jpg", "C:/evil.jpg"])
def test_zip_entries_that_escape_are_refused(
    client: Any, keys: dict[str, dict[str, str]], tmp_path: Path, entry: str
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("annotations.json", json.dumps({"images": [], "annotations": [], "categories": []}))
        zf.writestr(entry, b"x")
    resp = _post_import(client, keys["curator"], buf.getvalue())
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unsafe_path"
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_zip_symlink_is_refused(client: Any, keys: dict[str, dict[str, str]]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("images/link.jpg")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    resp = _post_import(client, keys["curator"], buf.getvalue())
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unsafe_path"


def test_export_roles_and_validation(client: Any, keys: dict[str, dict[str, str]]) -> None:
    assert client.post("/v1/exports", headers=keys["inspector"], json={"format": "coco"}).status_code == 403
    resp = client.post("/v1/exports", headers=keys["reviewer"], json={"format": "coco"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "nothing_to_export"
    resp = client.post("/v1/exports", headers=keys["reviewer"], json={"format": "pascal"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_format"
    resp = client.post("/v1/exports", headers=keys["reviewer"], json={"format": "coco", "filters": {"colour": 1}})
    assert resp.status_code == 422
