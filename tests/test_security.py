"""Issue 13: each attack replayed as it was made (over HTTP where it was), so that none comes back.

One test (or a few) per item; each fails on the code before its fix.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from typing import Any

import pytest

from hazardlens.settings import Settings
from tests.fixtures.core import auth, make_image
from tests.fixtures.serving import photo

MAX_PIXELS = 1_000_000  # 1 MP, as in the report


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(home=tmp_path / "home", max_pixels=MAX_PIXELS)


PPE_MAP = "mapping:\n  person: person\n  helmet: helmet\n"


@pytest.fixture
def keys(make_key: Callable[..., str]) -> dict[str, dict[str, str]]:
    return {"admin": auth(make_key("420000", "admin", "adm")), "curator": auth(make_key("420000", "curator", "cur"))}


def _yolo_zip(file_stem: str = "a", data_yaml: str | None = None, names: str = "person\nhelmet\n") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"images/{file_stem}.jpg", make_image(64, 48, seed=7))
        zf.writestr(f"labels/{file_stem}.txt", "0 0.5 0.5 0.25 0.25\n")
        if data_yaml is not None:
            zf.writestr("data.yaml", data_yaml)
        else:
            zf.writestr("classes.txt", names)
    return buf.getvalue()


def _post_import(client: Any, headers: dict[str, str], data: bytes, **form: Any) -> Any:
    fields = {"format": "yolo", "class_map": PPE_MAP, "sector": "general", **form}
    return client.post(
        "/v1/imports", headers=headers, data=fields, files={"file": ("export.zip", data, "application/zip")}
    )


# -- item 1: a regular expression from a request froze the server ------------------------------------


def test_catastrophic_regex_in_an_import_returns_at_once(client: Any, keys: dict[str, dict[str, str]]) -> None:
    # ^(a+)+$ against "aaa...a.jpg": Python's re backtracks 2^n ways (27 a's took 3.75 s, holding the
    # GIL, so every other request waited). 31 a.s took over 30 s; RE2 answers in microseconds.
    zipped = _yolo_zip("a" * 31)
    started = time.monotonic()
    resp = _post_import(client, keys["curator"], zipped, camera_regex="^(a+)+$")
    assert resp.status_code == 200, resp.text
    # the class map's own camera_regex / site_regex take the same engine
    cmap = PPE_MAP + "camera_regex: '^(a+)+$'\nsite_regex: '(a|a)*b'\n"
    resp = _post_import(client, keys["curator"], _yolo_zip("a" * 31 + "x"), class_map=cmap)
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started < 20


def test_regexes_are_run_by_re2_and_bounded(client: Any, keys: dict[str, dict[str, str]]) -> None:
    for pattern in (r"(a)\1", r"(?=a)a"):  # backtracking-only features: RE2 has none
        resp = _post_import(client, keys["curator"], _yolo_zip(), camera_regex=pattern)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_regex", resp.text
    for line in ("site_regex: '(a)\\1'", f"camera_regex: '{'x' * 201}'", "camera_regex: '((a{100}){100}){100}'"):
        resp = _post_import(client, keys["curator"], _yolo_zip(), class_map=f"{PPE_MAP}{line}\n")
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_regex", (line, resp.text)


def test_shipped_class_map_regex_still_finds_the_camera() -> None:
    from hazardlens.formats import extract_group
    from hazardlens.labeling.class_maps import resolve_class_map

    regex = resolve_class_map("sfchd").camera_regex
    assert extract_group("train/192_168_2_22_20200101_0001.jpg", regex) == "192.168.2.22"
    assert extract_group("x" * 5000 + "/192_168_2_22_a.jpg", regex) is None  # input bounded


# -- item 2: a YAML alias bomb -----------------------------------------------------------------------


def _alias_bomb(depth: int = 6) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, depth + 1):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    lines.append(f"names: *l{depth}")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_in_data_yaml_is_refused(client: Any, keys: dict[str, dict[str, str]]) -> None:
    bomb = _alias_bomb(6)
    assert len(bomb) < 1000
    resp = _post_import(client, keys["curator"], _yolo_zip(data_yaml=bomb))
    assert resp.status_code == 422, resp.text[:300]
    assert len(resp.content) < 4096  # was a 9.8 MB answer
    assert resp.json()["error"]["code"] == "invalid_yaml"


def test_yaml_alias_bomb_in_a_class_map_is_refused(client: Any, keys: dict[str, dict[str, str]]) -> None:
    cmap = _alias_bomb(6).replace("names: *l6", "mapping:\n  person: person\n  *l6 : helmet")
    resp = _post_import(client, keys["curator"], _yolo_zip(), class_map=cmap)
    assert resp.status_code == 422 and len(resp.content) < 4096
    assert resp.json()["error"]["code"] == "invalid_yaml"
    merge = "base: &b {person: person}\nmapping:\n  <<: *b\n  helmet: helmet\n"
    resp = _post_import(client, keys["curator"], _yolo_zip(), class_map=merge)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_yaml"


def test_only_short_scalar_class_names(client: Any, keys: dict[str, dict[str, str]]) -> None:
    for names in (
        "names: [[person, person], helmet]\n",
        "names: {0: {a: b}, 1: helmet}\n",
        f"names: [{'p' * 201}, helmet]\n",
        "names: " + "[" * 20 + "a" + "]" * 20 + "\n",
    ):
        resp = _post_import(client, keys["curator"], _yolo_zip(data_yaml=names))
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_yaml", (names, resp.text)
    huge = "names: [person, helmet]\n#" + "x" * 300_000 + "\n"
    resp = _post_import(client, keys["curator"], _yolo_zip(data_yaml=huge))
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_yaml"
    ok = _post_import(client, keys["curator"], _yolo_zip(data_yaml="names: [person, helmet]\nnc: 2\n"))
    assert ok.status_code == 200, ok.text


# -- item 3: the pixel limit was bypassed on detection (OpenCV decoded Radiance HDR at full size) ---


def _hdr(side: int = 2000) -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".hdr", np.full((side, side, 3), 0.5, np.float32))
    assert ok
    return buf.tobytes()


def test_hdr_is_not_decoded_on_any_detection_path(api: Any, make_key: Callable[..., str]) -> None:
    import base64

    hdr = _hdr(2000)  # 4 MP against a 1 MP limit; 264 KB on the wire
    service, curator = make_key("420000", "service"), make_key("420000", "curator", "ls")
    r = api.post("/v1/detect", files={"file": ("x.jpg", hdr, "image/jpeg")}, headers=auth(service))
    assert r.status_code == 415, r.text[:300]  # was 200: decoded at 2000x2000

    files = [("files", ("a.jpg", photo(seed=4), "image/jpeg")), ("files", ("b.jpg", hdr, "image/jpeg"))]
    r = api.post("/v1/detect/batch", files=files, headers=auth(service))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert "detections" in results[0] and results[1]["error"]["code"] == "unsupported_media_type"

    basic = {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{curator}".encode()).decode()}
    inline = "data:image/vnd.radiance;base64," + base64.b64encode(hdr).decode()
    r = api.post("/labelstudio/predict", json={"tasks": [{"id": 1, "data": {"image": inline}}]}, headers=basic)
    assert r.status_code == 415, r.text[:300]

    r = api.post(
        "/v1/inspections/R-1/photos",
        data={"enterprise_id": "E1", "sector": "general"},
        files={"file": ("x.jpg", hdr, "image/jpeg")},
        headers=auth(service),
    )
    assert r.status_code == 415, r.text[:300]


def test_pixel_limit_holds_before_any_decode(api: Any, make_key: Callable[..., str]) -> None:
    import base64

    service, curator = make_key("420000", "service"), make_key("420000", "curator", "ls")
    big = photo(1200, 1000, seed=3, fmt="PNG")  # 1.2 MP
    r = api.post("/v1/detect", files={"file": ("x.png", big, "image/png")}, headers=auth(service))
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"], r.text[:300]
    r = api.post("/v1/detect?tiles=true", files={"file": ("x.png", big, "image/png")}, headers=auth(service))
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"], r.text[:300]
    basic = {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{curator}".encode()).decode()}
    inline = "data:image/png;base64," + base64.b64encode(big).decode()
    r = api.post("/labelstudio/predict", json={"tasks": [{"id": 1, "data": {"image": inline}}]}, headers=basic)
    assert r.status_code == 413, r.text[:300]


def test_decoder_takes_only_sniffed_formats_and_always_a_limit() -> None:
    import cv2
    import numpy as np

    from hazardlens.errors import TooLarge, UnsupportedMedia
    from hazardlens.models.preprocess import DEFAULT_MAX_PIXELS, decode_at_scale, decode_image

    for ext in (".hdr", ".pfm", ".bmp", ".tiff", ".ppm", ".exr"):
        try:
            ok, buf = cv2.imencode(
                ext,
                np.full(
                    (40, 40, 3),
                    0.5 if ext in (".hdr", ".pfm", ".exr") else 100,
                    np.float32 if ext in (".hdr", ".pfm", ".exr") else np.uint8,
                ),
            )
        except cv2.error:
            continue  # this OpenCV build lacks the encoder
        with pytest.raises(UnsupportedMedia):
            decode_image(buf.tobytes(), 64, max_pixels=10_000)
        with pytest.raises(UnsupportedMedia):
            decode_at_scale(buf.tobytes(), lambda long: 1.0, max_pixels=10_000)
    assert decode_image(photo(40, 30), 64)[1] == (40, 30)
    assert Settings().max_pixels == DEFAULT_MAX_PIXELS
    with pytest.raises(TooLarge):
        decode_at_scale(photo(200, 100), lambda long: 1.0, max_pixels=10_000)


# -- item 4: another organisation wrote and approved labels on a shared sample -----------------------

DUST = {"class_key": "accumulated_dust", "x1": 10, "y1": 20, "x2": 110, "y2": 220}
FIRE = {"class_key": "fire", "x1": 30, "y1": 30, "x2": 90, "y2": 90}


@pytest.fixture
def two_orgs(make_key: Callable[..., str]) -> dict[str, dict[str, str]]:
    return {
        "a_curator": auth(make_key("420000", "curator", "a-cur")),
        "a_reviewer": auth(make_key("420000", "reviewer", "a-rev")),
        "b_curator": auth(make_key("310000", "curator", "b-cur")),
        "b_reviewer": auth(make_key("310000", "reviewer", "b-rev")),
        "b_admin": auth(make_key("310000", "admin", "b-adm")),
    }


def _code(resp: Any) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]


def test_another_org_cannot_write_or_review_labels_of_a_shared_sample(
    client: Any, ctx: Any, two_orgs: dict[str, dict[str, str]]
) -> None:
    from tests.fixtures.labeling import add_sample

    shared = add_sample(ctx, "420000", scope="shared")
    base = f"/v1/samples/{shared}/annotations"
    # B's curator saves and submits on A's shared sample, as in the report
    assert _code(client.put(base, headers=two_orgs["b_curator"], json={"boxes": [FIRE]})) == (403, "not_owner")
    assert _code(client.put(base, headers=two_orgs["b_admin"], json={"boxes": [FIRE]})) == (403, "not_owner")
    # A labels and submits; B's reviewer may neither approve nor reject it
    assert client.put(base, headers=two_orgs["a_curator"], json={"boxes": [DUST]}).status_code == 200
    assert _code(client.post(f"{base}/submit", headers=two_orgs["b_curator"])) == (403, "not_owner")
    assert client.post(f"{base}/submit", headers=two_orgs["a_curator"]).status_code == 200
    assert _code(client.post(f"{base}/approve", headers=two_orgs["b_reviewer"])) == (403, "not_owner")
    assert _code(client.post(f"{base}/reject", headers=two_orgs["b_reviewer"], json={"reason": "no"})) == (
        403,
        "not_owner",
    )
    assert client.get("/v1/review/queue", headers=two_orgs["b_reviewer"]).json()["items"] == []
    # still readable by all: shared means that
    got = client.get(base, headers=two_orgs["b_curator"])
    assert got.status_code == 200 and got.json()["status"] == "submitted" and got.json()["boxes"] == [DUST]
    assert client.post(f"{base}/approve", headers=two_orgs["a_reviewer"]).json()["status"] == "approved"
    history = client.get(f"{base}/history", headers=two_orgs["a_curator"]).json()["revisions"]
    assert [r["author"] for r in history] == ["a-cur"] and history[0]["boxes"] == [DUST]
    # invisible stays 404, not 403 (which would confirm it exists)
    private = add_sample(ctx, "420000")
    assert (
        _code(client.put(f"/v1/samples/{private}/annotations", headers=two_orgs["b_curator"], json={"boxes": [FIRE]}))[
            0
        ]
        == 404
    )


def test_another_org_cannot_accept_or_dismiss_suggestions_on_a_shared_sample(
    client: Any, ctx: Any, two_orgs: dict[str, dict[str, str]]
) -> None:
    import numpy as np

    from hazardlens.auth import Principal
    from hazardlens.detections import Detections
    from hazardlens.labeling.suggestions import store_suggestions
    from tests.fixtures.labeling import add_sample

    shared = add_sample(ctx, "420000", scope="shared")
    dets = Detections(
        np.array([[10, 20, 110, 220]], np.float32), np.array(["fire"], object), np.array([0.9], np.float32)
    )
    with ctx.db.session() as s:
        owner = Principal(user_id=None, name="a", org_code="420000", role="curator")
        sid = store_suggestions(s, owner, shared, "hazardlens:1", dets).id
    for action in ("accept", "dismiss"):
        r = client.post(f"/v1/suggestions/{sid}/{action}", headers=two_orgs["b_curator"], json={})
        assert _code(r) == (403, "not_owner"), r.text
    r = client.post("/v1/suggestions/request", json={"sample_ids": [shared]}, headers=two_orgs["b_curator"])
    assert _code(r) == (403, "not_owner"), r.text
    assert client.get(f"/v1/samples/{shared}/annotations", headers=two_orgs["a_curator"]).json()["revision"] is None


def test_inspection_feedback_never_writes_another_orgs_sample(api: Any, ctx: Any, make_key: Callable[..., str]) -> None:
    a_curator = auth(make_key("420000", "curator", "a-cur"))
    b_service = auth(make_key("310000", "service", "b-svc"))
    data = photo(seed=1)
    up = api.post(
        "/v1/samples",
        headers=a_curator,
        data={"sector": "general", "scope": "shared"},
        files={"file": ("a.jpg", data, "image/jpeg")},
    )
    assert up.status_code == 201, up.text
    a_sample = up.json()["id"]
    r = api.post(
        "/v1/inspections/B-1/photos",
        headers=b_service,
        data={"enterprise_id": "E-B", "sector": "general"},
        files={"file": ("b.jpg", data, "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    finding = r.json()["findings"][0]
    r = api.post(f"/v1/findings/{finding['id']}/review", json={"decision": "confirmed"}, headers=b_service)
    assert r.status_code == 200 and r.json()["status"] == "confirmed", r.text
    state = api.get(f"/v1/samples/{a_sample}/annotations", headers=a_curator).json()
    assert state["status"] == "unlabeled" and state["revision"] is None  # was a submitted B revision


# -- item 5: inspection metadata leaked onto another organisation's shared sample --------------------


def test_inspection_photo_never_attaches_to_another_orgs_sample(
    api: Any, ctx: Any, make_key: Callable[..., str]
) -> None:
    a_curator = auth(make_key("420000", "curator", "a-cur"))
    b_service = auth(make_key("310000", "service", "b-svc"))
    data = photo(seed=2)
    up = api.post(
        "/v1/samples",
        headers=a_curator,
        data={"sector": "general", "scope": "shared"},
        files={"file": ("a.jpg", data, "image/jpeg")},
    )
    assert up.status_code == 201, up.text
    a_sample = up.json()["id"]
    secret = {"record": "沪应急检〔2026〕77号", "enterprise": "91310000SECRET", "key": "b-secret-idempotency-key"}
    r = api.post(
        f"/v1/inspections/{secret['record']}/photos",
        data={"enterprise_id": secret["enterprise"], "sector": "general", "inspector_id": "B-007"},
        headers={**b_service, "Idempotency-Key": secret["key"]},
        files={"file": ("b.jpg", data, "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sample_id"] != a_sample and body["deduplicated"] is False  # was A's sample
    # A's sample and everything A reads about it carry nothing of B's record
    for path in (
        f"/v1/samples/{a_sample}",
        f"/v1/samples/{a_sample}/history",
        f"/v1/samples/{a_sample}/annotations/history",
    ):
        got = api.get(path, headers=a_curator)
        assert got.status_code == 200, (path, got.text)
        for value in (*secret.values(), "B-007"):
            assert value not in got.text, (path, value)
    assert api.get(f"/v1/samples/{body['sample_id']}", headers=a_curator).status_code == 404  # B's, private
    # B's own record is whole, and a retry still replays
    again = api.post(
        f"/v1/inspections/{secret['record']}/photos",
        data={"enterprise_id": secret["enterprise"], "sector": "general"},
        headers={**b_service, "Idempotency-Key": secret["key"]},
        files={"file": ("b.jpg", data, "image/jpeg")},
    )
    assert again.status_code in (200, 201) and again.json()["replayed"] is True
    assert again.json()["sample_id"] == body["sample_id"]


# -- item 6: any organisation's admin controlled the one model registry ------------------------------


def test_another_orgs_admin_cannot_take_detection_offline(
    api: Any, ctx: Any, make_key: Callable[..., str], model_variants: list[Any]
) -> None:
    from tests.fixtures.serving import register

    register(ctx, model_variants[1], "2", stage="candidate")
    b_admin, system = auth(make_key("310000", "admin", "b-adm")), auth(make_key("000000", "admin", "sys-adm"))
    service = auth(make_key("310000", "service", "b-svc"))
    # B's admin archives the production model, as in the report
    r = api.post("/v1/models/hazardlens/1/promote", json={"stage": "archived"}, headers=b_admin)
    assert _code(r) == (403, "system_only"), r.text
    r = api.post("/v1/models/hazardlens/2/promote", json={"stage": "production"}, headers=b_admin)
    assert _code(r) == (403, "system_only")
    assert _code(api.post("/v1/models/hazardlens/rollback", headers=b_admin)) == (403, "system_only")
    # even the system organisation cannot leave the registry without a production model
    r = api.post("/v1/models/hazardlens/1/promote", json={"stage": "archived"}, headers=system)
    assert _code(r) == (409, "last_production"), r.text
    assert _code(api.post("/v1/models/hazardlens/1/promote", json={"stage": "staging"}, headers=system)) == (
        409,
        "last_production",
    )
    assert (
        api.post("/v1/detect", files={"file": ("p.jpg", photo(seed=1), "image/jpeg")}, headers=service).json()["model"][
            "version"
        ]
        == "1"
    )
    # a replacement is the way: promoting it archives the old one
    r = api.post("/v1/models/hazardlens/2/promote", json={"stage": "production"}, headers=system)
    assert r.status_code == 200 and r.json()["stage"] == "production", r.text
    stages = {m["version"]: m["stage"] for m in api.get("/v1/models", headers=service).json()["models"]}
    assert stages == {"1": "archived", "2": "production"}


def test_registry_changes_need_the_system_org_in_the_core(ctx: Any, tmp_path: Any) -> None:
    from hazardlens.auth import SYSTEM, Principal, is_system
    from hazardlens.errors import Forbidden
    from hazardlens.models.registry import import_model, register_model

    b_admin = Principal(user_id=1, name="b", org_code="310000", role="admin")
    assert is_system(SYSTEM) and not is_system(b_admin) and is_system(b_admin, system_org="310000")
    assert not is_system(Principal(user_id=2, name="c", org_code="000000", role="curator"))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    with ctx.db.session() as s, pytest.raises(Forbidden):
        register_model(ctx, s, b_admin, weights, classes=["fire"], imgsz=64, card={}, stage="production")
    with ctx.db.session() as s, pytest.raises(Forbidden):
        import_model(ctx, s, b_admin, tmp_path)
    with ctx.db.session() as s:  # training's candidates stay open to any training admin
        assert register_model(ctx, s, b_admin, weights, classes=["fire"], imgsz=64, card={}).stage == "candidate"
