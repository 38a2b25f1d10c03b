"""The enforcement system, asynchronously: a photo posted with ?async=true is answered 202, analysed in
the background, and its findings reach the organisation's webhook: a real HTTP receiver on loopback
(http.server in a thread) that checks the HMAC signature itself and fails the first attempt, so the
retry with backoff is proven; the delivery log tells every attempt. The synchronous path is as it was."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from hazardlens.errors import Invalid
from hazardlens.labeling.webhooks import RetryPolicy, check_url, sign, verify
from hazardlens.orm import InspectionPhoto, WebhookDelivery
from tests.fixtures.core import auth
from tests.fixtures.serving import photo, wait_for

RECORD = "鄂应急检〔2026〕5号"
FORM = {"enterprise_id": "91420100MA4K", "sector": "general", "inspector_id": "执法证42010001"}


class Receiver:
    """The enforcement system's end: verifies each request's signature with the hook's secret (its own
    HMAC, not ours), answers 500 to the first attempt at /flaky and to every one at /down."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                parts = dict(p.split("=", 1) for p in self.headers["X-Hazardlens-Signature"].split(","))
                secret = receiver.secrets[self.path].encode()
                expected = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
                with receiver.lock:
                    seen = sum(c["path"] == self.path for c in receiver.calls)
                    receiver.calls.append(
                        {
                            "path": self.path,
                            "body": body,
                            "valid": hmac.compare_digest(expected, parts["v1"]),
                            "timestamp": self.headers["X-Hazardlens-Timestamp"],
                            "t": parts["t"],
                            "event": self.headers["X-Hazardlens-Event"],
                            "delivery": self.headers["X-Hazardlens-Delivery"],
                            "at": time.monotonic(),
                        }
                    )
                fail = self.path == "/down" or (self.path == "/flaky" and seen == 0)
                self.send_response(500 if fail else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def calls_to(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def _hook(api, key, receiver, path, **body):  # type: ignore[no-untyped-def]
    r = api.post("/v1/webhooks", json={"url": receiver.url + path, **body}, headers=auth(key))
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["secret"].startswith("whsec_") and hook["secret_hint"] == hook["secret"][:10] + "…"
    receiver.secrets[path] = hook["secret"]
    return hook


def _post(api, key, *, idem=None, asynchronous=True, seed=1):  # type: ignore[no-untyped-def]
    headers = {**auth(key), **({"Idempotency-Key": idem} if idem else {})}
    return api.post(
        f"/v1/inspections/{quote(RECORD, safe='')}/photos",
        params={"async": "true"} if asynchronous else None,
        data=FORM,
        headers=headers,
        files={"file": ("现场.jpg", photo(seed=seed), "image/jpeg")},
    )


def test_async_photo_findings_arrive_signed_by_webhook_after_a_retry(api, make_key, ctx, receiver) -> None:
    api.app.state.webhook_policy = RetryPolicy(base_s=0.3, factor=2.0, max_attempts=2, timeout_s=5, lease_s=30)
    admin, service = make_key("420000", "admin"), make_key("420000", "service")
    flaky = _hook(api, admin, receiver, "/flaky", description="执法系统")
    down = _hook(api, service, receiver, "/down", events=["inspection.findings"])

    first = _post(api, service, idem="batch-7/photo-1")
    assert first.status_code == 202, first.text
    queued = first.json()
    assert queued["status"] in ("queued", "running") and queued["photo"] is None
    assert first.headers["location"] == f"/v1/inspection-submissions/{queued['id']}"
    again = _post(api, service, idem="batch-7/photo-1")  # the client's retry: the same submission
    assert again.status_code == 202 and again.json()["id"] == queued["id"]
    assert again.headers.get("idempotent-replayed") == "true"

    assert wait_for(lambda: len(receiver.calls_to("/flaky")) >= 2, timeout=120), receiver.calls
    calls = receiver.calls_to("/flaky")
    assert all(c["valid"] for c in calls), "a signature did not verify"
    assert all(c["timestamp"] == c["t"] and abs(int(c["t"]) - time.time()) < 300 for c in calls)
    assert calls[0]["delivery"] == calls[1]["delivery"] and calls[0]["body"] == calls[1]["body"]
    assert calls[1]["at"] - calls[0]["at"] >= 0.25  # backoff before the retry
    payload = json.loads(calls[1]["body"])
    assert payload["event"] == "inspection.findings" == calls[1]["event"] and payload["org_code"] == "420000"
    data = payload["data"]
    assert data["id"] == queued["id"] and data["status"] == "done" and data["idempotency_key"] == "batch-7/photo-1"
    record = api.get(f"/v1/inspections/{quote(RECORD, safe='')}", headers=auth(service)).json()
    assert [f["id"] for f in data["photo"]["findings"]] == [f["id"] for f in record["photos"][0]["findings"]]
    assert data["photo"]["findings"] and data["photo"]["record_no"] == RECORD

    # The delivery log: the failed attempt and the successful one.
    def delivered() -> bool:
        items = api.get(f"/v1/webhooks/{flaky['id']}/deliveries", headers=auth(admin)).json()["items"]
        return bool(items) and items[0]["status"] == "delivered"

    assert wait_for(delivered, timeout=30)
    (entry,) = api.get(f"/v1/webhooks/{flaky['id']}/deliveries", headers=auth(admin)).json()["items"]
    assert entry["attempts"] == 2 and entry["last_status_code"] == 204 and entry["delivered_at"]
    assert [a["status_code"] for a in entry["log"]] == [500, 204] and entry["log"][0]["error"] == "HTTP 500"
    assert entry["payload"] == payload

    # The hook that never answers well gives up after max_attempts, and says so.
    def gave_up() -> bool:
        items = api.get(f"/v1/webhooks/{down['id']}/deliveries", headers=auth(admin)).json()["items"]
        return bool(items) and items[0]["status"] == "failed"

    assert wait_for(gave_up, timeout=60)
    assert len(receiver.calls_to("/down")) == 2

    sub = api.get(f"/v1/inspection-submissions/{queued['id']}", headers=auth(service)).json()
    assert sub["status"] == "done" and sub["photo"]["photo_id"] == data["photo"]["photo_id"]
    with ctx.db.session() as s:  # two posts with one key, one photo
        assert s.scalar(select(func.count()).select_from(InspectionPhoto)) == 1


def test_the_synchronous_path_is_unchanged_and_sends_nothing(api, make_key, ctx, receiver) -> None:
    admin = make_key("420000", "admin")
    _hook(api, admin, receiver, "/flaky")
    r = _post(api, admin, asynchronous=False)
    assert r.status_code == 201 and r.json()["findings"] and r.json()["replayed"] is False
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    # An async post that is not an image is refused at once, not reported later.
    bad = api.post(
        f"/v1/inspections/{quote(RECORD, safe='')}/photos",
        params={"async": "true"},
        data=FORM,
        headers=auth(admin),
        files={"file": ("x.jpg", b"not an image at all", "image/jpeg")},
    )
    assert bad.status_code in (415, 422), bad.text


def test_webhooks_belong_to_their_organisation(api, make_key, receiver) -> None:
    admin = make_key("420000", "admin")
    hook = _hook(api, admin, receiver, "/flaky")
    listed = api.get("/v1/webhooks", headers=auth(admin)).json()["items"]
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    other = make_key("330000", "admin")
    assert api.get(f"/v1/webhooks/{hook['id']}", headers=auth(other)).status_code == 404
    assert api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth(other)).status_code == 404
    assert api.delete(f"/v1/webhooks/{hook['id']}", headers=auth(other)).status_code == 404
    assert api.get("/v1/webhooks", headers=auth(other)).json()["items"] == []
    assert (
        api.post("/v1/webhooks", json={"url": receiver.url}, headers=auth(make_key("420000", "inspector"))).status_code
        == 403
    )
    for url in ("ftp://example.org/x", "http://user:pw@127.0.0.1/x", "javascript:alert(1)", "http://h/a#frag"):
        r = api.post("/v1/webhooks", json={"url": url}, headers=auth(admin))
        assert r.status_code == 422, url  # the document's pattern refuses it before the domain does
        with pytest.raises(Invalid) as refused:
            check_url(url)
        assert refused.value.code == "invalid_webhook_url"
    assert check_url(receiver.url + "/x?y=1") == receiver.url + "/x?y=1"
    gone = api.delete(f"/v1/webhooks/{hook['id']}", headers=auth(admin))
    assert gone.status_code == 200 and gone.json()["deleted_at"]
    assert api.get("/v1/webhooks", headers=auth(admin)).json()["items"] == []
    assert api.get(f"/v1/webhooks/{hook['id']}", headers=auth(admin)).status_code == 404
    assert api.delete(f"/v1/webhooks/{hook['id']}", headers=auth(admin)).status_code == 404
    assert api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth(admin)).status_code == 404  # gone with it
    assert api.get("/v1/inspection-submissions/1", headers=auth(other)).status_code == 404


def test_signature_verification_refuses_tampering_and_old_timestamps() -> None:
    secret, body, now = "whsec_test", b'{"event":"inspection.findings"}', int(time.time())
    header = f"t={now},v1={sign(secret, now, body)}"
    assert verify(secret, header, body)
    assert not verify(secret, header, body + b" ")
    assert not verify("whsec_other", header, body)
    old = now - 3600
    assert not verify(secret, f"t={old},v1={sign(secret, old, body)}", body)
    assert not verify(secret, "garbage", body)
