"""The throw-away PostgreSQL database of a benchmark: created when missing, emptied first,
dropped when asked. Loopback only."""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# A database to connect to while creating or dropping the benchmark's own.
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _name(url: str) -> str:
    name = make_url(url).database or ""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a benchmark database name: {name!r}")
    return name


def reset_database(url: str) -> None:
    """An empty `public` schema in the database of `url`, created if it does not exist."""
    name = _name(url)
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if exists.first() is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def drop_database(url: str) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{_name(url)}" WITH (FORCE)'))
    admin.dispose()
