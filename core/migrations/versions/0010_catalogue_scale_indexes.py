"""the catalogue at a million samples (issue 16 item 4): the perceptual hash's four 16-bit bands as
expression indexes (multi-index hashing for the near-duplicate lookup, no column to backfill or
keep in step: the database computes them from ``phash`` for existing and new rows alike), and
(column, id) indexes for "newest first" with a sector, status or class filter, which replace the
single-column ones they cover; on PostgreSQL the tags become JSONB with a GIN index, so the tag
filter (``tags @> '["tag"]'``) is an index lookup instead of parsing every row's JSON (this rewrites
the samples table once: about a minute per million rows, under an exclusive lock; SQLite's json_each
cannot use an index, and its libraries are small)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Written out, not imported from the ORM, so this migration stays what it was when the ORM moves on.
# Band b of the signed 64-bit hash: (phash >> 16 b) & 65535 (arithmetic shift, then the mask).
BANDS = {f"ix_samples_phash_b{b}": f"(phash >> {16 * b}) & 65535" if b else "phash & 65535" for b in range(4)}


def upgrade() -> None:
    for name, expression in BANDS.items():
        op.create_index(name, "samples", [sa.text(f"({expression})")])
    op.create_index("ix_samples_sector_id", "samples", ["sector", "id"])
    op.create_index("ix_samples_status_id", "samples", ["annotation_status", "id"])
    op.create_index("ix_sample_classes_class_sample", "sample_classes", ["class_key", "sample_id"])
    op.drop_index("ix_samples_sector", table_name="samples")
    op.drop_index("ix_samples_annotation_status", table_name="samples")
    op.drop_index("ix_sample_classes_class_key", table_name="sample_classes")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE samples ALTER COLUMN tags TYPE jsonb USING tags::jsonb")
        op.execute("CREATE INDEX ix_samples_tags ON samples USING gin (tags jsonb_path_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_samples_tags", table_name="samples")
        op.execute("ALTER TABLE samples ALTER COLUMN tags TYPE json USING tags::json")
    op.create_index("ix_sample_classes_class_key", "sample_classes", ["class_key"])
    op.create_index("ix_samples_annotation_status", "samples", ["annotation_status"])
    op.create_index("ix_samples_sector", "samples", ["sector"])
    op.drop_index("ix_sample_classes_class_sample", table_name="sample_classes")
    op.drop_index("ix_samples_status_id", table_name="samples")
    op.drop_index("ix_samples_sector_id", table_name="samples")
    for name in BANDS:
        op.drop_index(name, table_name="samples")
