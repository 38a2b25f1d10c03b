"""The long fuzz pass (``make fuzz``): every target of ``tests/test_fuzz.py`` with random seeds, in
rounds, until the time budget is spent; prints examples and failures per target.

    .venv/bin/python benchmarks/fuzz_long.py [--minutes 10] [--examples 300] [--only coco,yolo]

The short, deterministic run of the same targets is part of the test suite. A failure here prints
Hypothesis' falsifying example (and ``@reproduce_failure`` blob): keep it as a regression case at the
end of ``tests/test_fuzz.py`` and fix the parser (docs/SECURITY.md, "Fault suite and fuzz pass").
Exit status 1 when any target failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total budget, shared by the targets")
    parser.add_argument("--examples", type=int, default=300, help="examples per round of one target")
    parser.add_argument("--only", default="", help="comma-separated parts of target names to run")
    args = parser.parse_args(argv)

    # Settings are read when the test module is imported: random seeds, bigger rounds.
    os.environ["HAZARDLENS_FUZZ_RANDOM"] = "1"
    os.environ["HAZARDLENS_FUZZ_EXAMPLES"] = str(args.examples)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from tests import test_fuzz

    targets = {
        name.removeprefix("test_fuzz_"): getattr(test_fuzz, name)
        for name in sorted(dir(test_fuzz))
        if name.startswith("test_fuzz_")
    }
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        targets = {n: f for n, f in targets.items() if any(w in n for w in wanted)}
    if not targets:
        print("no target matches", args.only)
        return 2
    share = args.minutes * 60 / len(targets)
    print(f"{len(targets)} targets, {share:.0f} s each, {args.examples} examples per round")
    failed: list[str] = []
    for name, test in targets.items():
        started, rounds = time.monotonic(), 0
        try:
            while time.monotonic() - started < share:
                test()
                rounds += 1
        except Exception:
            failed.append(name)
            print(f"FAIL {name} after {rounds} rounds:")
            traceback.print_exc()
            continue
        took = time.monotonic() - started
        per_round = getattr(getattr(test, "_hypothesis_internal_use_settings", None), "max_examples", args.examples)
        examples = rounds * per_round
        print(f"ok   {name}: {rounds} rounds, {examples} examples in {took:.0f} s, peak RSS {_rss_mb():.0f} MB")
    print("failed:", ", ".join(failed) if failed else "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
