"""Webhooks: an organisation's enforcement system is told when something it waits for is ready (the
findings of a photo it posted with ``?async=true``), instead of holding a request open or polling.

Registration: an organisation's admin (or its service account) registers an ``http(s)`` URL; the
answer carries the hook's signing secret once (``whsec_...``). Hooks and their delivery logs belong
to the organisation: another organisation's hook is not found (404).

Signing: each attempt is sent with

* ``X-Hazardlens-Timestamp: <unix seconds>``
* ``X-Hazardlens-Signature: t=<the same seconds>,v1=<hex HMAC-SHA256(secret, "<seconds>." + body)>``
* ``X-Hazardlens-Event`` (e.g. ``inspection.findings``) and ``X-Hazardlens-Delivery`` (the delivery id,
  the same on every retry: a receiver that has seen it may answer 2xx and ignore it).

A receiver recomputes the HMAC over the raw body bytes, compares in constant time and refuses a
timestamp more than a few minutes old (:func:`verify` does exactly that). The timestamp is inside the
signed text, so an attacker can neither replay an old body later nor change a body without the
secret. Every attempt is signed afresh with its own time.

Retries: any answer but 2xx, a refused connection or a timeout is a failed attempt; the next comes
after ``base * factor**(attempt-1)`` seconds (capped), up to ``max_attempts``, then the delivery is
``failed``. The log of every attempt (time, status, error, milliseconds) is readable through the API.
Deliveries live in the catalogue, so a restart loses none: an attempt in flight holds a lease
(``next_attempt_at``) and is taken up again by any dispatcher once the lease runs out. Redirects are
not followed (a signed body goes to the registered URL only).

What a hook may reach: any http(s) URL, loopback and private addresses included, because the
enforcement systems of a province sit on its intranet; registering is an admin's (or the service
account's) act, audited like every change.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from hazardlens.audit import record as audit
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.webhooks import URL_PATTERN
from hazardlens.dates import iso
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.orm import Webhook, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

EVENTS = ("inspection.findings", "inspection.failed")
SIGNATURE_HEADER = "X-Hazardlens-Signature"
TIMESTAMP_HEADER = "X-Hazardlens-Timestamp"
EVENT_HEADER = "X-Hazardlens-Event"
DELIVERY_HEADER = "X-Hazardlens-Delivery"
MAX_URL = 2000
MAX_HOOKS_PER_ORG = 20
_LOG_ATTEMPTS = 20


@dataclass(frozen=True)
class RetryPolicy:
    """How deliveries are retried. The defaults ride out a receiver down for about two hours."""

    base_s: float = 30.0
    factor: float = 2.0
    max_delay_s: float = 3600.0
    max_attempts: int = 8
    timeout_s: float = 10.0
    lease_s: float = 60.0  # an attempt in flight longer than this is taken up again

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay_s, self.base_s * self.factor ** max(0, attempt - 1)))


# --- signing -----------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    return hmac.new(secret.encode("utf-8"), f"{int(timestamp)}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={int(timestamp)},v1={sign(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None, tolerance_s: float = 300.0) -> bool:
    """What a receiver does: the signature header matches the raw body under ``secret`` and its
    timestamp is within ``tolerance_s`` of ``now``."""
    parts = dict(p.split("=", 1) for p in (header or "").split(",") if "=" in p)
    try:
        ts = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(parts.get("v1", ""), sign(secret, ts, body))


def body_of(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact UTF-8 JSON, the same on every attempt."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


# --- registration ------------------------------------------------------------------------------------


def check_url(url: str) -> str:
    value = (url or "").strip()
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = urlsplit("")
    if (
        len(value) > MAX_URL
        or not re.fullmatch(URL_PATTERN, value)
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.fragment
        or any(ord(c) < 33 or ord(c) == 127 for c in value)
    ):
        raise Invalid(
            f"a webhook URL is an http(s) URL of at most {MAX_URL} characters, without credentials or fragment",
            code="invalid_webhook_url",
        )
    return value


def _events(events: Sequence[str] | None) -> list[str]:
    chosen = list(dict.fromkeys(e.strip() for e in (events or EVENTS) if e and e.strip()))
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown or not chosen:
        raise Invalid(f"events are some of {', '.join(EVENTS)}", code="invalid_webhook_events")
    return chosen


def webhook_dict(hook: Webhook, *, secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": hook.id,
        "org_code": hook.org_code,
        "url": hook.url,
        "events": list(hook.events or []),
        "description": hook.description,
        "created_at": iso(hook.created_at),
        "deleted_at": iso(hook.deleted_at),
        "secret_hint": hook.secret[:10] + "…",
    }
    if secret:
        out["secret"] = hook.secret
    return out


def create_webhook(
    session: Session,
    principal: Principal,
    url: str,
    events: Sequence[str] | None = None,
    description: str | None = None,
) -> Webhook:
    """Register a hook for the caller's organisation; its secret is on the returned row (show it once)."""
    principal.require("webhooks:manage")
    clean_url, chosen = check_url(url), _events(events)
    live = session.scalars(
        select(Webhook.id).where(Webhook.org_code == principal.org_code, Webhook.deleted_at.is_(None))
    ).all()
    if len(live) >= MAX_HOOKS_PER_ORG:  # the organisation's state, not the request, is in the way
        raise Conflict(f"an organisation has at most {MAX_HOOKS_PER_ORG} webhooks", code="too_many_webhooks")
    hook = Webhook(
        org_code=principal.org_code,
        url=clean_url,
        secret="whsec_" + secrets.token_urlsafe(32),
        events=chosen,
        description=(description or "").strip()[:200] or None,
        created_by=principal.user_id,
        created_at=utcnow(),
    )
    session.add(hook)
    session.flush()
    # The secret is never written to the audit log.
    audit(session, principal, "webhook.create", "webhook", hook.id, after={"url": clean_url, "events": chosen})
    return hook


