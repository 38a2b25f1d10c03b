"""Regenerate the initial migration from the ORM models (development tool, before the first release).

python -m hazardlens.migrations.autogen
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command

from hazardlens.db import alembic_config

VERSIONS = Path(__file__).resolve().parent / "versions"


def main() -> None:
    initial = VERSIONS / "0001_initial.py"
    initial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Later migrations build on 0001; park them while 0001 is generated against an empty database.
        parked = [p.rename(Path(tmp) / p.name) for p in sorted(VERSIONS.glob("0*.py"))]
        try:
            cfg = alembic_config(f"sqlite:///{tmp}/empty.sqlite3")
            command.revision(cfg, message="initial catalogue schema", autogenerate=True, rev_id="0001", head="base")
        finally:
            for p in parked:
                p.rename(VERSIONS / p.name)
    generated = next(VERSIONS.glob("0001_*.py"))
    generated.rename(initial)
    print(f"wrote {initial}")


if __name__ == "__main__":
    main()
