"""sample_tags: one row per (sample, tag), so that the tag filter is an index lookup like the class
filter (issue 16 item 4). At a million samples the JSONB containment test on ``samples.tags`` made
PostgreSQL walk the id index newest first and test each row's tags (47 ms median for a tag on 0.6 %
of the photos), and its GIN index, which that plan did not use, only cost writes: it is dropped.
The table is filled from the existing tags here and kept in step by the ORM on every flush.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sample_tags",
        sa.Column("sample_id", sa.Integer(), sa.ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(100), primary_key=True),
    )
    op.create_index("ix_sample_tags_tag_sample", "sample_tags", ["tag", "sample_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "INSERT INTO sample_tags (sample_id, tag) SELECT DISTINCT s.id, t.tag FROM samples s,"
            " jsonb_array_elements_text(s.tags) AS t(tag) WHERE jsonb_typeof(s.tags) = 'array'"
        )
        op.drop_index("ix_samples_tags", table_name="samples")
    else:
        op.execute(
            "INSERT OR IGNORE INTO sample_tags (sample_id, tag) SELECT s.id, j.value FROM samples s,"
            " json_each(s.tags) AS j WHERE json_type(s.tags) = 'array' AND j.type = 'text'"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_samples_tags ON samples USING gin (tags jsonb_path_ops)")
    op.drop_index("ix_sample_tags_tag_sample", table_name="sample_tags")
    op.drop_table("sample_tags")
