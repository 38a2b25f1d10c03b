"""Choose a rule's settings on a validation split: score a grid of variants of one rule on the detections
an evaluation saved (``rule_inputs.json``, written by ``hazardlens evaluate``), without running the model.

    .venv/bin/python benchmarks/rule_sweep.py EVAL_DIR [--rule person_without_helmet]
        [--factor 0.6 0.45 0.3 0.15] [--min-confidence 0.1 0.2 0.3 0.4 0.5] [--min-height 100 150 200]
        [--sources hardhat-workers sfchd-ppe] [--write configs/rules.yaml]

For every combination of the subject-only factor (how much a person with nothing seen in its head
region counts; a low factor leaves mostly the findings with direct evidence, a detected head), the
rule's minimum confidence and the subject's minimum height, prints precision and recall per source
and the worst of them; the best variant is the one whose worst precision-or-recall over the named
sources is highest, ties going to the higher mean (the issue's goal is that both reach 0.6 on every
source). Use it on a VALIDATION evaluation; report the chosen setting on the test split with
``hazardlens evaluate`` (never choose on the split you report). ``--write`` puts the chosen values
into a rules file (comments are lost: edit the shipped one by hand instead).
"""

from __future__ import annotations

import argparse
import copy
import itertools
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--rule", default="person_without_helmet")
    parser.add_argument("--factor", type=float, nargs="+", default=[0.6, 0.45, 0.3, 0.15])
    parser.add_argument("--min-confidence", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--min-height", type=int, nargs="+", default=[100, 150, 200])
    parser.add_argument("--sources", nargs="+", default=["hardhat-workers", "sfchd-ppe"])
    parser.add_argument("--rules", type=Path, default=None, help="rules file to start from (default: configured)")
    parser.add_argument("--write", type=Path, default=None, help="write the best variant's rules file here")
    args = parser.parse_args()

    from hazardlens.rules import RuleSet
    from hazardlens.settings import config_path
    from hazardlens.taxonomy import default_taxonomy
    from hazardlens.training.evaluate import rescore_rules

    base = yaml.safe_load((args.rules or config_path("rules.yaml")).read_text(encoding="utf-8"))
    taxonomy = default_taxonomy()
    results: list[tuple[float, float, dict[str, Any], dict[str, Any]]] = []
    print(f"rule {args.rule} on {args.eval_dir}")
    print("| factor | min conf | min height | " + " | ".join(f"{s} P | {s} R" for s in args.sources) + " | worst |")
    print("|---" * (4 + 2 * len(args.sources)) + "|")
    for factor, floor, height in itertools.product(args.factor, args.min_confidence, args.min_height):
        raw = copy.deepcopy(base)
        rule = next(r for r in raw["rules"] if r["key"] == args.rule)
        rule["factor"] = factor
        rule["min_confidence"] = floor
        rule.setdefault("subject", {})["min_height_px"] = height
        rows = rescore_rules(args.eval_dir, RuleSet.from_dict(raw, taxonomy, source="sweep"))
        by_source = {r["tag"]: r for r in rows if r["rule"] == args.rule}
        cells, worst = [], 1.0
        for source in args.sources:
            row = by_source.get(source)
            p, r = (row["precision"], row["recall"]) if row and row["n_gt"] else (0.0, 0.0)
            cells += [f"{p:.3f}", f"{r:.3f}"]
            worst = min(worst, p, r)
        print(f"| {factor} | {floor} | {height} | " + " | ".join(cells) + f" | {worst:.3f} |")
        mean = sum(float(c) for c in cells) / max(len(cells), 1)
        results.append((worst, mean, {"factor": factor, "min_confidence": floor, "min_height_px": height}, raw))
    best_worst, _, best, raw = max(results, key=lambda t: (t[0], t[1]))  # ties: the higher mean P/R
    print(f"best: {best} (worst precision-or-recall over {', '.join(args.sources)}: {best_worst:.3f})")
    if args.write:
        args.write.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
        print(f"written: {args.write}")


if __name__ == "__main__":
    main()
