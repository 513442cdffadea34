"""A deploy during a send: a worker stopped with SIGTERM (Celery's warm shutdown) mid-send
finishes the batches it is running, and a new worker sends the rest. Every subscriber gets
the issue exactly once: unlike a killed worker (tests/test_digest_worker.py), a stopped one
leaves no claim behind and no message of uncertain fate.

Needs PostgreSQL and Redis (the production pair); point HEBDO_DATABASE_URL and
HEBDO_BROKER_URL at throw-away ones (the fixtures empty them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import func, select

from service.extensions import db
from service.models import Delivery
from tests.support.data import add_article, add_subscribers, issue_status
from tests.support.processes import Process, wait_until
from tests.support.settings import BROKER_URL, DATABASE_URL
from tests.support.smtp import SMTPSink

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATABASE_URL.startswith("postgresql") and BROKER_URL.startswith("redis")),
        reason="needs PostgreSQL and Redis: set HEBDO_DATABASE_URL and HEBDO_BROKER_URL",
    ),
]


def _deliveries(app: Flask) -> dict[tuple[str, bool], int]:
    """Delivery rows per (status, uncertain)."""
    with app.app_context():
        rows = db.session.execute(
            select(Delivery.status, Delivery.uncertain, func.count()).group_by(
                Delivery.status, Delivery.uncertain
            )
        ).all()
    return {(str(status), bool(uncertain)): n for status, uncertain, n in rows}


def test_a_worker_stopped_mid_send_finishes_its_batches_and_nothing_goes_twice(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    total, concurrency = 1000, 2
    # Batches of 100; a 1 s tick for the new worker's beat.
    values = {**smtp_env, "HEBDO_SWEEP_SECONDS": "1", "HEBDO_SEND_BATCH": "100"}
    app = make_app(values)
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1))
    add_subscribers(app, total)
    # ≈ 50 messages/s per SMTP connection: a batch of 100 takes about 2 s, the send ≈ 10 s.
    smtp_server.data_delay = 0.02
    worker = celery_worker(values, concurrency=concurrency)
    result = app.test_cli_runner().invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    week = result.output.split(":", 1)[0]

    smtp_server.wait_for(250, timeout=60)
    at_term = len(smtp_server.messages)
    started = time.monotonic()
    # SIGTERM to the main process only, as `docker stop` and `hebdo run` do.
    assert worker.stop(timeout=120) == 0, worker.output()[-3000:]
    shutdown = time.monotonic() - started
    at_exit = len(smtp_server.messages)
    assert "Warm shutdown" in worker.output()
    assert at_term < at_exit < total, (at_term, at_exit)
    # The batches in flight ran to their end: no row is left claimed, none is uncertain.
    stopped = _deliveries(app)
    assert set(stopped) == {("sent", False), ("queued", False)}, stopped
    assert stopped[("sent", False)] == at_exit
    time.sleep(1)
    assert len(smtp_server.messages) == at_exit  # nothing goes out while no worker runs

    # The deploy's new worker (with beat) picks the queued batch tasks up from Redis.
    restarted = time.monotonic()
    celery_worker(values, concurrency=concurrency, beat=True)
    smtp_server.data_delay = 0
    wait_until(
        lambda: len({m.rcpt_tos[0] for m in smtp_server.messages}) == total,
        60,
        "every subscriber to be mailed",
    )
    wait_until(lambda: issue_status(app, week) == "sent", 30, "the issue to be marked sent")
    finished = time.monotonic() - restarted
    time.sleep(1)
    received = smtp_server.per_recipient()
    duplicates = smtp_server.duplicates()
    print(
        f"SIGTERM after {at_term} of {total} messages; warm shutdown took {shutdown:.2f} s "
        f"({at_exit - at_term} more messages sent by the batches in flight); the new worker "
        f"sent the remaining {total - at_exit} in {finished:.2f} s; {duplicates} duplicate(s)"
    )
    assert len(received) == total and duplicates == 0
    assert _deliveries(app) == {("sent", False): total}
