"""Answers of the service's own endpoints: liveness and readiness, who a key belongs to, and the
taxonomy with the derived-finding rules in force (``GET /healthz``, ``/readyz``, ``/v1/me``, ``/v1/taxonomy``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hazardlens.contracts.common import Public


class Health(Public):
    status: Literal["ok"]
    version: str = Field(description="hazardlens version")


class Readiness(Public):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Literal["ok", "failed"]] = Field(
        description="each part (catalogue, store, model...): ok or failed; the server's log says why"
    )


class Me(Public):
    name: str
    org_code: str
    role: str
    permissions: list[str]
    system: bool = Field(
        description="an administrator of the system organisation (HAZARDLENS_SYSTEM_ORG): may see and act on "
        "every organisation's figures, jobs and registry"
    )


class SectorPublic(Public):
    key: str
    name_zh: str
    name_en: str


class InspectionItemPublic(Public):
    code: str
    sector: str
    title_zh: str
    title_en: str
    legal_basis: list[str]
    active: bool
    org_code: str | None = Field(description="set for a provincial addition")
    status: str = Field(description="legal-review state; national items are approved")


class HazardClassPublic(Public):
    key: str
    name_zh: str
    name_en: str
    sector: str
    inspection_items: list[str]
    severity: str
    finding_zh: str
    finding_en: str | None
    is_hazard: bool = Field(description="false for context classes (a person, a worn helmet)")
    legal_basis: list[str]
    active: bool
    org_code: str | None
    status: str


class RulePublic(Public):
    key: str
    kind: str
    evidence_class: str | None
    inputs: list[str] = Field(description="classes the rule reads")
    sectors: list[str]
    finding_zh: str
    finding_en: str
    inspection_items: list[str]
    legal_basis: list[str]
    severity: str | None
    min_confidence: float
    geometry: dict[str, Any] = Field(description="subject, region, evidence and the other parameters as configured")


class TaxonomyPublic(Public):
    version: str = Field(description="content hash of the taxonomy in force")
    release: str
    severities: list[str]
    sectors: list[SectorPublic]
    items: list[InspectionItemPublic]
    classes: list[HazardClassPublic]
    rules: list[RulePublic]
    rules_version: str


__all__ = [
    "HazardClassPublic",
    "Health",
    "InspectionItemPublic",
    "Me",
    "Readiness",
    "RulePublic",
    "SectorPublic",
    "TaxonomyPublic",
]
