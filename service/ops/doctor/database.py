"""Doctor check 2: the database answers and its schema is the code's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from service.config import Settings
from service.ops.doctor.report import TIMEOUT, CheckResult, Status, _first_line
from service.ops.probes import SchemaState, schema_state
from service.resources import MIGRATIONS

# --- 2. Database ----------------------------------------------------------------------


def check_database(
    settings: Settings, migrations: Path = MIGRATIONS, *, timeout: float = TIMEOUT
) -> list[CheckResult]:
    """Connect, then compare the database's Alembic revision with the newest one the code
    ships: code newer than its schema fails at the first query that touches a new column."""
    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path and path != ":memory:" and not Path(path).exists():
            # Connecting would create an empty file: say what is missing instead.
            return [
                CheckResult(
                    "database",
                    Status.FAIL,
                    f"the database file {path} does not exist",
                    "run `hebdo db upgrade` to create it (`hebdo run` does so on start); "
                    "check HEBDO_DATA_DIR / HEBDO_DATABASE_URL if it should be elsewhere",
                )
            ]
        connect_args["timeout"] = timeout
    elif url.get_backend_name() == "postgresql":
        # libpq counts whole seconds and takes at least 2.
        connect_args["connect_timeout"] = max(2, round(timeout))
        connect_args["options"] = f"-c statement_timeout={int(timeout * 1000)}"
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            state = schema_state(conn, migrations)
    except Exception as exc:  # the driver's own error classes; all mean "cannot connect"
        return [
            CheckResult(
                "database",
                Status.FAIL,
                f"cannot connect to {shown}: {_first_line(exc)}",
                "check HEBDO_DATABASE_URL (host, port, user, password, database name) "
                "and that the database server runs and accepts connections from here",
            )
        ]
    finally:
        engine.dispose()
    connected = CheckResult("database", Status.OK, f"{shown} answers")
    return [connected, _migration_state(state)]


def _migration_state(state: SchemaState) -> CheckResult:
    head = state.head
    upgrade = "run `hebdo db upgrade` (back up the database first)"
    if state.up_to_date:
        return CheckResult("migrations", Status.OK, f"schema at revision {head}, the newest")
    if not state.current and not state.other_tables:
        return CheckResult(
            "migrations",
            Status.FAIL,
            f"the database is empty (code expects revision {head})",
            upgrade,
        )
    if not state.current:
        # Tables but no stamp: upgrading would try to create tables that exist.
        return CheckResult(
            "migrations",
            Status.FAIL,
            f"the database has tables but no migration stamp (code expects revision {head})",
            "this database was not created by hebdo's migrations: point HEBDO_DATABASE_URL "
            "at hebdo's database, or at an empty one and run `hebdo db upgrade`",
        )
    at = ", ".join(sorted(state.current))
    if not state.known:
        return CheckResult(
            "migrations",
            Status.FAIL,
            f"the database is at revision {at}, which this code does "
            f"not know (newest here: {head}): a newer hebdo migrated it",
            "deploy the hebdo version that matches the database; never run older code on it",
        )
    return CheckResult(
        "migrations",
        Status.FAIL,
        f"the database is at revision {at}, {state.pending} migration(s) behind the code ({head})",
        upgrade,
    )
