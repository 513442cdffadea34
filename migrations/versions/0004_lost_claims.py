"""deliveries.lost_claims: a row whose worker keeps dying is claimed alone, then quarantined

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 15:00:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SUSPECT = "status = 'queued' AND lost_claims > 0"


def upgrade():
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lost_claims", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_index(
            "ix_deliveries_suspect",
            ["issue_id", "id"],
            unique=False,
            postgresql_where=sa.text(SUSPECT),
            sqlite_where=sa.text(SUSPECT),
        )


def downgrade():
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_deliveries_suspect",
            postgresql_where=sa.text(SUSPECT),
            sqlite_where=sa.text(SUSPECT),
        )
        batch_op.drop_column("lost_claims")
