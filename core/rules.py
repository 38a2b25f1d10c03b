"""Derived findings: rules over detections (``configs/rules.yaml``).

Many hazards are an absence or a relation, not an object: a worker whose head has no helmet, a
worker in own clothes where work clothes are required, a person in a confined-space entrance with
nobody watching, a person under a suspended ladle. A detector sees people, helmets and heads; these
rules turn what it sees into findings an inspector can confirm, each with its inspection items and
legal basis, like a hazard class.

The rule language is deliberately small: one typed rule kind (``anchored``) built from a handful of
primitives, no expressions, no regular expressions, no templates, at most :data:`MAX_RULES` rules.
Everything is validated when the file is loaded, against the taxonomy, and every problem is
reported at once with the file and the rule's key, like the taxonomy's own checks: a rule that
silently never fires (a misspelt class) would look like a clean site.

An ``anchored`` rule:

* ``subject``: the detections it is anchored on (``person``), with a minimum confidence and size;
* ``region``: a box derived from each subject box, as fractions of its width and height measured
  from its top-left corner (``y: [0, 0.2]`` is the top fifth; ``y: [1, 3]`` a band twice the box's
  height below it), so geometry needs no pixels;
* ``evidence`` (optional): a class that is the finding by itself (``head`` = a head without a
  helmet). An evidence box that lies in a subject's region is paired with that subject: one
  finding, not two, and the subject strengthens it;
* ``require``: matchers that must each find a detection in (or near) the region;
* ``absent``: matchers whose detections, when found, lower the confidence (a worn helmet);
* a matcher is a class plus either ``overlap`` (``iou``, ``ioa`` = share of the candidate inside
  the region, ``ior`` = share of the region the candidate covers, with a minimum) or ``distance``
  (the edge-to-edge gap, in units of the subject box's longer side).

Confidence, and why:

* an evidence finding starts at the evidence detection's confidence; a paired subject adds
  support by a noisy-or, ``1 - (1 - c_evidence) * (1 - c_subject * support)``: a head inside a
  person's head region is more likely a real head than a round object on a shelf;
* a subject-only finding (nothing was seen, something is missing) is weaker evidence than a
  detection, so it is ``c_subject * prod(c_required) * prod(1 - best c_absent) * factor`` with
  ``factor`` < 1; and it is made only when the subject is large enough for the missing thing to be
  visible (``min_height_px``), and only when the detector knows the absent classes at all
  (``model_classes``): a model without a helmet class sees no helmets anywhere;
* ``absent`` matchers also apply to evidence findings, measured on the evidence box: a helmet
  detected on the very spot of a "head without helmet" means the model is unsure between the two.

The finding's box is the evidence box when evidence supports it (so evaluation matches it to
labelled ``head`` boxes), else the region (``finding_box: region``), the subject box, or the best
required match's box. Findings name their ``evidence_class``: the labelled class they are matched
against in evaluation and confirmed as in the sample library.

This module is pure: detections in, findings out; it imports nothing above the core.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hazardlens.contracts.detections import rule_findings_public
from hazardlens.detections import Detections, box_iou
from hazardlens.errors import Invalid
from hazardlens.settings import Settings, config_path, get_settings
from hazardlens.taxonomy import SEVERITIES, Taxonomy, default_taxonomy

if TYPE_CHECKING:
    from hazardlens.context import Context

#: At most this many rules in a file: each runs on every photo, and a reviewer must read them all.
MAX_RULES = 32
#: At most this many matchers in one ``require`` or ``absent`` list.
MAX_MATCHERS = 4
#: Region fractions stay within [-REGION_LIMIT, 1 + REGION_LIMIT] of the subject box.
REGION_LIMIT = 4.0
#: Distances (box-size units) stay within this.
MAX_DISTANCE = 10.0
RULE_KINDS: tuple[str, ...] = ("anchored",)
MEASURES: tuple[str, ...] = ("iou", "ioa", "ior")
FINDING_BOXES: tuple[str, ...] = ("region", "subject", "match")
RULES_FILE = "rules.yaml"

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Key = Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[a-z][a-z0-9_]*$")]
ClassRef = Annotated[str, Field(min_length=1, max_length=80)]
Text = Annotated[str, Field(min_length=1, max_length=500)]
ItemCode = Annotated[str, Field(min_length=1, max_length=40)]


class _Strict(BaseModel):
    """Unknown keys are refused: a misspelt ``min_height_px`` must not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _classes(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Region(_Strict):
    """A box derived from a subject box: ``x`` and ``y`` spans as fractions of its width and height,
    from its top-left corner. ``[0, 1]`` is the box itself; values outside reach beyond it."""

    x: tuple[float, float] = (0.0, 1.0)
    y: tuple[float, float] = (0.0, 1.0)

    @field_validator("x", "y")
    @classmethod
    def _span(cls, span: tuple[float, float]) -> tuple[float, float]:
        lo, hi = span
        if not (-REGION_LIMIT <= lo < hi <= 1.0 + REGION_LIMIT):
            raise ValueError(f"must be [low, high] with {-REGION_LIMIT} <= low < high <= {1 + REGION_LIMIT}")
        return span

    def of(self, xyxy: np.ndarray) -> np.ndarray:
        """Regions of (N, 4) boxes, as (N, 4)."""
        xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
        w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
        return np.stack(
            [
                xyxy[:, 0] + self.x[0] * w,
                xyxy[:, 1] + self.y[0] * h,
                xyxy[:, 0] + self.x[1] * w,
                xyxy[:, 1] + self.y[1] * h,
            ],
            axis=1,
        )


class Overlap(_Strict):
    """``iou``; ``ioa``: share of the candidate box inside the region; ``ior``: share of the region
    the candidate covers."""

    measure: Literal["iou", "ioa", "ior"] = "ioa"
    min: float = Field(gt=0.0, le=1.0)


class Matcher(_Strict):
    """Detections of ``class`` (one key or a list) in the region (``overlap``) or near it
    (``distance``: edge-to-edge gap <= this many times the subject box's longer side)."""

    cls: Annotated[list[ClassRef], Field(alias="class", min_length=1, max_length=8)]
    overlap: Overlap | None = None
    distance: float | None = Field(None, ge=0.0, le=MAX_DISTANCE)
    min_confidence: Unit = 0.0

    _split = field_validator("cls", mode="before")(_classes)

    @model_validator(mode="after")
    def _one_test(self) -> Matcher:
        if (self.overlap is None) == (self.distance is None):
            raise ValueError("give exactly one of 'overlap' or 'distance'")
        return self


class Subject(_Strict):
    """The detections a rule is anchored on. ``min_height_px``/``min_width_px`` (original pixels)
    gate subject-only findings: below them the missing thing could not be seen anyway."""

    cls: Annotated[list[ClassRef], Field(alias="class", min_length=1, max_length=8)]
    min_confidence: Unit = 0.0
    min_height_px: float = Field(0.0, ge=0.0, le=100_000)
    min_width_px: float = Field(0.0, ge=0.0, le=100_000)

    _split = field_validator("cls", mode="before")(_classes)


class Evidence(_Strict):
    """A class that is the finding by itself. ``overlap`` decides when an evidence box belongs to a
    subject (it lies in the subject's region); ``support`` weighs the subject's confidence in the
    noisy-or; ``alone: false`` keeps evidence that no subject holds from becoming a finding."""

    cls: Annotated[list[ClassRef], Field(alias="class", min_length=1, max_length=8)]
    overlap: Overlap = Overlap(measure="ioa", min=0.5)
    support: Unit = 0.3
    alone: bool = True
    min_confidence: Unit = 0.0

    _split = field_validator("cls", mode="before")(_classes)


class Rule(_Strict):
    """One rule. After loading, ``finding_zh``, ``finding_en``, ``inspection_items``,
    ``legal_basis``, ``severity`` and ``sectors`` are always filled (inherited from
    ``evidence_class`` where the rule states none)."""

    key: Key
    kind: Literal["anchored"] = "anchored"
    evidence_class: ClassRef | None = None
    finding_zh: Text | None = None
    finding_en: Text | None = None
    inspection_items: Annotated[list[ItemCode], Field(max_length=10)] | None = None
    legal_basis: Annotated[list[Text], Field(min_length=1, max_length=10)] | None = None
    severity: Literal["low", "medium", "high", "critical"] | None = None
    sectors: Annotated[list[Key], Field(min_length=1, max_length=10)] | None = None
    subject: Subject
    region: Region = Region()
    evidence: Evidence | None = None
    require: Annotated[list[Matcher], Field(max_length=MAX_MATCHERS)] = []
    absent: Annotated[list[Matcher], Field(max_length=MAX_MATCHERS)] = []
    factor: float = Field(1.0, gt=0.0, le=1.0)
    min_confidence: Unit = 0.1
    finding_box: Literal["region", "subject", "match"] = "region"

    @staticmethod
    def shape_problems(raw: dict[str, Any]) -> list[str]:
        """Checks across fields, on the raw mapping: pydantic skips model validators once a field
        fails, and every problem must be reported at once."""
        problems = []
        if not raw.get("evidence") and not raw.get("require") and not raw.get("absent"):
            problems.append("a rule needs 'evidence', 'require' or 'absent' (a bare subject is just a detection)")
        if raw.get("evidence") and raw.get("require"):
            problems.append("'evidence' and 'require' do not mix: evidence is a finding by itself")
        if raw.get("finding_box") == "match" and not raw.get("require"):
            problems.append("finding_box 'match' needs a 'require' matcher")
        return problems

    def input_classes(self) -> list[str]:
        keys = [*self.subject.cls, *(self.evidence.cls if self.evidence else [])]
        keys += [k for m in (*self.require, *self.absent) for k in m.cls]
        return list(dict.fromkeys(keys))


class RulesFile(_Strict):
    version: Literal[1]
    rules: list[Any]  # each entry is checked on its own, so one bad rule does not hide the others' problems


class FindingBox(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class RuleFinding(BaseModel):
    """One derived finding. ``inputs`` are indices into the detections given to ``apply``; the first
    is the detection the box comes from (the evidence, else the subject)."""

    rule: str
    box: FindingBox
    confidence: float
    evidence_class: str | None
    finding_zh: str
    finding_en: str
    inspection_items: list[str]
    legal_basis: list[str]
    severity: str | None
    inputs: list[int]

    def box_dict(self) -> dict[str, float]:
        return {k: round(float(v), 1) for k, v in self.box.model_dump().items()}


# ---- geometry ---------------------------------------------------------------------------------


def overlap_scores(measure: str, candidates: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N,) overlap of N candidate boxes with one region by ``measure`` (see :class:`Overlap`)."""
    candidates = np.asarray(candidates, np.float64).reshape(-1, 4)
    region = np.asarray(region, np.float64).reshape(4)
    if measure == "iou":
        return np.asarray(box_iou(candidates, region[None]).reshape(-1), np.float64)
    tl = np.maximum(candidates[:, :2], region[:2])
    br = np.minimum(candidates[:, 2:], region[2:])
    inter = (br - tl).clip(0).prod(axis=1)
    if measure == "ioa":
        area = (candidates[:, 2:] - candidates[:, :2]).clip(0).prod(axis=1)
    else:  # ior
        area = np.full(len(candidates), max(float(np.prod((region[2:] - region[:2]).clip(0))), 0.0))
    return np.asarray(inter / np.maximum(area, 1e-9))


def box_gaps(candidates: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(N,) edge-to-edge distance from each candidate box to the region (0 when they touch)."""
    candidates = np.asarray(candidates, np.float64).reshape(-1, 4)
    region = np.asarray(region, np.float64).reshape(4)
    gx = np.maximum(0.0, np.maximum(region[0] - candidates[:, 2], candidates[:, 0] - region[2]))
    gy = np.maximum(0.0, np.maximum(region[1] - candidates[:, 3], candidates[:, 1] - region[3]))
    return np.asarray(np.hypot(gx, gy))


# ---- the rule set -----------------------------------------------------------------------------


class _Frame:
    """Detections as plain arrays, once per ``apply``."""

    def __init__(self, detections: Detections) -> None:
        self.xyxy = np.asarray(detections.xyxy, np.float64).reshape(-1, 4)
        self.keys = [str(k) for k in detections.class_keys]
        self.conf = (
            np.ones(len(self.keys)) if detections.confidence is None else np.asarray(detections.confidence, np.float64)
        )

    def of(self, classes: Sequence[str], min_conf: float = 0.0, exclude: Iterable[int] = ()) -> np.ndarray:
        wanted, skip = set(classes), set(exclude)
        return np.array(
            [i for i, k in enumerate(self.keys) if k in wanted and self.conf[i] >= min_conf and i not in skip],
            dtype=np.int64,
        )

    def matches(self, m: Matcher, region: np.ndarray, unit: float, exclude: Iterable[int]) -> np.ndarray:
        """Indices of detections that ``m`` finds for ``region``, most confident first."""
        idx = self.of(m.cls, m.min_confidence, exclude)
        if len(idx) == 0:
            return idx
        if m.overlap is not None:
            ok = overlap_scores(m.overlap.measure, self.xyxy[idx], region) >= m.overlap.min
        else:
            assert m.distance is not None
            ok = box_gaps(self.xyxy[idx], region) <= m.distance * unit
        idx = idx[ok]
        return idx[np.argsort(-self.conf[idx], kind="stable")]


class RuleSet:
    """Validated rules, ready to apply. Build with :meth:`load` or :func:`default_rules`."""

    def __init__(self, rules: Iterable[Rule], *, source: str = "rules", version: str = "") -> None:
        self.rules: list[Rule] = list(rules)
        self.source = source
        self.version = version or _hash([r.model_dump(mode="json", by_alias=True) for r in self.rules])
        self._by_key = {r.key: r for r in self.rules}

    def __repr__(self) -> str:
        return f"RuleSet(source={self.source!r}, version={self.version!r}, rules={[r.key for r in self.rules]})"

    def get(self, key: str) -> Rule | None:
        return self._by_key.get(key)

    @classmethod
    def load(cls, path: Path | None = None, taxonomy: Taxonomy | None = None) -> RuleSet:
        """Read and validate a rules file (default: ``configs/rules.yaml`` through the same config
        lookup as the taxonomy) against ``taxonomy`` (default: the configured one)."""
        path = Path(path) if path is not None else config_path(RULES_FILE)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise Invalid(f"cannot read rules file {path}: {exc}", code="invalid_rules") from exc
        return cls.from_dict(raw, taxonomy if taxonomy is not None else default_taxonomy(), source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, taxonomy: Taxonomy, *, source: str = "rules") -> RuleSet:
        """Validate parsed YAML; raises Invalid (code ``invalid_rules``) listing every problem."""
        errors: list[str] = []
        rules: list[Rule] = []
        entries: list[Any] = []
        try:
            entries = RulesFile.model_validate(raw).rules
        except ValidationError as exc:
            errors += [f"{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
            if isinstance(raw, dict) and isinstance(raw.get("rules"), list):
                entries = raw["rules"]  # still check the rules, so every problem is reported at once
        if len(entries) > MAX_RULES:
            errors.append(f"rules: {len(entries)} rules; at most {MAX_RULES} are allowed")
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            key = entry.get("key") if isinstance(entry, dict) else None
            where = f"rules[{i}]" + (f" ({key})" if isinstance(key, str) and key else "")
            if not isinstance(entry, dict):
                errors.append(f"{where}: expected a mapping")
                continue
            shape = [f"{where}: {p}" for p in Rule.shape_problems(entry)]
            try:
                rule = Rule.model_validate(entry)
            except ValidationError as exc:
                errors += [
                    f"{where}.{_loc(e['loc'])}: {e['msg']}" if e["loc"] else f"{where}: {e['msg']}"
                    for e in exc.errors()
                ]
                errors += shape
                continue
            errors += shape
            if rule.key in seen:
                errors.append(f"{where}: duplicate rule key {rule.key!r}")
            seen.add(rule.key)
            resolved = _resolve(rule, taxonomy, where, errors)
            if resolved is not None and not shape:
                rules.append(resolved)
        if errors:
            shown = "; ".join(errors[:20]) + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
            raise Invalid(
                f"{source}: {len(errors)} problem(s): {shown}",
                code="invalid_rules",
                details=[f"{source}: {e}" for e in errors],
            )
        return cls(rules, source=source)

    # ---- applying -----------------------------------------------------------------------------

    def for_sector(self, sector: str | None) -> list[Rule]:
        return [r for r in self.rules if sector is None or sector in (r.sectors or [])]

    def apply(
        self,
        detections: Detections,
        sector: str | None = None,
        conf: float = 0.0,
        *,
        image_size: tuple[int, int] | None = None,
        model_classes: Iterable[str] | None = None,
    ) -> list[RuleFinding]:
        """Findings derived from ``detections`` (pixels of the oriented image; ground truth without
        confidences counts as confidence 1), most confident first.

        ``sector`` keeps the rules relevant to it (give the detections unfiltered by sector: a
        person is a general class, yet a confined-space helmet rule needs it). ``conf`` drops
        findings below it (each rule's own ``min_confidence`` applies too). ``image_size``
        (width, height) clips region boxes to the image. ``model_classes``: the classes the
        detector knows; a rule whose ``absent``/``require`` classes it does not know makes no
        subject-only findings (None: assume it knows them all).
        """
        frame = _Frame(detections)
        known = None if model_classes is None else set(model_classes)
        out: list[RuleFinding] = []
        for rule in self.for_sector(sector):
            out += _apply_rule(rule, frame, max(float(conf), rule.min_confidence), known, image_size)
        out.sort(key=lambda f: -f.confidence)
        return out

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready rules for ``GET /v1/taxonomy``: what each rule reads and what it finds."""
        out = []
        for r in self.rules:
            geometry = r.model_dump(
                mode="json",
                by_alias=True,
                include={"subject", "region", "evidence", "require", "absent", "factor", "finding_box"},
            )
            out.append(
                {
                    "key": r.key,
                    "kind": r.kind,
                    "evidence_class": r.evidence_class,
                    "inputs": r.input_classes(),
                    "sectors": list(r.sectors or []),
                    "finding_zh": r.finding_zh,
                    "finding_en": r.finding_en,
                    "inspection_items": list(r.inspection_items or []),
                    "legal_basis": list(r.legal_basis or []),
                    "severity": r.severity,
                    "min_confidence": r.min_confidence,
                    "geometry": geometry,
                }
            )
        return out


def _apply_rule(
    rule: Rule, frame: _Frame, floor: float, known: set[str] | None, image_size: tuple[int, int] | None
) -> list[RuleFinding]:
    subjects = frame.of(rule.subject.cls, rule.subject.min_confidence)
    regions = rule.region.of(frame.xyxy[subjects]) if len(subjects) else np.zeros((0, 4))
    findings: list[RuleFinding] = []

    def emit(box: np.ndarray, confidence: float, inputs: list[int]) -> None:
        if confidence < floor or confidence <= 0.0:
            return
        b = np.asarray(box, np.float64).copy()
        if image_size is not None:
            b[[0, 2]] = b[[0, 2]].clip(0, image_size[0])
            b[[1, 3]] = b[[1, 3]].clip(0, image_size[1])
        if b[2] <= b[0] or b[3] <= b[1]:
            return  # the region lies outside the photo
        findings.append(
            RuleFinding(
                rule=rule.key,
                box=FindingBox(x1=b[0], y1=b[1], x2=b[2], y2=b[3]),
                confidence=round(confidence, 4),
                evidence_class=rule.evidence_class,
                finding_zh=rule.finding_zh or "",
                finding_en=rule.finding_en or "",
                inspection_items=list(rule.inspection_items or []),
                legal_basis=list(rule.legal_basis or []),
                severity=rule.severity,
                inputs=inputs,
            )
        )

    def discount(region: np.ndarray, unit: float, exclude: list[int]) -> tuple[float, list[int]]:
        factor, used = 1.0, []
        for m in rule.absent:
            found = frame.matches(m, region, unit, exclude)
            if len(found):
                factor *= 1.0 - float(frame.conf[found[0]])
                used.append(int(found[0]))
        return factor, used

    held: set[int] = set()  # subjects whose region holds evidence: that evidence's finding covers them
    if rule.evidence is not None:
        ev = rule.evidence
        evidence = frame.of(ev.cls, ev.min_confidence)
        pairs: dict[int, int] = {}  # evidence index -> subject index
        if len(evidence) and len(subjects):
            scores = np.stack([overlap_scores(ev.overlap.measure, frame.xyxy[evidence], r) for r in regions], axis=1)
            ok = scores >= ev.overlap.min
            held = {int(subjects[j]) for j in np.nonzero(ok.any(axis=0))[0]}
            taken: set[int] = set()
            for flat in np.argsort(-scores, axis=None, kind="stable"):  # best overlaps pair first, one-to-one
                e, s = np.unravel_index(flat, scores.shape)
                if ok[e, s] and int(e) not in pairs and int(s) not in taken:
                    pairs[int(e)] = int(s)
                    taken.add(int(s))
        for e_pos, e in enumerate(evidence):
            e = int(e)
            s_pos = pairs.get(e_pos)
            if s_pos is None and not ev.alone:
                continue
            confidence, inputs = float(frame.conf[e]), [e]
            if s_pos is not None:
                s = int(subjects[s_pos])
                confidence = 1.0 - (1.0 - confidence) * (1.0 - float(frame.conf[s]) * ev.support)
                inputs.append(s)
            box = frame.xyxy[e]
            factor, used = discount(box, _unit(box), inputs)
            emit(box, confidence * factor, inputs + used)

    needed = {k for m in (*rule.require, *rule.absent) for k in m.cls}
    if known is not None and not needed <= known:
        return findings  # the detector cannot see what the rule would call missing or present
    for s_pos, s in enumerate(subjects):
        s = int(s)
        if s in held:
            continue
        box = frame.xyxy[s]
        if box[3] - box[1] < rule.subject.min_height_px or box[2] - box[0] < rule.subject.min_width_px:
            continue
        region, unit = regions[s_pos], _unit(box)
        confidence, inputs, best_match = float(frame.conf[s]), [s], None
        for m in rule.require:
            found = frame.matches(m, region, unit, inputs)
            if not len(found):
                break
            confidence *= float(frame.conf[found[0]])
            inputs.append(int(found[0]))
            best_match = best_match if best_match is not None else int(found[0])
        else:
            factor, used = discount(region, unit, inputs)  # the person inside is not their own guardian
            target = {"region": region, "subject": box}.get(rule.finding_box)
            if target is None:
                target = frame.xyxy[best_match] if best_match is not None else region
            emit(target, confidence * factor * rule.factor, inputs + used)
    return findings


def _unit(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1], 1e-9))


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _hash(body: Any) -> str:
    text = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _resolve(rule: Rule, taxonomy: Taxonomy, where: str, errors: list[str]) -> Rule | None:
    """Check references against the taxonomy and fill inherited fields; None when it fails."""
    before = len(errors)
    refs: list[tuple[str, str]] = [("subject.class", k) for k in rule.subject.cls]
    if rule.evidence is not None:
        refs += [("evidence.class", k) for k in rule.evidence.cls]
    refs += [
        (f"{name}[{i}].class", k)
        for name in ("require", "absent")
        for i, m in enumerate(getattr(rule, name))
        for k in m.cls
    ]
    evidence_class = rule.evidence_class
    if evidence_class is None and rule.evidence is not None and len(rule.evidence.cls) == 1:
        evidence_class = rule.evidence.cls[0]  # the evidence is what a finding is labelled as
    if evidence_class is not None:
        refs.append(("evidence_class", evidence_class))
    for field, key in refs:
        try:
            taxonomy.get_class(key)
        except Invalid as exc:
            errors.append(f"{where}.{field}: {exc.message}")
    for code in rule.inspection_items or []:
        if code not in taxonomy.items:
            errors.append(f"{where}.inspection_items: unknown inspection item {code!r}")
    for sector in rule.sectors or []:
        if sector not in taxonomy.sectors:
            errors.append(f"{where}.sectors: unknown sector {sector!r}; known: {', '.join(taxonomy.sectors)}")
    if len(errors) > before:
        return None
    cls = taxonomy.classes[evidence_class] if evidence_class is not None else None
    items = rule.inspection_items if rule.inspection_items is not None else list(cls.inspection_items if cls else [])
    basis = rule.legal_basis
    if basis is None and cls is not None:
        basis = list(cls.legal_basis)
    if not basis and rule.inspection_items:  # a rule's own items carry their legal basis, like a class's
        basis = list(dict.fromkeys(b for c in items for b in taxonomy.items[c].legal_basis))
    filled = {
        "evidence_class": evidence_class,
        "finding_zh": rule.finding_zh or (cls.finding_zh if cls else None) or None,
        "finding_en": rule.finding_en or (cls.finding_en if cls else None) or None,
        "inspection_items": list(items),
        "legal_basis": list(basis or []),
        "severity": rule.severity or (cls.severity if cls else None),
        "sectors": rule.sectors or (sorted(taxonomy.class_sectors(cls)) if cls else None),
    }
    for name, why in (
        ("finding_zh", "the text an inspector would confirm"),
        ("finding_en", "its English text"),
        ("legal_basis", "the mandatory clause it rests on"),
        ("severity", f"one of {SEVERITIES}"),
        ("sectors", "the sectors it applies to"),
    ):
        if not filled[name]:
            errors.append(f"{where}: '{name}' is missing ({why}); state it or name an evidence_class that has it")
    if len(errors) > before:
        return None
    return rule.model_copy(update=filled)


# ---- the configured rule set ------------------------------------------------------------------

_cache_lock = threading.Lock()
_cache: dict[tuple[str, int, str], RuleSet] = {}


def default_rules(source: Context | Settings | None = None) -> RuleSet:
    """The configured rules (``configs/rules.yaml``, or the ``HAZARDLENS_CONFIG_DIR`` override's copy),
    validated against the shipped taxonomy of ``source`` (a Context or Settings; default: the
    process settings), and re-read only when the file changes (the API applies them per photo).
    Rules are checked against the shipped taxonomy, not provincial additions: an addition can be
    withdrawn, and a rule must not start or stop firing with a review decision."""
    settings = source if isinstance(source, Settings) else (source.settings if source is not None else get_settings())
    path = config_path(RULES_FILE).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise Invalid(f"cannot read rules file {path}: {exc}", code="invalid_rules") from exc
    taxonomy = (
        source.base_taxonomy if source is not None and not isinstance(source, Settings) else default_taxonomy(settings)
    )
    key = (str(path), mtime, taxonomy.version)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    rules = RuleSet.load(path, taxonomy)
    with _cache_lock:
        if len(_cache) >= 4:
            _cache.clear()
        _cache[key] = rules
    return rules


def finding_dicts(findings: Sequence[RuleFinding], detections: Detections) -> list[dict[str, Any]]:
    """The API's form of derived findings (:func:`hazardlens.contracts.detections.rule_findings_public`)
    as plain dicts: the rule's text, items and basis, and the input detections themselves."""
    return [f.model_dump() for f in rule_findings_public(findings, detections)]


__all__ = [
    "FINDING_BOXES",
    "MAX_MATCHERS",
    "MAX_RULES",
    "MEASURES",
    "RULE_KINDS",
    "Evidence",
    "FindingBox",
    "Matcher",
    "Overlap",
    "Region",
    "Rule",
    "RuleFinding",
    "RuleSet",
    "Subject",
    "box_gaps",
    "default_rules",
    "finding_dicts",
    "overlap_scores",
]
