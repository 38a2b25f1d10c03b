"""Shared building blocks of the contract layer: constrained strings, the error shape, pages.

Every request model forbids unknown fields and bounds every string, list and number, so the OpenAPI
document says exactly what the server accepts (a client generated from it cannot send what the
server would refuse, and a fuzzer finds no gap between the two).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: No control characters (they end up in logs, file names and PDF reports).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

#: Free text identifiers from other systems (site, camera, enterprise ids, tags): 1-100 printable chars.
Text100 = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_PRINTABLE)]
Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_PRINTABLE)]
#: Taxonomy keys (sectors, classes): lower-case words joined by underscores.
Key = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^[a-z][a-z0-9_]*$")]
#: Organisation (region) codes: the six-digit administrative division code, or another short code.
OrgCode = Annotated[str, StringConstraints(min_length=1, max_length=12, pattern=r"^[A-Za-z0-9_-]+$")]

#: An ISO date (2024-05-01) or date-time (2024-05-01T08:30:00+08:00), as ``hazardlens.dates.parse_when``
#: reads it; empty means none. For ``json_schema_extra`` of fields the domain parses itself (invalid_date).
WHEN_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
        {"type": "string", "maxLength": 0},
    ],
    "maxLength": 40,
}
#: The sector of the taxonomy in force: the app's OpenAPI document lists them (serving.document).
SECTOR_SCHEMA: dict[str, Any] = {"x-hazardlens-enum": "sectors"}

AnnotationState = Literal["unlabeled", "in_progress", "submitted", "approved", "rejected"]
Scope = Literal["private", "shared"]
SampleSource = Literal["inspection", "import", "feedback"]


class Contract(BaseModel):
    """Base of request models: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Public(BaseModel):
    """Base of response models: what the server answers, documented field by field."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)


class ErrorBody(Public):
    code: str = Field(description="stable machine-readable code, e.g. too_large, model_unavailable")
    message: str
    details: Any | None = None


class ErrorResponse(Public):
    """The one error shape of every route: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


class Message(Public):
    """A plain acknowledgement."""

    ok: bool = True
    message: str | None = None


__all__ = [
    "SECTOR_SCHEMA",
    "WHEN_SCHEMA",
    "AnnotationState",
    "Contract",
    "ErrorBody",
    "ErrorResponse",
    "Key",
    "Message",
    "OrgCode",
    "Public",
    "SampleSource",
    "Scope",
    "Text100",
    "Text200",
]
