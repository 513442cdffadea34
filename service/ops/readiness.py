"""Readiness: can this process do its work right now? The database answers and its schema is
the code's (migrations current), the broker answers, the SMTP server greets.

`/readyz` answers 200 when every check passes and 503 otherwise, with each check's verdict
and how long it took, so a load balancer stops routing to a web process that cannot serve
and an operator sees why. Liveness (`/healthz`) asks none of this: a database outage must
not make an orchestrator restart every web process.

Each check is bounded (`TIMEOUT` seconds). The SMTP greeting is remembered for
`SMTP_CACHE_SECONDS` per process: a probe every few seconds from every replica would
otherwise open a stream of connections to the relay.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from service.config import Settings
from service.extensions import db
from service.mail.smtp import connect
from service.ops.probes import redis_ping, schema_state

TIMEOUT = 2.0
SMTP_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "ms": self.ms}


def database(migrations: Path) -> Check:
    with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SET LOCAL statement_timeout = {int(TIMEOUT * 1000)}"))
        state = schema_state(conn, migrations)
    if not state.up_to_date:
        at = ", ".join(sorted(state.current)) or "nothing"
        return Check(False, f"schema at {at}, code at {state.head}: hebdo db upgrade")
    return Check(True, f"schema at {state.head}")


def broker(settings: Settings) -> Check:
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        redis_ping(url, TIMEOUT)
        return Check(True, "redis answers")
    folders = settings.broker_folders
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        return Check(False, f"broker folder missing: {', '.join(missing)}")
    return Check(True, "embedded broker" if folders else url.split(":", 1)[0])


# (host, port, tls) → (when, verdict): the last greeting per server, per process.
_smtp_lock = threading.Lock()
_smtp_seen: dict[tuple[str, int, str], tuple[float, Check]] = {}


def smtp(settings: Settings) -> Check:
    if settings.capture_mail:
        return Check(True, f"mail captured to {settings.mail_capture_dir} (no SMTP server)")
    server = (settings.smtp_host, settings.smtp_port, settings.smtp_tls)
    with _smtp_lock:
        seen = _smtp_seen.get(server)
    if seen and time.monotonic() - seen[0] < SMTP_CACHE_SECONDS:
        return seen[1]
    result = _greet(settings)
    with _smtp_lock:
        _smtp_seen[server] = (time.monotonic(), result)
    return result


def _greet(settings: Settings) -> Check:
    """Connect and read the greeting (no login: `hebdo doctor` checks credentials)."""
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    try:
        conn = connect(settings.smtp_host, settings.smtp_port, settings.smtp_tls, TIMEOUT)
        code, _ = conn.noop()
        conn.quit()
    except (OSError, smtplib.SMTPException) as exc:
        return Check(False, f"{where}: {type(exc).__name__}: {exc}"[:300])
    if code != 250:
        return Check(False, f"{where} answered {code} to NOOP")
    return Check(True, f"{where} answers")


def check_all(settings: Settings, migrations: Path) -> dict[str, Check]:
    checks: dict[str, Callable[[], Check]] = {
        "database": lambda: database(migrations),
        "broker": lambda: broker(settings),
        "smtp": lambda: smtp(settings),
    }
    results: dict[str, Check] = {}
    for name, run in checks.items():
        started = time.monotonic()
        try:
            result = run()
        except Exception as exc:  # a check that cannot run is a failed check, not a 500
            result = Check(False, f"{type(exc).__name__}: {exc}"[:300])
        took = round((time.monotonic() - started) * 1000, 1)
        results[name] = Check(result.ok, result.detail, took)
    return results