def get_webhook(session: Session, principal: Principal, webhook_id: int, *, deleted: bool = False) -> Webhook:
    """A hook of the caller's organisation; a deleted one only with ``deleted``."""
    principal.require("webhooks:manage")
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.org_code != principal.org_code or (hook.deleted_at is not None and not deleted):
        raise NotFound(f"no webhook {webhook_id}", code="webhook_not_found")
    return hook


def list_webhooks(session: Session, principal: Principal) -> list[Webhook]:
    principal.require("webhooks:manage")
    q = select(Webhook).where(Webhook.org_code == principal.org_code, Webhook.deleted_at.is_(None))
    return list(session.scalars(q.order_by(Webhook.id)))


def delete_webhook(session: Session, principal: Principal, webhook_id: int) -> Webhook:
    """Stop a hook; deliveries still waiting are dropped as failed. A hook already deleted is not found
    (nor is its log, over the API: the rows stay in the catalogue)."""
    hook = get_webhook(session, principal, webhook_id)
    if hook.deleted_at is None:
        hook.deleted_at = utcnow()
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == hook.id, WebhookDelivery.status.in_(("pending", "delivering")))
            .values(status="failed", last_error="the webhook was deleted")
        )
        audit(session, principal, "webhook.delete", "webhook", hook.id, before={"url": hook.url})
    return hook


def delivery_dict(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "event": d.event,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.status in ("pending", "delivering") else None,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "log": list(d.log or []),
        "payload": d.payload,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
    }


def list_deliveries(
    session: Session, principal: Principal, webhook_id: int, *, status: str | None = None, limit: int = 50
) -> list[WebhookDelivery]:
    """A hook's delivery log, newest first. A deleted hook is gone, its log with it (the rows stay in
    the catalogue for the audit trail)."""
    hook = get_webhook(session, principal, webhook_id)
    q = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    if status:
        q = q.where(WebhookDelivery.status == status)
    return list(session.scalars(q.order_by(WebhookDelivery.id.desc()).limit(max(1, min(limit, 500)))))


# --- events ------------------------------------------------------------------------------------------


