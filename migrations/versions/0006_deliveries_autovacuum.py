"""deliveries: autovacuum after 1 % of its rows changed, not PostgreSQL's default 20 %

Each message rewrites its delivery row twice (claimed, then its outcome), and the claim walks
the partial index of queued rows past the entries of rows already sent until vacuum removes
them (docs/scaling.md, "Limits observed"). With the default trigger (20 % of the table dead)
and many issues in the table, a whole send could pass without a vacuum.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 18:00:00

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.01, "
            "autovacuum_analyze_scale_factor = 0.01)"
        )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE deliveries RESET (autovacuum_vacuum_scale_factor, "
            "autovacuum_analyze_scale_factor)"
        )
