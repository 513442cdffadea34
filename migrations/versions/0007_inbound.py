"""inbound_messages: every mail that came back (bounces, complaints, mailto unsubscribes,
auto-replies, replies), its verdict and evidence; deliveries.soft_bounced_at

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 01:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

VERDICTS = (
    "bounced",
    "soft_bounce",
    "complained",
    "unsubscribed",
    "duplicate",
    "auto_reply",
    "forwarded",
    "kept",
    "unattributed",
    "undone",
)

COUNTERS = ("hard_bounce_count", "soft_bounce_count", "mailto_unsubscribe_count")


def upgrade():
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_by", sa.String(length=80), nullable=True),
        sa.CheckConstraint(
            "verdict IN (" + ", ".join(f"'{v}'" for v in VERDICTS) + ")",
            name=op.f("ck_inbound_messages_verdict"),
        ),
        sa.ForeignKeyConstraint(
            ["issue_id"],
            ["issues.id"],
            name=op.f("fk_inbound_messages_issue_id_issues"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_inbound_messages_subscriber_id_subscribers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
        sa.UniqueConstraint("source", "external_id", name=op.f("uq_inbound_messages_source")),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_messages_received", ["received_at", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_inbound_messages_issue_id"), ["issue_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_inbound_messages_subscriber_id"), ["subscriber_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_inbound_messages_verdict"), ["verdict"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("soft_bounced_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("issues", schema=None) as batch_op:
        for column in COUNTERS:
            batch_op.add_column(sa.Column(column, sa.Integer(), server_default="0", nullable=False))


def downgrade():
    with op.batch_alter_table("issues", schema=None) as batch_op:
        for column in COUNTERS:
            batch_op.drop_column(column)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("soft_bounced_at")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_messages_verdict"))
        batch_op.drop_index(batch_op.f("ix_inbound_messages_subscriber_id"))
        batch_op.drop_index(batch_op.f("ix_inbound_messages_issue_id"))
        batch_op.drop_index("ix_inbound_messages_received")
    op.drop_table("inbound_messages")
