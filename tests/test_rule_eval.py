"""Rule findings scored against labelled evidence boxes (training/rule_eval.py), on sets with a known answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from hazardlens.detections import Box
from hazardlens.training.rule_eval import evaluate_rule_findings, match_findings


@dataclass
class Finding:  # the shape of hazardlens.rules.RuleFinding that the scorer reads
    rule: str
    box: tuple[float, float, float, float]
    confidence: float
    evidence_class: str = "head"


def test_a_hand_made_set() -> None:
    gt = {
        "a.jpg": [Box("head", 10, 10, 20, 20), Box("head", 100, 100, 110, 110), Box("helmet", 50, 50, 60, 60)],
        "b.jpg": [Box("head", 0, 0, 10, 10)],
        "c.jpg": [],  # labelled, nothing there
    }
    findings = {
        "a.jpg": [
            Finding("no_helmet", (11, 11, 21, 21), 0.9),  # IoU 0.68 with the first head: TP
            Finding("no_helmet", (0, 0, 60, 60), 0.8),  # holds only the first head's centre, taken: FP
            Finding("no_helmet", (10, 10, 20, 20), 0.7),  # the first head again, already taken: FP
            Finding("no_helmet", (50, 50, 60, 60), 0.95, "helmet"),  # another evidence class: not scored
        ],
        "b.jpg": [Finding("no_helmet", (300, 300, 310, 310), 0.6)],  # far away: FP; the head is missed
        "c.jpg": [Finding("no_helmet", (1, 1, 5, 5), 0.5)],  # nothing labelled: FP
    }
    # The 0.9 finding takes the head at (10,10); the 0.8 finding (0..60) holds no other head centre
    # ((105,105) is outside), so it is a FP; the 0.7 one is a duplicate of the first head: FP.
    r = evaluate_rule_findings(findings, gt, "head")
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"], r["findings"]) == (1, 4, 2, 3, 5)
    assert r["precision"] == pytest.approx(1 / 5, abs=1e-5) and r["recall"] == pytest.approx(1 / 3, abs=1e-5)
    # sorted: 0.9 TP, 0.8 FP, 0.7 FP, 0.6 FP, 0.5 FP -> one step of recall 1/3 at precision 1
    assert r["ap"] == pytest.approx(1 / 3, abs=1e-5)


def test_centre_inside_matches_when_iou_is_low_and_greedy_goes_by_confidence() -> None:
    gt = {"x": [Box("head", 40, 40, 50, 50)]}
    big = Finding("r", (0, 0, 200, 200), 0.4)  # IoU 0.0025, but the head's centre (45,45) lies inside
    assert evaluate_rule_findings({"x": [big]}, gt, "head")["tp"] == 1
    tight = Finding("r", (41, 41, 51, 51), 0.3)  # IoU 0.68, but less confident: the big box took the head
    r = evaluate_rule_findings({"x": [tight, big]}, gt, "head")
    assert (r["tp"], r["fp"]) == (1, 1)
    conf, tp, n_gt = match_findings({"x": [tight, big]}, gt, "head")
    assert list(conf) == [0.4, 0.3] and list(tp) == [True, False] and n_gt == 1
    # IoU alone matches too (centre outside the finding): below the threshold no, at it yes
    off = Finding("r", (46, 40, 56, 50), 0.5)  # the head's centre x=45 < 46: outside; IoU 40/160 = 0.25
    assert evaluate_rule_findings({"x": [off]}, gt, "head")["tp"] == 0
    assert evaluate_rule_findings({"x": [off]}, gt, "head", iou=0.25)["tp"] == 1


def test_a_generated_set_with_a_known_answer() -> None:
    """200 images; each holds 0-4 labelled heads. The rule finds a jittered copy of 70% of them
    (confidence in 0.5..1) and adds false findings far from any head (confidence in 0..0.6)."""
    rng = np.random.default_rng(7)
    gt: dict[int, list[Box]] = {}
    findings: dict[int, list[Finding]] = {}
    expected_tp = expected_fp = n_gt = 0
    scored: list[tuple[float, bool]] = []
    for image in range(200):
        heads = []
        for k in range(int(rng.integers(0, 5))):
            x, y = 100 * k + float(rng.uniform(0, 40)), float(rng.uniform(0, 40))  # 100 px apart: no overlaps
            heads.append(Box("head", x, y, x + 30, y + 30))
        gt[image] = heads + [Box("helmet", 900, 900, 930, 930)]  # other classes never count
        n_gt += len(heads)
        found = []
        for h in heads:
            if rng.random() < 0.7:
                dx, dy = rng.uniform(-3, 3, 2)
                c = float(rng.uniform(0.5, 1.0))
                found.append(Finding("no_helmet", (h.x1 + dx, h.y1 + dy, h.x2 + dx, h.y2 + dy), c))
                expected_tp += 1
                scored.append((c, True))
        for _ in range(int(rng.integers(0, 3))):
            c = float(rng.uniform(0.0, 0.6))
            found.append(Finding("no_helmet", (2000, 2000, 2030, 2030), c))
            expected_fp += 1
            scored.append((c, False))
        findings[image] = found
    r = evaluate_rule_findings(findings, gt, "head")
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"]) == (expected_tp, expected_fp, n_gt - expected_tp, n_gt)
    assert r["precision"] == pytest.approx(expected_tp / (expected_tp + expected_fp), abs=1e-5)
    assert r["recall"] == pytest.approx(expected_tp / n_gt, abs=1e-5)

    # AP by the textbook: walk the findings by confidence, precision envelope, sum over recall steps
    scored.sort(key=lambda t: -t[0])
    tps = fps = 0
    points = []
    for _, ok in scored:
        tps, fps = tps + ok, fps + (not ok)
        points.append((tps / n_gt, tps / (tps + fps)))
    ap, prev_r = 0.0, 0.0
    for i, (rec, _) in enumerate(points):
        best_p = max(p for _, p in points[i:])
        ap += (rec - prev_r) * best_p
        prev_r = rec
    assert r["ap"] == pytest.approx(ap, abs=1e-5)

    # at a confidence threshold of 0.6 only the true findings remain (false ones are below 0.6)
    high = evaluate_rule_findings(findings, gt, "head", conf=0.6)
    assert high["fp"] == 0 and high["precision"] == 1.0
    assert high["tp"] == sum(1 for c, ok in scored if ok and c >= 0.6)


def test_empty_inputs_and_plain_shapes() -> None:
    r = evaluate_rule_findings({}, {}, "head")
    assert (r["tp"], r["fp"], r["fn"], r["n_gt"], r["precision"], r["recall"], r["ap"]) == (0, 0, 0, 0, 0, 0, 0)
    # mappings and tuples work as well as objects
    gt = {"i": [("head", 0, 0, 10, 10), {"class_key": "head", "x1": 50, "y1": 50, "x2": 60, "y2": 60}]}
    fs = {"i": [{"box": [0, 0, 10, 10], "confidence": 0.9, "evidence_class": "head"}]}
    r = evaluate_rule_findings(fs, gt, "head")
    assert (r["tp"], r["fp"], r["fn"], r["ap"]) == (1, 0, 1, 0.5)
