"""The one sample filter: what the library search, queues, exports and dataset versions select by.

Before this type there were five builders of the same filter (the library's dataclass, the
dataset-version, export and queue parsers, and three route models) and they disagreed: only one
parsed dates. Now the API body, the query string and the CLI options all become this model, with
the same validation and the same date rules (a bare date as an end bound means the whole day).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema, field_validator

from hazardlens.contracts.common import AnnotationState, Key, OrgCode, SampleSource, Scope, Text100, Text200
from hazardlens.dates import parse_when
from hazardlens.errors import HazardError, Invalid

#: Dates are accepted as a day or an instant; the document says both.
When = Annotated[
    datetime | None,
    WithJsonSchema(
        {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}, {"type": "null"}]}
    ),
]


class SampleFilter(BaseModel):
    """Which samples: every set field must match (all date bounds inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sector: Key | None = Field(None, description="sector key, e.g. dust, steel")
    class_key: Key | None = Field(
        None, description="samples whose labels hold this class (dataset versions: their APPROVED labels)"
    )
    status: AnnotationState | None = Field(None, description="annotation status")
    org: OrgCode | None = Field(None, description="owning organisation code")
    scope: Scope | None = None
    site: Text100 | None = None
    camera: Text100 | None = None
    enterprise: Text100 | None = None
    source: SampleSource | None = None
    inspection_record: Text200 | None = None
    captured_from: When = Field(None, description="ISO date or date-time, inclusive")
    captured_to: When = Field(None, description="ISO date (the whole day) or date-time, inclusive")
    created_from: When = Field(None, description="ISO date or date-time, inclusive")
    created_to: When = Field(None, description="ISO date (the whole day) or date-time, inclusive")
    dup_group: Annotated[int, Field(ge=1, le=2**53)] | None = Field(None, description="near-duplicate group id")
    tag: Text100 | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        """Empty form fields and CLI defaults mean "no filter", as they always did."""
        if isinstance(value, str) and not value.strip():
            return None
        if info.field_name and info.field_name.endswith(("_from", "_to")) and isinstance(value, str):
            try:
                return parse_when(value, end=info.field_name.endswith("_to"), name=info.field_name)
            except HazardError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("captured_from", "captured_to", "created_from", "created_to")
    @classmethod
    def _utc(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return parse_when(value, end=bool(info.field_name and info.field_name.endswith("_to")))

    @classmethod
    def parse(cls, value: SampleFilter | Mapping[str, Any] | None) -> SampleFilter:
        """From itself, a mapping of its fields (API JSON, CLI options) or nothing. Unknown names are
        refused: a misspelt filter would otherwise select (export, assign) the whole library."""
        if value is None:
            return cls()
        if isinstance(value, SampleFilter):
            return value
        try:
            return cls.model_validate(dict(value))
        except ValidationError as exc:
            errors = exc.errors()
            unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and e["loc"])
            if unknown:
                raise Invalid(
                    f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(cls.model_fields)}",
                    code="invalid_filter",
                    details={"unknown": unknown},
                ) from None
            problems = [f"{'.'.join(str(p) for p in e['loc']) or 'filter'}: {e['msg']}" for e in errors]
            dates = all(str(e["loc"][0]).endswith(("_from", "_to")) for e in errors if e["loc"])
            raise Invalid(
                f"invalid sample filter: {'; '.join(problems)}",
                code="invalid_date" if dates else "invalid_filter",
                details=problems,
            ) from None

    def params(self) -> dict[str, Any]:
        """The set fields as plain JSON values (dates as ``datetime.isoformat`` text, as manifests have
        always recorded them, so re-creating a version with the same filter gives the same id)."""
        return {
            k: v.isoformat() if isinstance(v, datetime) else v for k, v in self.model_dump(exclude_none=True).items()
        }


__all__ = ["SampleFilter"]
