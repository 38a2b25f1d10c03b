"""The labeling endpoints over HTTP: shapes, roles, tenancy and the one error format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.detections import Detections
from hazardlens.labeling.suggestions import store_suggestions
from tests.fixtures.core import auth
from tests.fixtures.labeling import add_sample

DUST = {"class_key": "accumulated_dust", "x1": 10, "y1": 20, "x2": 110, "y2": 220}


@pytest.fixture
def keys(make_key: Callable[..., str]) -> dict[str, dict[str, str]]:
    return {
        "curator": auth(make_key("420000", "curator", "cur-a")),
        "curator2": auth(make_key("420000", "curator", "cur-b")),
        "reviewer": auth(make_key("420000", "reviewer", "rev-a")),
        "inspector": auth(make_key("420000", "inspector", "insp-a")),
        "other": auth(make_key("310000", "curator", "cur-sh")),
    }


def _error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_put_get_history_and_repairs(client: Any, ctx: Context, keys: dict[str, dict[str, str]]) -> None:
    sid = add_sample(ctx, width=640, height=480)
    url = f"/v1/samples/{sid}/annotations"
    r = client.get(url, headers=keys["curator"])
    assert r.status_code == 200 and r.json()["status"] == "unlabeled" and r.json()["revision"] is None
    r = client.put(
        url,
        headers=keys["curator"],
        json={"boxes": [DUST, {"class_key": "fire", "x1": 600, "y1": 0, "x2": 700.5, "y2": 50}], "note": "first pass"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "in_progress" and body["revision"]["number"] == 1
    assert body["boxes"][1] == {"class_key": "fire", "x1": 600.0, "y1": 0.0, "x2": 640.0, "y2": 50.0}
    assert len(body["repairs"]) == 1 and "x2 700.5 -> 640" in body["repairs"][0]
    r = client.put(url, headers=keys["curator"], json={"boxes": []})
    assert r.status_code == 200 and r.json()["boxes"] == [] and r.json()["repairs"] == []
    got = client.get(url, headers=keys["reviewer"]).json()
    assert got["revision"]["number"] == 2 and got["boxes"] == [] and got["class_keys"] == []
    hist = client.get(f"{url}/history", headers=keys["curator"]).json()
    assert [h["number"] for h in hist["revisions"]] == [1, 2]
    assert hist["revisions"][0]["note"] == "first pass" and hist["revisions"][0]["author"] == "cur-a"


@pytest.mark.parametrize(
    "payload",
    [
        {"boxes": [{"class_key": "fire", "x1": 0, "y1": 0, "x2": 10}]},
        {"boxes": [{"class_key": "fire", "x1": "0", "y1": 0, "x2": 10, "y2": 10}]},
        {"boxes": [{"class_key": "fire", "x1": 0, "y1": 0, "x2": 10, "y2": 10, "colour": "red"}]},
        {"boxes": "none"},
        {"note": "no boxes"},
        [1, 2],
    ],
)
def test_malformed_payload_is_422_in_the_error_shape(
    client: Any, ctx: Context, keys: dict[str, dict[str, str]], payload: Any
) -> None:
    sid = add_sample(ctx)
    err = _error(client.put(f"/v1/samples/{sid}/annotations", headers=keys["curator"], json=payload), 422, "invalid")
    assert isinstance(err["details"], list) and err["details"]
    assert client.get(f"/v1/samples/{sid}/annotations", headers=keys["curator"]).json()["status"] == "unlabeled"


def test_box_rules_are_422_with_details_per_box(client: Any, ctx: Context, keys: dict[str, dict[str, str]]) -> None:
    sid = add_sample(ctx)
    r = client.put(
        f"/v1/samples/{sid}/annotations",
        headers=keys["curator"],
        json={
            "boxes": [
                DUST,
                {"class_key": "flamez", "x1": 0, "y1": 0, "x2": 5, "y2": 5},
                {"class_key": "fire", "x1": 9, "y1": 0, "x2": 9, "y2": 5},
            ]
        },
    )
    err = _error(r, 422, "invalid_boxes")
    assert [(d["index"], d["code"]) for d in err["details"]] == [(1, "unknown_class"), (2, "zero_area")]


def test_workflow_and_roles(client: Any, ctx: Context, keys: dict[str, dict[str, str]]) -> None:
    sid = add_sample(ctx)
    base = f"/v1/samples/{sid}/annotations"
    _error(client.put(base, headers=keys["inspector"], json={"boxes": [DUST]}), 403, "forbidden")
    _error(client.post(f"{base}/submit", headers=keys["curator"]), 409, "invalid_transition")
    assert client.put(base, headers=keys["curator"], json={"boxes": [DUST]}).status_code == 200
    assert client.post(f"{base}/submit", headers=keys["curator"]).json()["status"] == "submitted"
    _error(client.post(f"{base}/approve", headers=keys["curator2"]), 403, "forbidden")
    _error(client.post(f"{base}/reject", headers=keys["reviewer"], json={"reason": "  "}), 422, "reason_required")
    _error(client.post(f"{base}/reject", headers=keys["reviewer"], json={}), 422, "invalid")
    r = client.post(f"{base}/reject", headers=keys["reviewer"], json={"reason": "泄爆口漏标"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert r.json()["revision"]["reason"] == "泄爆口漏标"
    assert client.put(base, headers=keys["curator"], json={"boxes": [DUST]}).json()["status"] == "in_progress"
    client.post(f"{base}/submit", headers=keys["curator"])
    assert client.post(f"{base}/approve", headers=keys["reviewer"]).json()["status"] == "approved"
    err = _error(client.post(f"{base}/approve", headers=keys["reviewer"]), 409, "invalid_transition")
    assert "'approved'" in err["message"]


def test_unauthenticated_and_other_org(client: Any, ctx: Context, keys: dict[str, dict[str, str]]) -> None:
    sid = add_sample(ctx)
    base = f"/v1/samples/{sid}/annotations"
    _error(client.get(base), 401, "missing_key")
    _error(client.put(base, json={"boxes": "garbage"}), 401)
    _error(client.get(base, headers={"Authorization": "Bearer hl_nope_nope"}), 401, "invalid_key")
    _error(client.get(base, headers=keys["other"]), 404, "not_found")
    _error(client.put(base, headers=keys["other"], json={"boxes": [DUST]}), 404, "not_found")
    _error(client.get(f"{base}/history", headers=keys["other"]), 404)
    _error(client.get("/v1/samples/abc/annotations", headers=keys["curator"]), 422, "invalid")
    shared = add_sample(ctx, scope="shared")
    assert client.get(f"/v1/samples/{shared}/annotations", headers=keys["other"]).status_code == 200


def test_queue_agreement_and_review_queue(client: Any, ctx: Context, keys: dict[str, dict[str, str]]) -> None:
    ids = [add_sample(ctx) for _ in range(3)]
    r = client.post(
        "/v1/labeling/assign",
        headers=keys["reviewer"],
        json={"filters": {"status": "unlabeled"}, "assignee": "cur-a", "limit": 2},
    )
    assert r.status_code == 200 and r.json()["assigned"] == 2
    _error(client.post("/v1/labeling/assign", headers=keys["curator"], json={"assignee": "cur-a"}), 403)
    _error(
        client.post(
            "/v1/labeling/assign", headers=keys["reviewer"], json={"filters": {"colour": "red"}, "assignee": "cur-a"}
        ),
        422,
        "invalid",
    )
    _error(client.post("/v1/labeling/assign", headers=keys["reviewer"], json={"assignee": "nobody"}), 404)
    queue = client.get("/v1/labeling/queue", headers=keys["curator"]).json()["items"]
    assert [q["sample_id"] for q in queue] == ids[:2]
    assert client.get("/v1/labeling/queue/next", headers=keys["curator"]).json()["item"]["sample_id"] == ids[0]
    # two curators label the first sample differently
    first = ids[0]
    client.put(f"/v1/samples/{first}/annotations", headers=keys["curator2"], json={"boxes": [DUST]})
    client.put(
        f"/v1/samples/{first}/annotations",
        headers=keys["curator"],
        json={"boxes": [DUST, {"class_key": "fire", "x1": 300, "y1": 10, "x2": 350, "y2": 60}]},
    )
    client.post(f"/v1/samples/{first}/annotations/submit", headers=keys["curator"])
    agreement = client.get(f"/v1/samples/{first}/annotations/agreement", headers=keys["reviewer"]).json()
    assert agreement["overall"] == 0.5
    assert agreement["per_class"]["fire"] == {"matched": 0, "only_a": 0, "only_b": 1, "agreement": 0.0}
    _error(client.get(f"/v1/samples/{first}/annotations/agreement", headers=keys["inspector"]), 403)
    # the submitting curator's assignment is done, so the queue moves on
    assert [q["sample_id"] for q in client.get("/v1/labeling/queue", headers=keys["curator"]).json()["items"]] == [
        ids[1]
    ]
    done = client.get("/v1/labeling/queue?include_done=true", headers=keys["curator"]).json()["items"]
    assert [q["sample_id"] for q in done] == [ids[1], first] and done[1]["done_at"] is not None
    client.put(f"/v1/samples/{ids[2]}/annotations", headers=keys["curator"], json={"boxes": []})
    client.post(f"/v1/samples/{ids[2]}/annotations/submit", headers=keys["curator"])
    items = client.get("/v1/review/queue", headers=keys["reviewer"]).json()["items"]
    assert [(i["sample_id"], i["agreement"]) for i in items] == [(first, 0.5), (ids[2], None)]
    _error(client.get("/v1/review/queue", headers=keys["curator"]), 403)


def test_suggestions_endpoints(client: Any, ctx: Context, keys: dict[str, dict[str, str]]) -> None:
    sid = add_sample(ctx)
    dets = Detections(
        np.array([[10, 20, 110, 220], [5, 5, 50, 50]], np.float32),
        np.array(["accumulated_dust", "fire"], object),
        np.array([0.9, 0.4], np.float32),
    )
    with ctx.db.session() as s:
        admin = Principal(user_id=None, name="system", org_code="420000", role="admin")
        first = store_suggestions(s, admin, sid, "yolo-dust-1.0", dets).id
        second = store_suggestions(s, admin, sid, "yolo-dust-1.1", dets).id
    items = client.get(f"/v1/samples/{sid}/suggestions", headers=keys["curator"]).json()["items"]
    assert [i["id"] for i in items] == [second, first] and items[0]["boxes"][0]["confidence"] == 0.9
    _error(client.get(f"/v1/samples/{sid}/suggestions", headers=keys["other"]), 404)
    _error(client.post(f"/v1/suggestions/{first}/accept", headers=keys["other"]), 404)
    _error(client.post(f"/v1/suggestions/{first}/accept", headers=keys["reviewer"]), 403)
    r = client.post(f"/v1/suggestions/{first}/accept", headers=keys["curator"], json={"boxes": [DUST]})
    assert r.status_code == 200, r.text
    rev = r.json()["revision"]
    assert rev["source"] == "model" and rev["model_version"] == "yolo-dust-1.0"
    assert [b["class_key"] for b in rev["boxes"]] == ["accumulated_dust"]
    _error(client.post(f"/v1/suggestions/{first}/accept", headers=keys["curator"]), 409)
    assert client.post(f"/v1/suggestions/{second}/dismiss", headers=keys["curator"]).json()["status"] == "dismissed"
    assert client.get(f"/v1/samples/{sid}/suggestions", headers=keys["curator"]).json()["items"] == []
    closed = client.get(f"/v1/samples/{sid}/suggestions?include_closed=true", headers=keys["curator"]).json()
    assert {i["status"] for i in closed["items"]} == {"accepted", "dismissed"}
    _error(client.post("/v1/suggestions/999999/dismiss", headers=keys["curator"]), 404)
