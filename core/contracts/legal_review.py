"""Provincial inspection items and classes under legal review (法制审核): proposal, decision, listing."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from hazardlens.contracts.common import Contract, Public

AdditionKind = Literal["item", "class"]
AdditionStatus = Literal["pending", "approved", "rejected"]
#: The clause's wording may run to a few paragraphs; a citation is one line.
ClauseText = Annotated[str, StringConstraints(min_length=1, max_length=5000)]
Citation = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
Reason = Annotated[str, StringConstraints(max_length=2000)]


class LegalClause(Contract):
    """The mandatory clause of a law, regulation or standard the addition rests on."""

    text: ClauseText = Field(description="the clause's wording")
    citation: Citation = Field(description="where it is written, e.g. 'GB 30871-2022 第5.2.1条'")


class AdditionProposal(Contract):
    """An organisation admin's proposal. ``definition`` is the item or class as the taxonomy file writes
    it (an item: code, sector, title_zh, title_en; a class: key, name_zh, name_en, sector,
    inspection_items, severity, finding_zh, is_hazard...); the clause's citation is added to its
    legal_basis."""

    kind: AdditionKind
    definition: dict[str, Any] = Field(description="the item or class, fields as in configs/taxonomy.yaml")
    legal_clause: LegalClause | None = Field(None, description="required: a proposal without one is refused")


class AdditionDecision(Contract):
    decision: Literal["approve", "reject"]
    reason: Reason | None = Field(None, description="required to reject: why the clause does not carry it")


class AdditionPublic(Public):
    id: int
    kind: AdditionKind
    key: str
    org_code: str
    status: AdditionStatus
    definition: dict[str, Any]
    legal_text: str | None
    legal_citation: str | None
    proposed_by: str | None
    reviewed_by: str | None
    review_reason: str | None
    created_at: str
    reviewed_at: str | None


class AdditionsResponse(Public):
    additions: list[AdditionPublic]
