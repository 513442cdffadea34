"""The probes `/readyz` and `hebdo doctor` share, each written once: where the database's
schema stands against the migrations the code ships, and whether Redis answers. (The SMTP
probe is the mailer's own `mail.smtp.connect`.)

Readiness asks them every few seconds and keeps only a verdict; the doctor asks once and
explains. Both bound them in time themselves (statement and socket timeouts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import redis
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection


@cache
def migration_script(migrations: Path) -> ScriptDirectory:
    """The code's migrations (read once per process)."""
    return ScriptDirectory(str(migrations))


@dataclass(frozen=True)
class SchemaState:
    """The database's Alembic revisions against the code's."""

    current: frozenset[str]
    heads: frozenset[str]
    # Tables other than alembic_version (looked at only when there is no revision).
    other_tables: bool
    # Every current revision is one this code knows (else a newer hebdo migrated it).
    known: bool
    # Migrations the code has that the database lacks.
    pending: int

    @property
    def up_to_date(self) -> bool:
        return self.current == self.heads

    @property
    def head(self) -> str:
        return ", ".join(sorted(self.heads))


def schema_state(conn: Connection, migrations: Path) -> SchemaState:
    """Where the database on `conn` stands against the code's migrations."""
    script = migration_script(migrations)
    current = frozenset(MigrationContext.configure(conn).get_current_heads())
    heads = frozenset(script.get_heads())
    other_tables = False
    if not current:
        other_tables = bool(set(inspect(conn).get_table_names()) - {"alembic_version"})
    known = current <= {r.revision for r in script.walk_revisions()}
    pending = 0
    if known and current != heads:
        pending = len(
            {r.revision for r in script.iterate_revisions("heads", "base")}
            - {r.revision for rev in current for r in script.iterate_revisions(rev, "base")}
        )
    return SchemaState(current, heads, other_tables, known, pending)


def redis_ping(url: str, timeout: float) -> str:
    """PING the Redis at `url`; returns its `maxmemory-policy` ("" when INFO is refused, as
    on some managed Redis). Raises redis.exceptions.RedisError when it does not answer."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        try:
            return str(client.info("memory").get("maxmemory_policy", ""))
        except redis.exceptions.RedisError:
            return ""  # INFO may be disabled: the PING is what matters
    finally:
        client.close()
