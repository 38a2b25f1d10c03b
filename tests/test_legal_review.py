"""Issue 17 item 4: provincial inspection items and classes under legal review (法制审核).

An organisation's admin proposes an item or class with its mandatory legal clause (refused without
one); a ``legal`` reviewer of that organisation approves or rejects it with a reason; an approved
addition is usable (labeling, findings) in that organisation only, listed by its ``GET /v1/taxonomy``
and by the ministry's (the system organisation's); every step is audited. API and CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hazardlens.audit import history
from hazardlens.context import Context
from tests.fixtures.cli import run
from tests.fixtures.core import auth
from tests.fixtures.labeling import add_sample

OIL_LEAK: dict[str, Any] = {
    "key": "oil_leak",
    "name_zh": "设备漏油",
    "name_en": "oil leak",
    "sector": "general",
    "inspection_items": [],
    "severity": "medium",
    "finding_zh": "设备漏油，未及时处置",
    "is_hazard": True,
}
CLAUSE = {"text": "设备设施应保持完好，不得有跑、冒、滴、漏。", "citation": "湖北省安全生产条例 第二十条"}
BOX = {"class_key": "oil_leak", "x1": 10, "y1": 10, "x2": 100, "y2": 80}


def _propose(client: Any, key: str, clause: dict[str, str] | None = CLAUSE, definition: dict | None = None) -> Any:
    body: dict[str, Any] = {"kind": "class", "definition": definition or OIL_LEAK}
    if clause is not None:
        body["legal_clause"] = clause
    return client.post("/v1/taxonomy/additions", json=body, headers=auth(key))


def _classes(client: Any, key: str) -> dict[str, dict[str, Any]]:
    return {c["key"]: c for c in client.get("/v1/taxonomy", headers=auth(key)).json()["classes"]}


def test_proposal_review_and_use_in_its_organisation_only(
    ctx: Context, client: Any, make_key: Callable[..., str]
) -> None:
    admin = make_key("420000", "admin")
    curator = make_key("420000", "curator")
    legal = make_key("420000", "legal", "legal-hb")
    other_legal = make_key("430000", "legal", "legal-hn")
    other_curator = make_key("430000", "curator")
    ministry = make_key("000000", "admin")

    # no clause, or half a clause: refused; only an admin proposes
    for clause in (None, {"text": "  ", "citation": "某条例"}):
        r = _propose(client, admin, clause)
        assert r.status_code == 422 and r.json()["error"]["code"] == "missing_legal_clause", r.text
    assert _propose(client, curator).status_code == 403
    r = _propose(client, admin)
    assert r.status_code == 201, r.text
    addition = r.json()
    assert addition["status"] == "pending" and addition["legal_citation"] == CLAUSE["citation"]
    assert CLAUSE["citation"] in addition["definition"]["legal_basis"]
    assert _propose(client, admin).json()["error"]["code"] == "duplicate_addition"

    # pending: listed for its organisation, inactive, so labeling refuses it
    assert _classes(client, admin)["oil_leak"]["active"] is False
    sid = add_sample(ctx, "420000")
    r = client.put(f"/v1/samples/{sid}/annotations", json={"boxes": [BOX]}, headers=auth(curator))
    assert r.status_code == 422 and "inactive_class" in r.text

    # only the proposing organisation's legal reviewers decide; a rejection needs its reason
    url = f"/v1/taxonomy/additions/{addition['id']}/review"
    assert client.post(url, json={"decision": "approve"}, headers=auth(admin)).status_code == 403
    assert client.post(url, json={"decision": "approve"}, headers=auth(other_legal)).status_code == 404
    r = client.post(url, json={"decision": "reject", "reason": " "}, headers=auth(legal))
    assert r.status_code == 422 and r.json()["error"]["code"] == "reason_required"
    r = client.post(url, json={"decision": "approve", "reason": "条款为强制性规定"}, headers=auth(legal))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["reviewed_by"] == "legal-hb"
    assert client.post(url, json={"decision": "reject", "reason": "x"}, headers=auth(legal)).status_code == 409

    # usable in 420000: listed active, labeling takes it
    assert _classes(client, admin)["oil_leak"]["active"] is True
    r = client.put(f"/v1/samples/{sid}/annotations", json={"boxes": [BOX]}, headers=auth(curator))
    assert r.status_code == 200, r.text
    # not in 430000: not listed, and labeling refuses it as an unknown class
    assert "oil_leak" not in _classes(client, other_curator)
    other_sid = add_sample(ctx, "430000")
    r = client.put(f"/v1/samples/{other_sid}/annotations", json={"boxes": [BOX]}, headers=auth(other_curator))
    assert r.status_code == 422 and "unknown_class" in r.text
    assert client.get("/v1/taxonomy/additions", headers=auth(other_curator)).json()["additions"] == []
    # the ministry sees it (with its organisation) for national adoption
    seen = _classes(client, ministry)["oil_leak"]
    assert seen["org_code"] == "420000" and seen["status"] == "approved"
    listed = client.get("/v1/taxonomy/additions", headers=auth(ministry)).json()["additions"]
    assert [(a["key"], a["org_code"], a["legal_text"]) for a in listed] == [("oil_leak", "420000", CLAUSE["text"])]

    with ctx.db.session() as s:
        events = history(s, entity="taxonomy_addition", entity_id=addition["id"])
        assert [(e.action, e.actor) for e in events] == [
            ("taxonomy.propose", "admin-420000"),
            ("taxonomy.approve", "legal-hb"),
        ]
        assert events[1].before["status"] == "pending" and events[1].after["status"] == "approved"


def test_rejected_addition_stays_unusable(ctx: Context, client: Any, make_key: Callable[..., str]) -> None:
    admin, legal = make_key("420000", "admin"), make_key("420000", "legal")
    item = {"code": "HB-01", "sector": "general", "title_zh": "储罐区巡检", "title_en": "tank farm patrol"}
    r = client.post(
        "/v1/taxonomy/additions", json={"kind": "item", "definition": item, "legal_clause": CLAUSE}, headers=auth(admin)
    )
    assert r.status_code == 201, r.text
    r = client.post(
        f"/v1/taxonomy/additions/{r.json()['id']}/review",
        json={"decision": "reject", "reason": "引用条款不是强制性条款"},
        headers=auth(legal),
    )
    assert r.json()["status"] == "rejected" and r.json()["review_reason"] == "引用条款不是强制性条款"
    items = {i["code"]: i for i in client.get("/v1/taxonomy", headers=auth(admin)).json()["items"]}
    assert items["HB-01"]["active"] is False


def test_cli_refuses_a_proposal_without_clause_and_reviews(home: Path, tmp_path: Path) -> None:
    definition = tmp_path / "oil_leak.json"
    definition.write_text(json.dumps(OIL_LEAK, ensure_ascii=False), encoding="utf-8")
    code, out = run("taxonomy", "propose", str(definition), "--kind", "class", "--org", "420000")
    assert code == 2 and "missing_legal_clause" in out
    code, out = run(
        "taxonomy", "propose", str(definition), "--kind", "class", "--org", "420000",
        "--clause-text", CLAUSE["text"], "--citation", CLAUSE["citation"],
    )  # fmt: skip
    assert code == 0, out
    addition_id = out.strip().splitlines()[-1]
    assert run("keys", "create", "--org", "420000", "--role", "legal", "--name", "fz-1")[0] == 0
    code, out = run("taxonomy", "review", addition_id, "--decision", "reject", "--org", "420000", "--as", "fz-1")
    assert code == 2 and "reason_required" in out
    code, out = run(
        "taxonomy", "review", addition_id, "--decision", "approve", "--org", "420000", "--as", "fz-1",
        "--reason", "依据充分",
    )  # fmt: skip
    assert code == 0 and "approved" in out, out
    code, out = run("taxonomy", "additions", "--org", "420000")
    rows = json.loads(out[out.index("[") :])
    assert [(r["key"], r["status"], r["reviewed_by"]) for r in rows] == [("oil_leak", "approved", "fz-1")]
