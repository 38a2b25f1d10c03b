"""Federation between instances (issue 17): the signed protocol's pages (changes, model offers,
feedback reports) and what the API shows of peers, origins and field feedback. Every field bounded:
a peer's answer is parsed like any other input."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from hazardlens.contracts.common import Contract, Key, OrgCode, Public, Scope

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name100 = Annotated[str, Field(min_length=1, max_length=100)]
Count = Annotated[int, Field(ge=0, le=10**9)]
Coord = Annotated[float, Field(ge=-1e6, le=1e6)]


class FederatedBox(Contract):
    class_key: Key
    x1: Coord
    y1: Coord
    x2: Coord
    y2: Coord


class FederatedRevision(Contract):
    """A sample's approved revision with its provenance at the origin."""

    origin_revision_id: int = Field(ge=1)
    number: int = Field(ge=1)
    boxes: list[FederatedBox] = Field(max_length=2000)
    unlabeled_classes: list[Key] = Field(default_factory=list, max_length=200)
    author: str | None = Field(None, max_length=200)
    author_org: OrgCode | None = None
    reviewer: str | None = Field(None, max_length=200)
    reviewed_at: str | None = Field(None, max_length=40)


class SampleChange(Contract):
    """``upsert``: the sample is shared (metadata, bytes by hash, approved revision); ``withdraw``: it
    was shared and is no longer (made private or deleted) and must be taken out of the library."""

    op: Literal["upsert", "withdraw"]
    origin_sample_id: int = Field(ge=1)
    org_code: OrgCode | None = None
    sha256: Sha256 | None = None
    phash: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    width: int | None = Field(None, ge=1, le=100_000)
    height: int | None = Field(None, ge=1, le=100_000)
    format: str | None = Field(None, max_length=10)
    size_bytes: int | None = Field(None, ge=1, le=2**40)
    sector: str | None = Field(None, max_length=40)
    tags: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=100)
    captured_at: str | None = Field(None, max_length=40)
    revision: FederatedRevision | None = None


class ChangesPage(Contract):
    changes: list[SampleChange] = Field(max_length=1000)
    cursor: int = Field(ge=0)
    more: bool


class ModelOffer(Contract):
    name: Name100
    version: Annotated[str, Field(min_length=1, max_length=40)]
    stage: str = Field(max_length=20)
    classes: list[Key] = Field(max_length=1000)
    imgsz: int = Field(ge=32, le=8192)
    weights_sha256: Sha256
    size_bytes: int = Field(ge=1, le=2**34)
    card: dict[str, object]


class ModelOffers(Contract):
    models: list[ModelOffer] = Field(max_length=1000)


#: An item code (``GT-01``) or a class key (``oil_leak``).
AdditionKey = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
MAX_DEFINITION_CHARS = 20_000


class AdditionOffer(Contract):
    """One approved provincial item or class as its instance serves it: the definition, the legal clause
    it rests on and who approved it when (the peer's own additions, never copies pulled from others)."""

    origin_id: int = Field(ge=1, le=2**62)
    kind: Literal["item", "class"]
    key: AdditionKey
    org_code: OrgCode
    definition: dict[str, Any] = Field(max_length=60)
    legal_text: str = Field(min_length=1, max_length=5000)
    legal_citation: str = Field(min_length=1, max_length=500)
    proposed_by: str | None = Field(None, max_length=200)
    reviewed_by: str | None = Field(None, max_length=200)
    review_reason: str | None = Field(None, max_length=2000)
    reviewed_at: str | None = Field(None, max_length=40)

    @field_validator("definition")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, ensure_ascii=False, default=str)) > MAX_DEFINITION_CHARS:
            raise ValueError(f"a definition is limited to {MAX_DEFINITION_CHARS} characters of JSON")
        return value


class AdditionOffers(Contract):
    """A page of approved additions in id order; ``next``: the ``after`` of the next page."""

    additions: list[AdditionOffer] = Field(max_length=500)
    next: int = Field(ge=0)
    more: bool


class FeedbackCount(Contract):
    """Inspector decisions on suggested findings of one model version and class (totals)."""

    model_name: Name100
    model_version: Name100
    class_key: Key
    confirmed: Count = 0
    corrected: Count = 0
    rejected: Count = 0


class FeedbackReport(Contract):
    counts: list[FeedbackCount] = Field(max_length=10_000)


class FeedbackAck(Contract):
    received: int


# ---- what the API shows ---------------------------------------------------------------------


class PeerSchedule(Public):
    """The peer's scheduled pull (``pull_every_s`` None: off)."""

    pull_every_s: int | None
    full_pull_every_s: int | None = Field(description="every how often the scheduled pull starts from cursor 0")
    pull_what: list[str]
    next_pull_at: str | None
    next_full_pull_at: str | None
    pull_job_id: int | None = Field(description="the job of the last scheduled pull (GET /v1/jobs/{id})")


class PeerPublic(Public):
    name: str
    url: str
    key_id: str
    public_key: str
    org_code: str | None
    allow: list[str]
    created_at: str | None
    last_seen_at: str | None
    schedule: PeerSchedule


class PeersResponse(Public):
    instance_key_id: str | None = Field(description="this instance's own key id")
    peers: list[PeerPublic]


class SampleOrigin(Public):
    """Where a sample pulled from another instance came from, and its label's provenance."""

    sample_id: int
    instance: str = Field(description="the peer (instance) it was pulled from")
    instance_url: str
    org_code: str = Field(description="the organisation that shared it there")
    origin_sample_id: int
    origin_revision_id: int | None
    provenance: dict[str, object] | None
    withdrawn_at: str | None
    updated_at: str | None


class FieldFeedbackRow(Public):
    model_name: str
    model_version: str
    class_key: str
    confirmed: int
    corrected: int
    rejected: int
    precision: float | None = Field(description="confirmed / all decided (None before any decision)")
    peers: list[str]


class FieldFeedback(Public):
    rows: list[FieldFeedbackRow]


class PulledAddition(Public):
    """A peer's approved addition pulled here: read-only, usable by no organisation until adopted."""

    id: int
    instance: str = Field(description="the peer (instance) it was pulled from")
    origin_id: int = Field(description="the addition's id at that instance")
    org_code: str = Field(description="the organisation that proposed it there")
    kind: Literal["item", "class"]
    key: str
    definition: dict[str, Any]
    legal_text: str
    legal_citation: str
    proposed_by: str | None
    reviewed_by: str | None = Field(description="the legal reviewer who approved it there")
    review_reason: str | None
    reviewed_at: str | None
    pulled_at: str | None
    withdrawn_at: str | None = Field(description="set when the peer no longer offers it")
    adopted_addition_id: int | None = Field(description="the local addition made from it (GET /v1/taxonomy/additions)")
    adopted_at: str | None


class PulledAdditions(Public):
    additions: list[PulledAddition]


class AdoptAddition(Contract):
    """Adopt a pulled addition for one organisation of this instance (default: the system organisation)."""

    org_code: OrgCode | None = Field(None, description="the organisation that may use it (default: the system one)")


class ScopeChange(Contract):
    scope: Scope


class ScopeChanged(Public):
    sample_id: int
    scope: Scope
