"""Doctor check 3: the Celery broker answers (Redis, or the file-system broker's folders)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import redis

from service.config import Settings
from service.ops.doctor.report import TIMEOUT, CheckResult, Status, _first_line, safe_url
from service.ops.probes import redis_ping

# --- 3. Broker ------------------------------------------------------------------------


def check_broker(settings: Settings, *, timeout: float = TIMEOUT) -> list[CheckResult]:
    """Is the Celery broker there? Without it nothing is queued: the sweep catches up
    on confirmations later, but no digest goes out."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        return _check_redis(url, timeout)
    if url.startswith("filesystem://"):
        return _check_broker_folders(settings)
    if url.startswith("memory://"):
        return [
            CheckResult(
                "broker",
                Status.WARN,
                "memory:// lives inside one process: tasks queued by the web app never "
                "reach a worker",
                "unset HEBDO_BROKER_URL (file-system broker) or set it to redis://…",
            )
        ]
    if url.startswith("sqla+"):
        return [
            CheckResult(
                "broker",
                Status.WARN,
                f"{safe_url(url)}: kombu's SQLAlchemy transport never deletes consumed "
                "messages and has no remote control (`celery inspect` does not work)",
                "use redis://… or the default file-system broker",
            )
        ]
    return _check_kombu(url, settings, timeout)


def _check_redis(url: str, timeout: float) -> list[CheckResult]:
    shown = safe_url(url)
    try:
        policy = redis_ping(url, timeout)
    except redis.exceptions.RedisError as exc:
        return [
            CheckResult(
                "broker",
                Status.FAIL,
                f"Redis at {shown} does not answer PING: {exc}",
                "start Redis, or correct HEBDO_BROKER_URL (host, port, password, database)",
            )
        ]
    if policy and policy != "noeviction":
        return [
            CheckResult(
                "broker",
                Status.WARN,
                f"Redis at {shown} answers, but maxmemory-policy is {policy}: under memory "
                "pressure it evicts keys, queued tasks among them",
                "set `maxmemory-policy noeviction` in redis.conf (as docker-compose.yml does)",
            )
        ]
    return [CheckResult("broker", Status.OK, f"Redis at {shown} answers PING")]


def _check_broker_folders(settings: Settings) -> list[CheckResult]:
    folders = settings.broker_folders
    for folder in folders:
        problem = _unwritable(folder)
        if problem:
            return [
                CheckResult(
                    "broker",
                    Status.FAIL,
                    f"the file-system broker cannot use {folder}: {problem}",
                    "make HEBDO_DATA_DIR writable by the user that runs hebdo (web and "
                    "worker must be the same user, on the same machine)",
                )
            ]
    where = folders[0].parent if folders else settings.data_dir
    return [CheckResult("broker", Status.OK, f"file-system broker in {where} is writable")]


def _unwritable(folder: Path) -> str:
    """Why this process cannot write in `folder` (or in the folder that will hold it)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            return "no part of the path exists"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as exc:
        return str(exc)
    return ""


def _check_kombu(url: str, settings: Settings, timeout: float) -> list[CheckResult]:
    from kombu import Connection

    shown = safe_url(url)
    try:
        with Connection(
            url,
            connect_timeout=timeout,
            transport_options=settings.broker_transport_options,
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises each transport's own errors
        return [
            CheckResult(
                "broker",
                Status.FAIL,
                f"cannot connect to {shown}: {_first_line(exc)}",
                "start the broker, or correct HEBDO_BROKER_URL",
            )
        ]
    return [CheckResult("broker", Status.OK, f"{shown} accepts a connection")]
