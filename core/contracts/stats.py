"""What the figures API answers (``GET /v1/stats/findings``, ``GET /v1/stats/models``): counts of
inspection findings by group, and the field precision of each model version. The figures are made
by :mod:`hazardlens.labeling.stats`; CSV exports carry the same columns."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hazardlens.contracts.common import Public

#: What findings can be grouped by: sector of the photo, inspection item (a finding with several items
#: counts under each), class (the inspector's final class), rule (empty: detected directly),
#: enterprise, month (Beijing time), organisation.
StatsGroup = Literal["sector", "item", "class", "rule", "enterprise", "month", "org"]
STATS_GROUPS: tuple[str, ...] = ("sector", "item", "class", "rule", "enterprise", "month", "org")


class Outcomes(Public):
    """What became of suggestions: ``pending`` (not decided yet), ``confirmed`` (as suggested),
    ``corrected`` (confirmed with another box or class), ``rejected``."""

    findings: int = Field(description="suggested findings in the group, whatever became of them")
    pending: int
    confirmed: int
    corrected: int
    rejected: int


class FindingGroup(Outcomes):
    key: dict[str, str] = Field(description="the group's value per dimension, e.g. {'sector': 'general'}")
    label: dict[str, str] = Field(description="Chinese names of the values where the taxonomy has them")
    records: int = Field(description="distinct inspection records with a finding in the group")


class FindingStats(Public):
    group_by: list[StatsGroup]
    date_from: str | None = Field(description="start of the period (inclusive), ISO 8601")
    date_to: str | None = Field(description="end of the period (inclusive), ISO 8601")
    org: str | None = Field(description="the organisation counted; null: every organisation (system only)")
    total: Outcomes
    groups: list[FindingGroup] = Field(description="largest first")


class ModelClassPrecision(Outcomes):
    """One model version's suggestions of one class (and rule), and what inspectors made of them.
    Shares are of the decided ones (confirmed + corrected + rejected); null while none is decided."""

    model_version: str
    class_key: str = Field(description="the class the model suggested (all: every class of the version)")
    rule: str = Field(description="the rule that derived the suggestion; empty: detected directly")
    name_zh: str
    decided: int
    confirmed_share: float | None
    corrected_share: float | None
    rejected_share: float | None
    precision: float | None = Field(
        description="field precision: the share of decided suggestions the inspector kept (confirmed or corrected)"
    )


class ModelStats(Public):
    date_from: str | None
    date_to: str | None
    org: str | None
    models: list[ModelClassPrecision] = Field(description="per version: the version's total (class 'all') first")


__all__ = [
    "STATS_GROUPS",
    "FindingGroup",
    "FindingStats",
    "ModelClassPrecision",
    "ModelStats",
    "Outcomes",
    "StatsGroup",
]
