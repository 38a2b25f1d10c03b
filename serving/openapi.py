"""``python -m hazardlens.serving.openapi [PATH]``: write the OpenAPI document (default
``docs/openapi.json`` of the source tree), so that the enforcement system and provincial systems can
build against the published contract and reviewers see API changes in diffs."""

from __future__ import annotations

import sys
from pathlib import Path

from hazardlens.serving.app import write_openapi

DEFAULT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def main(argv: list[str] | None = None) -> Path:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT
    write_openapi(path)
    return path


if __name__ == "__main__":
    print(main())
