"""Readers' choices and what the digest says to them: subscribers.categories and
paused_until (the preference page), issues.intro (the editor's note),
issue_articles.clicks (click counts with no reader identified)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 02:10:00

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    # All nullable or with a default: every existing reader keeps every category, unpaused;
    # every existing issue keeps the default intro and counts no click.
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("categories", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("paused_until", sa.Date(), nullable=True))
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.add_column(sa.Column("intro", sa.Text(), nullable=True))
    with op.batch_alter_table("issue_articles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("clicks", sa.Integer(), nullable=False, server_default="0"))


def downgrade():
    with op.batch_alter_table("issue_articles", schema=None) as batch_op:
        batch_op.drop_column("clicks")
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.drop_column("intro")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("paused_until")
        batch_op.drop_column("categories")
