"""Extension objects (database, migrations, CSRF, rate limits, Celery) and the one function
that wires Celery.

Objects only: nothing here reads configuration at import time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery, Task
from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.engine import CursorResult, Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, registry
from sqlalchemy.types import TypeDecorator

from service.config import Settings


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on PostgreSQL and on SQLite (which has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets the web process read while a worker writes; busy_timeout waits for the lock;
    secure_delete overwrites deleted content, so an erased address leaves no copy in free
    pages (see subscribers.bulk.forget_erased for the write-ahead log)."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()


class Base(DeclarativeBase):
    # Stable constraint names, so Alembic migrations can refer to them on every backend.
    # The type map sits on the registry: flask-sqlalchemy subclasses this base.
    registry = registry(
        metadata=MetaData(
            naming_convention={
                "ix": "ix_%(column_0_label)s",
                "uq": "uq_%(table_name)s_%(column_0_name)s",
                "ck": "ck_%(table_name)s_%(constraint_name)s",
                "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
                "pk": "pk_%(table_name)s",
            }
        ),
        type_annotation_map={datetime: UTCDateTime()},
    )


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
# CSRF tokens on every form post of the browser faces; the JSON APIs (bearer tokens, no
# cookies) are exempted where their blueprints are registered.
csrf = CSRFProtect()
# No default limit: each limited view names its own (admin login here, the form in its own).
# ProxyFix (HEBDO_TRUSTED_PROXIES) has already put the client's address in remote_addr.
limiter = Limiter(key_func=get_remote_address, key_prefix="hebdo")


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for the database at `url` (the app's, and the benchmarks'
    ceilings', which must match it)."""
    # A failed statement's error never shows its parameters: they hold password hashes,
    # addresses and tokens, and errors end up in logs and terminals.
    if url.startswith("sqlite"):
        # Web and worker processes share the file: wait for a lock instead of failing.
        return {"hide_parameters": True, "connect_args": {"timeout": 30}}
    # Recycle connections a restarted database closed, instead of failing the next request;
    # give up connecting after 10 s rather than hang a request on an unreachable host.
    return {"hide_parameters": True, "pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}


def current_settings() -> Settings:
    """The settings of the app in context: for views, CLI commands and tasks alike."""
    value: Settings = current_app.config["SETTINGS"]
    return value


# Three queues: confirm (confirmation mails), mail (digest batches) and default (the weekly
# clock, feed reads). A slow relay or a long send then never delays the clock, and mail
# workers are scaled on their own (docs/deploy.md). Mail workers consume confirm and mail:
# Celery's Redis transport takes from its queues in turn, so a new subscriber's confirmation
# waits for at most the batch each process is sending, not behind the thousands of batches a
# large send queues. `hebdo run` starts one worker consuming all three.
# The longest any task runs (Celery's hard time limit): how long a stopping worker may take.
TASK_TIME_LIMIT = 300
CONFIRM_QUEUE = "confirm"
MAIL_QUEUE = "mail"
DEFAULT_QUEUE = "default"
QUEUES = (CONFIRM_QUEUE, MAIL_QUEUE, DEFAULT_QUEUE)
# By name, as service/jobs.py sends them and worker/tasks.py registers them.
TASK_ROUTES = {
    "hebdo.send_batch": {"queue": MAIL_QUEUE},
    "hebdo.send_confirmation": {"queue": CONFIRM_QUEUE},
    "hebdo.sweep_confirmations": {"queue": CONFIRM_QUEUE},
    "hebdo.digest_tick": {"queue": DEFAULT_QUEUE},
    "hebdo.fetch_feeds": {"queue": DEFAULT_QUEUE},
    "hebdo.housekeeping": {"queue": DEFAULT_QUEUE},
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings, chosen for a database-is-the-truth pipeline.

    Tasks are acknowledged late and prefetched one at a time, so a message is
    only gone from the broker once its task finished. Tasks are idempotent
    (they claim database rows), so a redelivered message does no harm, and the
    sweep finds whatever a lost message left undone.
    """
    return {
        # kombu's file-system transport ignores the host, but warns at every connection
        # ("No hostname was supplied") when the URL names none.
        "broker_url": (
            "filesystem://localhost//"
            if settings.broker_url.rstrip("/") == "filesystem:"
            else settings.broker_url
        ),
        "broker_transport_options": settings.broker_transport_options,
        # The file-system broker as service.filebroker writes and reads it (safe to kill).
        **(
            {"broker_transport": "service.filebroker:Transport"}
            if settings.broker_url.startswith("filesystem:")
            else {}
        ),
        "broker_connection_retry_on_startup": True,
        # A web request must not hang when the broker is down: fail fast, the sweep catches up.
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        "task_ignore_result": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        # Far below the Redis visibility timeout (3600 s), so a running task is never redelivered.
        # A digest batch stops claiming after 120 s (delivery.BATCH_SECONDS) and writes its
        # outcomes on the soft limit, so the hard limit never cuts a batch short.
        "task_soft_time_limit": 240,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": TASK_ROUTES,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
    }


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Create the Celery app whose tasks each run inside a Flask app context."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_config(settings))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def rowcount(result: Any) -> int:
    """Rows an UPDATE/INSERT matched (typed access to a CursorResult attribute)."""
    return cast(CursorResult[Any], result).rowcount
