"""admin area: admin users and sessions, import files, search key and list indexes,
editors' article choices, audit subjects

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:30:51.867842

"""

import unicodedata

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _search_key(email):
    """models.search_key as it was at this revision (migrations do not import the models)."""
    decomposed = unicodedata.normalize("NFKD", email)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _fill_search_keys():
    bind = op.get_bind()
    subscribers = sa.table(
        "subscribers", sa.column("id"), sa.column("email"), sa.column("search_key")
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(subscribers.c.id, subscribers.c.email)
            .where(subscribers.c.id > last)
            .order_by(subscribers.c.id)
            .limit(5000)
        ).all()
        if not rows:
            return
        bind.execute(
            subscribers.update()
            .where(subscribers.c.id == sa.bindparam("b_id"))
            .values(search_key=sa.bindparam("b_key")),
            [{"b_id": row.id, "b_key": _search_key(row.email)} for row in rows],
        )
        last = rows[-1].id


def upgrade():
    op.create_table(
        "admin_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("locale", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('admin', 'editor')", name=op.f("ck_admin_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_users")),
        sa.UniqueConstraint("name", name=op.f("uq_admin_users_name")),
    )
    op.create_table(
        "import_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_files")),
    )
    op.create_table(
        "admin_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["admin_users.id"],
            name=op.f("fk_admin_sessions_user_id_admin_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_sessions_token_hash")),
    )
    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_admin_sessions_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("excluded", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("pinned", sa.Integer(), nullable=True))

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=100), nullable=True))
        batch_op.alter_column(
            "actor",
            existing_type=sa.VARCHAR(length=64),
            type_=sa.String(length=80),
            existing_nullable=False,
        )

    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_key", sa.String(length=320), nullable=True))
    _fill_search_keys()
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.alter_column("search_key", existing_type=sa.String(length=320), nullable=False)
        batch_op.drop_index(batch_op.f("ix_subscribers_status"))
        batch_op.create_index("ix_subscribers_created", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_subscribers_status_created", ["status", "created_at", "id"], unique=False
        )
    if op.get_bind().dialect.name == "postgresql":
        # pg_trgm is a trusted extension: the database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.create_index(
            "ix_subscribers_search_trgm",
            "subscribers",
            ["search_key"],
            unique=False,
            postgresql_using="gin",
            postgresql_ops={"search_key": "gin_trgm_ops"},
        )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_subscribers_search_trgm", table_name="subscribers")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_index("ix_subscribers_status_created")
        batch_op.drop_index("ix_subscribers_created")
        batch_op.create_index(batch_op.f("ix_subscribers_status"), ["status"], unique=False)
        batch_op.drop_column("search_key")

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column(
            "actor",
            existing_type=sa.String(length=80),
            type_=sa.VARCHAR(length=64),
            existing_nullable=False,
        )
        batch_op.drop_column("subject")

    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.drop_column("pinned")
        batch_op.drop_column("excluded")

    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_admin_sessions_user_id"))

    op.drop_table("admin_sessions")
    op.drop_table("import_files")
    op.drop_table("admin_users")