def enqueue(session: Session, org_code: str, event: str, data: Mapping[str, Any]) -> list[WebhookDelivery]:
    """One delivery per live hook of ``org_code`` that takes ``event``, due now (in the caller's
    transaction: the event and its deliveries are committed together or not at all)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    hooks = session.scalars(select(Webhook).where(Webhook.org_code == org_code, Webhook.deleted_at.is_(None)))
    now = utcnow()
    out = []
    for hook in hooks:
        if event not in (hook.events or []):
            continue
        payload = {"event": event, "org_code": org_code, "occurred_at": iso(now), "data": dict(data)}
        delivery = WebhookDelivery(
            webhook_id=hook.id,
            org_code=org_code,
            event=event,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            log=[],
            created_at=now,
        )
        session.add(delivery)
        out.append(delivery)
    session.flush()
    return out


# --- delivery ----------------------------------------------------------------------------------------


def _claim_deliveries(ctx: Context, policy: RetryPolicy, limit: int = 10) -> list[int]:
    """Take due deliveries (pending and due, or an attempt whose lease ran out); the conditional
    update makes a claim atomic across processes."""
    now = utcnow()
    due = or_(
        and_(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now),
        and_(WebhookDelivery.status == "delivering", WebhookDelivery.next_attempt_at <= now),
    )
    claimed = []
    with ctx.db.session() as session:
        ids = list(
            session.scalars(
                select(WebhookDelivery.id).where(due).order_by(WebhookDelivery.next_attempt_at).limit(limit)
            )
        )
        for delivery_id in ids:
            res = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, due)
                .values(status="delivering", next_attempt_at=now + timedelta(seconds=policy.lease_s))
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                claimed.append(delivery_id)
    return claimed


def deliver(ctx: Context, delivery_id: int, client: httpx.Client, policy: RetryPolicy) -> str:
    """One attempt at a claimed delivery; returns its new status."""
    with ctx.db.read_session() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        hook = session.get(Webhook, delivery.webhook_id) if delivery is not None else None
        if delivery is None or hook is None:
            return "missing"
        url, secret, payload, event = hook.url, hook.secret, dict(delivery.payload), delivery.event
        attempt, deleted = delivery.attempts + 1, hook.deleted_at is not None
    if deleted:
        status_code, error, ms = None, "the webhook was deleted", 0.0
    else:
        body = body_of(payload)
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "hazardlens-webhooks",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: signature_header(secret, ts, body),
            EVENT_HEADER: event,
            DELIVERY_HEADER: str(delivery_id),
        }
        start = time.perf_counter()
        status_code, error = None, None
        try:
            answer = client.post(url, content=body, headers=headers, timeout=policy.timeout_s)
            status_code = answer.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        ms = round((time.perf_counter() - start) * 1000, 1)
    now = utcnow()
    if error is None:
        status, next_at = "delivered", None
    elif deleted or attempt >= policy.max_attempts:
        status, next_at = "failed", None
    else:
        status, next_at = "pending", now + timedelta(seconds=policy.delay(attempt))
    entry = {"attempt": attempt, "at": iso(now), "status_code": status_code, "error": error, "ms": ms}
    with ctx.db.session() as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None:
            return "missing"
        row.attempts = attempt
        row.status = status
        row.next_attempt_at = next_at
        row.last_status_code = status_code
        row.last_error = error
        row.log = [*(row.log or []), entry][-_LOG_ATTEMPTS:]
        if status == "delivered":
            row.delivered_at = now
    if error is not None:
        log.warning("webhook delivery %s attempt %d: %s (%s)", delivery_id, attempt, error, status)
    return status


class Loop:
    """A daemon thread that calls ``step`` until it reports no work, then waits ``poll_s`` or a
    :meth:`wake`. Survives errors in a step (a catalogue hiccup must not stop deliveries)."""

    name = "hazardlens-loop"

    def __init__(self, poll_s: float = 1.0) -> None:
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def step(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:
                log.exception("%s: step failed", self.name)
                busy = False
            if not busy:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class Dispatcher(Loop):
    """Sends due deliveries, one attempt each per step."""

    name = "hazardlens-webhooks"

    def __init__(
        self,
        ctx: Context,
        policy: RetryPolicy | None = None,
        *,
        poll_s: float = 1.0,
        client_factory: Callable[[], httpx.Client] | None = None,
    ) -> None:
        super().__init__(min(poll_s, (policy or RetryPolicy()).base_s))
        self.ctx = ctx
        self.policy = policy or RetryPolicy()
        self._client = (client_factory or (lambda: httpx.Client(follow_redirects=False, trust_env=False)))()

    def step(self) -> bool:
        ids = _claim_deliveries(self.ctx, self.policy)
        for delivery_id in ids:
            if self._stop.is_set():  # the rest are taken up again when their lease runs out
                break
            deliver(self.ctx, delivery_id, self._client, self.policy)
        return bool(ids)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._client.close()


__all__ = [
    "DELIVERY_HEADER",
    "EVENTS",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Dispatcher",
    "Loop",
    "RetryPolicy",
    "body_of",
    "check_url",
    "create_webhook",
    "delete_webhook",
    "deliver",
    "delivery_dict",
    "enqueue",
    "get_webhook",
    "list_deliveries",
    "list_webhooks",
    "sign",
    "signature_header",
    "verify",
    "webhook_dict",
]
