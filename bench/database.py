"""The throw-away PostgreSQL database of a benchmark: created when missing, emptied first,
dropped when asked, filled with synthetic subscribers; the settings of the app using it.
Loopback only."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import TextClause, create_engine, text
from sqlalchemy.engine import make_url

# A database to connect to while creating or dropping the benchmark's own.
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def app_settings(data_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The HEBDO_* settings of a benchmark's app (its data folder and database), and `extra`."""
    return {
        "HEBDO_ENV": "test",
        "HEBDO_DATA_DIR": str(data_dir),
        "HEBDO_DATABASE_URL": database_url,
        "HEBDO_SECRET_KEY": "bench-secret-key-0123456789-0123456789",
        "HEBDO_BASE_URL": "https://hebdo.example.fr",
        "HEBDO_MAIL_FROM": "L'Hebdo <newsletter@news.example.fr>",
        "HEBDO_LOG_LEVEL": "WARNING",
        **extra,
    }


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


# Every mix a benchmark asks for: all active, or the admin list's statuses (2 % unsubscribed,
# 1 % bounced, 5 % pending) to filter on.
ALL_ACTIVE = "'active'"
MIXED_STATUSES = """CASE WHEN n % 50 = 0 THEN 'unsubscribed' WHEN n % 97 = 0 THEN 'bounced'
            WHEN n % 20 = 0 THEN 'pending' ELSE 'active' END"""


def subscriber_fill(status_sql: str, *, confirmed: bool) -> TextClause:
    """One INSERT … SELECT of `:n` synthetic subscribers (`reader<n>@` four domains, one in ten
    English, signed up 30 s apart from an article page); `confirmed` stamps confirmed_at.
    A million rows take ≈ 16 s here, where the ORM would take minutes."""
    confirmed_column = "confirmed_at, " if confirmed else ""
    confirmed_value = "now() - make_interval(secs => (:n - n) * 30),\n       " if confirmed else ""
    return text(
        f"""
INSERT INTO subscribers (email, search_key, status, locale, created_at, optin_serial,
    {confirmed_column}consent_at, consent_source, consent_text_version, confirm_attempts)
SELECT 'reader' || n || '@' || (ARRAY['exemple.fr','gmail.com','orange.fr','free.fr'])[1 + n % 4],
       'reader' || n || '@' || (ARRAY['exemple.fr','gmail.com','orange.fr','free.fr'])[1 + n % 4],
       {status_sql},
       CASE WHEN n % 10 = 0 THEN 'en' ELSE 'fr' END,
       now() - make_interval(secs => (:n - n) * 30),
       1,
       {confirmed_value}now() - make_interval(secs => (:n - n) * 30),
       'https://news.example.fr/article-' || (n % 500),
       'v1',
       0
FROM generate_series(1, :n) AS n
"""
    )
