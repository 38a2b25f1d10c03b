"""federation: a scheduled pull per peer (interval, full re-pull interval, what, next due time, the
job of the last one) and the peers' approved taxonomy additions pulled for adoption

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        batch.add_column(sa.Column("pull_every_s", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("full_pull_every_s", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pull_what", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("next_pull_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_full_pull_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("pull_job_id", sa.Integer(), nullable=True))
    op.create_table(
        "federated_additions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("peer_id", sa.Integer(), sa.ForeignKey("peers.id"), nullable=False),
        sa.Column("origin_id", sa.BigInteger(), nullable=False),
        sa.Column("origin_org", sa.String(length=12), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("legal_text", sa.Text(), nullable=False),
        sa.Column("legal_citation", sa.String(length=500), nullable=False),
        sa.Column("proposed_by", sa.String(length=200), nullable=True),
        sa.Column("reviewed_by", sa.String(length=200), nullable=True),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pulled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("adopted_addition_id", sa.Integer(), sa.ForeignKey("taxonomy_additions.id"), nullable=True),
        sa.Column("adopted_by", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("adopted_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("peer_id", "origin_id", name="uq_federated_additions_origin"),
    )


def downgrade() -> None:
    op.drop_table("federated_additions")
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("pull_job_id")
        batch.drop_column("next_full_pull_at")
        batch.drop_column("next_pull_at")
        batch.drop_column("pull_what")
        batch.drop_column("full_pull_every_s")
        batch.drop_column("pull_every_s")
