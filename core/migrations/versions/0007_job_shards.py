"""jobs run on Celery workers and in shards: a job's lease (owner, heartbeat, attempts, queue, shard
count), the job_shards table (one row per shard: its items, state, lease, result), and
suggestions.job_id (unique per job and sample: a shard run twice never stores a second suggestion)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=120), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("shards", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("queue", sa.String(length=20), nullable=True))
    op.create_table(
        "job_shards",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False, server_default="queued"),
        sa.Column("progress", sa.Float(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("owner", sa.String(length=120), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("job_id", "idx", name="uq_job_shards_job_idx"),
    )
    op.create_index("ix_job_shards_job_status", "job_shards", ["job_id", "status"])
    with op.batch_alter_table("suggestions") as batch:
        batch.add_column(sa.Column("job_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_suggestions_job_id", "jobs", ["job_id"], ["id"])
    # NULL job ids (suggestions asked for by hand) never collide in a unique index (SQLite, PostgreSQL).
    op.create_index("uq_suggestions_job_sample", "suggestions", ["job_id", "sample_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_suggestions_job_sample", table_name="suggestions")
    with op.batch_alter_table("suggestions") as batch:
        batch.drop_constraint("fk_suggestions_job_id", type_="foreignkey")
        batch.drop_column("job_id")
    op.drop_index("ix_job_shards_job_status", table_name="job_shards")
    op.drop_table("job_shards")
    with op.batch_alter_table("jobs") as batch:
        for column in ("queue", "shards", "attempts", "heartbeat_at", "owner"):
            batch.drop_column(column)
