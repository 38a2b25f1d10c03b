"""Figures over inspection findings: how many hazards of what kind, where and when, and how often
inspectors kept each model's suggestions (the field precision of a model, measured where it works).

Who sees what: an organisation's own findings; the system organisation (the ministry,
:func:`hazardlens.auth.is_system`) sees every organisation's, and may narrow to one with ``org``.
Another organisation asked for by anybody else is refused (403): these are counts, never records,
but they still tell how an organisation's enterprises are doing.

What is counted: every suggested finding (a hazard-class detection or a rule finding) recorded on an
inspection photo, by what became of it: ``pending`` (no decision yet), ``confirmed`` (kept as
suggested), ``corrected`` (kept with another box or class), ``rejected``. Grouping by class or rule
uses the inspector's final class (a correction to another class counts as that class, and no longer
as the rule's); the field precision groups by what the model suggested, because that is what is
being judged. Months and date-only bounds are in Beijing time (UTC+8), the inspectors' calendar.

The rows are read once per request (only the columns needed) and counted here rather than in SQL:
the item of a finding comes from the taxonomy and the rules, not from a column, and SQLite and
PostgreSQL do not agree on month arithmetic. :data:`MAX_ROWS` bounds one request.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.auth import Principal, is_system
from hazardlens.contracts.stats import (
    STATS_GROUPS,
    FindingGroup,
    FindingStats,
    ModelClassPrecision,
    ModelStats,
    Outcomes,
)
from hazardlens.dates import iso, parse_when, utc
from hazardlens.errors import Forbidden, Invalid
from hazardlens.orm import Finding, InspectionPhoto, Sample
from hazardlens.rules import RuleSet
from hazardlens.taxonomy import Taxonomy

BEIJING = timezone(timedelta(hours=8))
#: At most this many findings are counted per request (a province-year is far below it).
MAX_ROWS = 1_000_000
MAX_GROUP_DIMS = 3
OUTCOMES = ("pending", "confirmed", "corrected", "rejected")


@dataclass(frozen=True)
class Period:
    start: datetime | None
    end: datetime | None


def period(date_from: str | None, date_to: str | None) -> Period:
    """The period's bounds. A bare date is a Beijing-time day (``to`` includes the whole day);
    a date-time keeps its own offset."""

    def bound(text: str | None, end: bool, name: str) -> datetime | None:
        raw = (text or "").strip()
        if not raw:
            return None
        if len(raw) == 10:
            try:
                day = date.fromisoformat(raw)
            except ValueError:
                raise Invalid(f"{name} must be an ISO date (2026-03-01), not {raw!r}", code="invalid_date") from None
            try:
                start = datetime(day.year, day.month, day.day, tzinfo=BEIJING)
                return utc(start + timedelta(days=1) - timedelta(microseconds=1) if end else start)
            except OverflowError:  # 0001-01-01 or 9999-12-31 in Beijing time: the ends of time
                return datetime.max.replace(tzinfo=UTC) if end else datetime.min.replace(tzinfo=UTC)
        return parse_when(raw, end=end, name=name)

    # A period that ends before it starts is empty, not an error: nothing is counted.
    return Period(bound(date_from, False, "from"), bound(date_to, True, "to"))


def scope_org(principal: Principal, org: str | None) -> str | None:
    """The organisation whose findings are counted; None: all (the system organisation only)."""
    principal.require("inspections:read")
    wanted = (org or "").strip() or None
    if is_system(principal):
        return wanted
    if wanted is not None and wanted != principal.org_code:
        raise Forbidden("only the system organisation sees other organisations' figures", code="forbidden")
    return principal.org_code


def parse_groups(group_by: str | Sequence[str] | None) -> list[str]:
    """The dimensions of ``group_by`` (None: by class). A repeated one counts once; an empty list,
    an unknown dimension or more than three are refused."""
    if group_by is None:
        return ["class"]
    raw = group_by.split(",") if isinstance(group_by, str) else list(group_by)
    groups = list(dict.fromkeys(g.strip() for g in raw if g and g.strip()))
    unknown = [g for g in groups if g not in STATS_GROUPS]
    if unknown or not groups or len(groups) > MAX_GROUP_DIMS:
        raise Invalid(
            f"group_by takes 1-{MAX_GROUP_DIMS} different dimensions of {', '.join(STATS_GROUPS)}",
            code="invalid_group_by",
        )
    return groups


@dataclass(frozen=True)
class _Row:
    record_no: str
    org_code: str
    enterprise_id: str
    sector: str
    class_key: str  # what the model suggested
    rule: str
    final_class: str  # what the inspector kept (the suggestion's while undecided or rejected)
    final_rule: str
    outcome: str
    model_version: str
    month: str


def _outcome(status: str, review: dict[str, Any] | None) -> str:
    if status == "confirmed":
        return "corrected" if (review or {}).get("corrected") else "confirmed"
    return "rejected" if status == "rejected" else "pending"


def _rows(session: Session, org: str | None, p: Period) -> Iterator[_Row]:
    q = (
        select(
            Finding.class_key,
            Finding.rule,
            Finding.status,
            Finding.review,
            Finding.model_version,
            Finding.created_at,
            InspectionPhoto.record_no,
            InspectionPhoto.org_code,
            InspectionPhoto.enterprise_id,
            Sample.sector,
        )
        .join(InspectionPhoto, InspectionPhoto.id == Finding.photo_id)
        .join(Sample, Sample.id == Finding.sample_id)
        .order_by(Finding.id)
        .limit(MAX_ROWS + 1)
    )
    if org is not None:
        q = q.where(InspectionPhoto.org_code == org)
    if p.start is not None:
        q = q.where(Finding.created_at >= p.start)
    if p.end is not None:
        q = q.where(Finding.created_at <= p.end)
    for n, r in enumerate(session.execute(q.execution_options(yield_per=2000))):
        if n >= MAX_ROWS:
            raise Invalid(f"more than {MAX_ROWS:,} findings in the period: choose a shorter one", code="too_many_rows")
        outcome = _outcome(r.status, r.review)
        final = str((r.review or {}).get("class_key") or r.class_key) if outcome == "corrected" else r.class_key
        when = utc(r.created_at)
        yield _Row(
            record_no=r.record_no,
            org_code=r.org_code,
            enterprise_id=r.enterprise_id or "",
            sector=r.sector or "",
            class_key=r.class_key,
            rule=r.rule or "",
            final_class=final,
            final_rule=(r.rule or "") if final == r.class_key else "",
            outcome=outcome,
            model_version=r.model_version,
            month=when.astimezone(BEIJING).strftime("%Y-%m") if when is not None else "",
        )


class _Labels:
    """Chinese names of group values from the taxonomy and the rules."""

    def __init__(self, tax: Taxonomy, rules: RuleSet | None) -> None:
        self.tax, self.rules = tax, rules

    def items(self, row: _Row) -> list[str]:
        rule = self.rules.get(row.final_rule) if self.rules is not None and row.final_rule else None
        if rule is not None:
            return list(rule.inspection_items or []) or [""]
        cls = self.tax.classes.get(row.final_class)
        return list(cls.inspection_items) if cls is not None and cls.inspection_items else [""]

    def label(self, dim: str, value: str) -> str | None:
        if dim == "sector" and value in self.tax.sectors:
            return self.tax.sectors[value].name_zh
        if dim == "class" and value in self.tax.classes:
            return self.tax.classes[value].name_zh
        if dim == "item" and value in self.tax.items:
            return self.tax.items[value].title_zh
        if dim == "rule" and self.rules is not None and value:
            rule = self.rules.get(value)
            return rule.finding_zh if rule is not None else None
        return None


def _values(dim: str, row: _Row, labels: _Labels) -> list[str]:
    if dim == "item":
        return labels.items(row)
    return [
        {
            "sector": row.sector,
            "class": row.final_class,
            "rule": row.final_rule,
            "enterprise": row.enterprise_id,
            "month": row.month,
            "org": row.org_code,
        }[dim]
    ]


def _keys(dims: Sequence[str], row: _Row, labels: _Labels) -> Iterable[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for dim in dims:
        combos = [(*c, v) for c in combos for v in dict.fromkeys(_values(dim, row, labels))]
    return combos


def _outcomes(counts: dict[str, int]) -> dict[str, int]:
    return {"findings": sum(counts.get(o, 0) for o in OUTCOMES), **{o: counts.get(o, 0) for o in OUTCOMES}}


def finding_stats(
    session: Session,
    principal: Principal,
    tax: Taxonomy,
    rules: RuleSet | None,
    *,
    group_by: str | Sequence[str] | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    org: str | None = None,
) -> FindingStats:
    """Findings counted by ``group_by`` (1-3 of :data:`STATS_GROUPS`) in the period."""
    dims = parse_groups(group_by)
    scope = scope_org(principal, org)
    p = period(date_from, date_to)
    labels = _Labels(tax, rules)
    counts: dict[tuple[str, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    records: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)
    total: dict[str, int] = defaultdict(int)
    for row in _rows(session, scope, p):
        total[row.outcome] += 1
        for key in _keys(dims, row, labels):
            counts[key][row.outcome] += 1
            records[key].add((row.org_code, row.record_no))
    groups = []
    for key, c in counts.items():
        label = {d: n for d, v in zip(dims, key, strict=True) if (n := labels.label(d, v))}
        groups.append(
            FindingGroup(key=dict(zip(dims, key, strict=True)), label=label, records=len(records[key]), **_outcomes(c))
        )
    groups.sort(key=lambda g: (-g.findings, tuple(g.key.values())))
    return FindingStats(
        group_by=dims,  # checked by parse_groups (a list of StatsGroup values)
        date_from=iso(p.start),
        date_to=iso(p.end),
        org=scope,
        total=Outcomes(**_outcomes(total)),
        groups=groups,
    )


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _precision(version: str, cls: str, rule: str, name: str, c: dict[str, int]) -> ModelClassPrecision:
    decided = c.get("confirmed", 0) + c.get("corrected", 0) + c.get("rejected", 0)
    return ModelClassPrecision(
        model_version=version,
        class_key=cls,
        rule=rule,
        name_zh=name,
        decided=decided,
        confirmed_share=_share(c.get("confirmed", 0), decided),
        corrected_share=_share(c.get("corrected", 0), decided),
        rejected_share=_share(c.get("rejected", 0), decided),
        precision=_share(c.get("confirmed", 0) + c.get("corrected", 0), decided),
        **_outcomes(c),
    )


def model_stats(
    session: Session,
    principal: Principal,
    tax: Taxonomy,
    rules: RuleSet | None,
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    org: str | None = None,
) -> ModelStats:
    """Per model version and suggested class (and rule): what inspectors made of its suggestions."""
    scope = scope_org(principal, org)
    p = period(date_from, date_to)
    labels = _Labels(tax, rules)
    per: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in _rows(session, scope, p):
        per[(row.model_version, row.class_key, row.rule)][row.outcome] += 1
        per[(row.model_version, "all", "")][row.outcome] += 1
    out = []
    for (version, cls, rule), c in sorted(per.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all", kv[0][1:])):
        if cls == "all":
            name = "全部类别"
        else:
            name = (labels.label("rule", rule) if rule else None) or labels.label("class", cls) or cls
        out.append(_precision(version, cls, rule, name, c))
    return ModelStats(date_from=iso(p.start), date_to=iso(p.end), org=scope, models=out)


# --- CSV -------------------------------------------------------------------------------------------


def _csv(header: list[str], rows: Iterable[list[Any]]) -> bytes:
    """UTF-8 with a byte-order mark, so that spreadsheet programs on Chinese Windows read the names."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def finding_stats_csv(stats: FindingStats) -> bytes:
    dims = list(stats.group_by)
    header = [*dims, *(f"{d}_name" for d in dims), "findings", *OUTCOMES, "records"]
    rows = (
        [
            *(g.key[d] for d in dims),
            *(g.label.get(d, "") for d in dims),
            g.findings,
            *(getattr(g, o) for o in OUTCOMES),
            g.records,
        ]
        for g in stats.groups
    )
    return _csv(header, rows)


def model_stats_csv(stats: ModelStats) -> bytes:
    cols = ["model_version", "class_key", "rule", "name_zh", "findings", *OUTCOMES, "decided"]
    shares = ["confirmed_share", "corrected_share", "rejected_share", "precision"]
    return _csv(cols + shares, ([getattr(m, c) for c in cols + shares] for m in stats.models))


__all__ = [
    "MAX_ROWS",
    "finding_stats",
    "finding_stats_csv",
    "model_stats",
    "model_stats_csv",
    "parse_groups",
    "period",
    "scope_org",
]
