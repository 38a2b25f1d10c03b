"""What the webhook API takes and answers (``/v1/webhooks``, its delivery log) and the answer to an
asynchronous inspection photo (``?async=true``, ``/v1/inspection-submissions/{id}``). Signing and
retries: :mod:`hazardlens.labeling.webhooks`; the submissions: :mod:`hazardlens.labeling.inspection_async`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hazardlens.contracts.common import Contract, ErrorBody, Public
from hazardlens.contracts.detections import PhotoResponse

#: The webhook URLs accepted (hazardlens.labeling.webhooks.check_url applies it too): http(s), a host
#: name or IPv4 address, an optional port, then no whitespace, control characters or fragment.
URL_PATTERN = r"^https?://[A-Za-z0-9][A-Za-z0-9.\-]*(:[0-9]{1,5})?([/?][^\x00-\x20\x7f#]*)?$"
WebhookEvent = Literal["inspection.findings", "inspection.failed"]


def _all_events() -> list[WebhookEvent]:
    return ["inspection.findings", "inspection.failed"]


class WebhookIn(Contract):
    url: str = Field(
        min_length=8,
        max_length=2000,
        pattern=URL_PATTERN,
        description="http(s) URL the events are POSTed to (no credentials, no fragment)",
    )
    events: list[WebhookEvent] = Field(default_factory=_all_events, min_length=1, max_length=2)
    description: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")


class WebhookPublic(Public):
    id: int
    org_code: str
    url: str
    events: list[str]
    description: str | None
    created_at: str | None
    deleted_at: str | None = Field(description="set once deleted: nothing more is sent")
    secret_hint: str = Field(description="the first characters of the signing secret, to tell hooks apart")


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="the signing secret, shown only now: HMAC-SHA256 over '<timestamp>.' + body, "
        "in X-Hazardlens-Signature: t=<timestamp>,v1=<hex>"
    )


class WebhookList(Public):
    items: list[WebhookPublic]


class DeliveryAttempt(Public):
    attempt: int
    at: str | None
    status_code: int | None = Field(description="the receiver's HTTP status; null when no answer came")
    error: str | None
    ms: float


class DeliveryPublic(Public):
    id: int
    webhook_id: int
    event: str
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    log: list[DeliveryAttempt]
    payload: dict[str, Any] = Field(description="what is sent: {event, org_code, occurred_at, data}")
    created_at: str | None
    delivered_at: str | None


class DeliveryPage(Public):
    items: list[DeliveryPublic] = Field(description="newest first")


class SubmissionPublic(Public):
    """A photo posted with ``async=true``: queued, running, done (``photo`` is the answer the
    synchronous path gives) or failed (``error``)."""

    id: int
    record_no: str
    status: Literal["queued", "running", "done", "failed"]
    idempotency_key: str | None
    photo_id: int | None
    error: ErrorBody | None = Field(description="why it failed (or the last transient failure while queued)")
    attempts: int
    created_at: str | None
    finished_at: str | None
    photo: PhotoResponse | None


__all__ = [
    "DeliveryAttempt",
    "DeliveryPage",
    "DeliveryPublic",
    "SubmissionPublic",
    "WebhookCreated",
    "WebhookEvent",
    "WebhookIn",
    "WebhookList",
    "WebhookPublic",
]
