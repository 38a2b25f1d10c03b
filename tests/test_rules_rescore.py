"""`hazardlens rules score`: an evaluation's saved rule inputs scored again under a changed rules file
(no model run), on a generated set whose answer is known."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hazardlens.context import Context
from hazardlens.rules import RuleSet
from hazardlens.settings import config_path, get_settings
from hazardlens.training.evaluate import RULE_INPUTS_FILE, rescore_rules, score_rules, write_rule_inputs

CLASSES = ["person", "helmet", "head", "safety_clothes", "self_clothes", "fire", "smoke"]


def _generated() -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict | None]]:
    """Per image one tall person with nothing in its head region (a subject-only finding of
    person_without_helmet, confidence = person confidence x the rule's factor 0.6) and one labelled
    head under it on odd images only: on odd images the finding is right, on even ones it is false.
    Person confidence rises with the image number, so a higher floor keeps the later images only."""
    preds, items = {}, {}
    for i in range(20):
        conf = 0.3 + 0.035 * i
        preds[f"im{i:02d}.jpg"] = {
            "xyxy": np.array([[100, 100, 200, 500]], dtype=np.float32),
            "conf": np.array([conf], dtype=np.float32),
            "cls": np.array([0]),
        }
        boxes = [{"class_key": "person", "x1": 100, "y1": 100, "x2": 200, "y2": 500}]
        if i % 2:
            boxes.append({"class_key": "head", "x1": 120, "y1": 100, "x2": 180, "y2": 170})
        items[f"im{i:02d}.jpg"] = {"width": 640, "height": 640, "unlabeled_classes": [], "boxes": boxes}
    return preds, items


@pytest.fixture
def cli(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("HAZARDLENS_HOME", str(ctx.settings.home))
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def _rules(factor: float, floor: float) -> dict:
    """The shipped rules file with person_without_helmet's factor and floor fixed here, so the expected
    counts do not move when the shipped values are tuned."""
    raw = yaml.safe_load(config_path("rules.yaml").read_text(encoding="utf-8"))
    for rule in raw["rules"]:
        if rule["key"] == "person_without_helmet":
            rule["factor"], rule["min_confidence"] = factor, floor
    return raw


def _helmet_row(rows: list[dict], tag: str | None = None) -> dict:
    return next(r for r in rows if r["rule"] == "person_without_helmet" and r["tag"] == tag)


def test_saved_inputs_rescore_like_the_evaluation(ctx: Context, tmp_path: Path) -> None:
    preds, items = _generated()
    groups = {"odd": [n for n in preds if int(n[2:4]) % 2], "all-images": list(preds)}
    ruleset = RuleSet.from_dict(_rules(0.6, 0.1), ctx.taxonomy())
    direct = score_rules(ruleset, preds, items, CLASSES, groups)
    write_rule_inputs(tmp_path / RULE_INPUTS_FILE, preds, items, CLASSES, groups)
    again = rescore_rules(tmp_path, ruleset)
    assert again == direct
    row = _helmet_row(again)
    assert (row["tp"], row["fp"], row["n_gt"]) == (10, 10, 10)  # every person found, half are right
    assert _helmet_row(again, "odd")["precision"] == 1.0


def test_cli_scores_a_changed_floor(ctx: Context, cli: CliRunner, tmp_path: Path) -> None:
    from hazardlens.cli.main import app

    preds, items = _generated()
    write_rule_inputs(tmp_path / RULE_INPUTS_FILE, preds, items, CLASSES, {})
    raw = _rules(0.6, 0.5)  # person conf >= 0.5 / 0.6 = 0.833: images 16..19
    changed = tmp_path / "rules.yaml"
    changed.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    RuleSet.load(changed, ctx.taxonomy())  # the changed file is valid

    res = cli.invoke(app, ["rules", "score", str(tmp_path), "--rules", str(changed), "--json"])
    assert res.exit_code == 0, res.output
    row = _helmet_row(json.loads(res.output))
    assert (row["findings"], row["tp"], row["fp"]) == (4, 2, 2)
    assert row["recall"] == pytest.approx(0.2)

    res = cli.invoke(app, ["rules", "score", str(tmp_path / "nowhere")])
    assert res.exit_code != 0 and "rule_inputs" in res.output
