"""provincial additions carry their legal clause and review reason; federation: peers, sync cursors,
federated samples (origin kept) and feedback counts reported by peers

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("taxonomy_additions") as batch:
        batch.add_column(sa.Column("legal_text", sa.Text(), nullable=True))
        batch.add_column(sa.Column("legal_citation", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("review_reason", sa.Text(), nullable=True))
    op.create_table(
        "peers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(length=60), nullable=False, unique=True),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False, unique=True),
        sa.Column("org_code", sa.String(length=12), nullable=True),
        sa.Column("allow", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "sync_state",
        sa.Column("peer_id", sa.Integer(), sa.ForeignKey("peers.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(length=20), primary_key=True),
        sa.Column("cursor", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "federated_samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("peer_id", sa.Integer(), sa.ForeignKey("peers.id"), nullable=False),
        sa.Column("origin_sample_id", sa.BigInteger(), nullable=False),
        sa.Column("origin_org", sa.String(length=12), nullable=False),
        sa.Column("local_sample_id", sa.Integer(), sa.ForeignKey("samples.id"), nullable=False, index=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("origin_revision_id", sa.BigInteger(), nullable=True),
        sa.Column("provenance", sa.JSON(), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("peer_id", "origin_sample_id", name="uq_federated_samples_origin"),
    )
    op.create_table(
        "federation_feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("peer_id", sa.Integer(), sa.ForeignKey("peers.id"), nullable=False),
        sa.Column("model_name", sa.String(length=100), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("class_key", sa.String(length=80), nullable=False),
        sa.Column("confirmed", sa.Integer(), nullable=False),
        sa.Column("corrected", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("peer_id", "model_name", "model_version", "class_key", name="uq_federation_feedback"),
    )


def downgrade() -> None:
    op.drop_table("federation_feedback")
    op.drop_table("federated_samples")
    op.drop_table("sync_state")
    op.drop_table("peers")
    with op.batch_alter_table("taxonomy_additions") as batch:
        batch.drop_column("review_reason")
        batch.drop_column("legal_citation")
        batch.drop_column("legal_text")
