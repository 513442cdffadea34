"""Real Celery worker processes: the path through the broker, and a broker outage."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from service.extensions import db
from service.models import Status, Subscriber
from tests.support.mail import link, subscriber
from tests.support.processes import Process, RedisServer
from tests.support.settings import BROKER_URL
from tests.support.smtp import SMTPSink

# Real processes, browsers or many requests: the full suite's, not the fast lane's.
pytestmark = pytest.mark.slow


def test_a_real_worker_sends_the_confirmation_mail(
    smtp_env: dict[str, str],
    smtp_app: Flask,
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    celery_worker(smtp_env)
    client = smtp_app.test_client()
    for i in range(3):
        assert (
            client.post(
                "/api/v1/subscriptions", json={"email": f"worker{i}@exemple.fr"}
            ).status_code
            == 202
        )
    mails = smtp_server.wait_for(3, timeout=60)
    assert sorted(m.rcpt_tos[0] for m in mails) == [f"worker{i}@exemple.fr" for i in range(3)]
    assert client.post(link(mails[0], "confirm")).status_code == 200
    with smtp_app.app_context():
        statuses = db.session.execute(select(Subscriber.status, Subscriber.confirm_sent_at)).all()
    assert sorted(s for s, _ in statuses) == [Status.ACTIVE, Status.PENDING, Status.PENDING]
    assert all(sent is not None for _, sent in statuses)
    time.sleep(1)  # nothing else arrives: each mail was sent once
    assert len(smtp_server.messages) == 3
    if not BROKER_URL:
        # The embedded broker deletes consumed messages: its folder does not grow.
        queue = Path(smtp_env["HEBDO_DATA_DIR"]) / "broker" / "queue"
        assert queue.is_dir() and list(queue.iterdir()) == []


def test_a_burst_of_sign_ups_shares_one_sweep_and_every_mail_goes_once(
    smtp_env: dict[str, str],
    smtp_app: Flask,
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    """Sign-ups schedule one confirmation sweep per window (one broker message for many
    sign-ups); each owed mail still goes out once, within seconds."""
    worker = celery_worker(smtp_env)
    client = smtp_app.test_client()
    started = time.monotonic()
    for i in range(25):
        answer = client.post("/api/v1/subscriptions", json={"email": f"burst{i}@exemple.fr"})
        assert answer.status_code == 202
    burst = time.monotonic() - started
    mails = smtp_server.wait_for(25, timeout=60)
    assert sorted(m.rcpt_tos[0] for m in mails) == sorted(f"burst{i}@exemple.fr" for i in range(25))
    time.sleep(1.5)
    assert len(smtp_server.messages) == 25
    sweeps = worker.output().count("Task hebdo.sweep_confirmations[")
    # One sweep per started second of the burst (its window), never one per sign-up.
    assert 1 <= sweeps <= 2 * (int(burst) + 2), (sweeps, burst)


def test_broker_down_during_subscribe_then_the_sweep_delivers_once(
    smtp_env: dict[str, str],
    make_app: Callable[[dict[str, str]], Flask],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
    redis_server: RedisServer,
) -> None:
    values = {
        **smtp_env,
        "HEBDO_BROKER_URL": redis_server.url,  # not started: the broker is down
        "HEBDO_SWEEP_SECONDS": "1",
    }
    app = make_app(values)
    client = app.test_client()
    started = time.monotonic()
    for i in range(5):
        response = client.post("/api/v1/subscriptions", json={"email": f"panne{i}@exemple.fr"})
        assert response.status_code == 202
    # Failing fast matters: the form must not hang while the broker is down.
    assert time.monotonic() - started < 30
    with app.app_context():
        owed = db.session.execute(select(Subscriber.confirm_due_at)).scalars().all()
    assert len(owed) == 5 and all(owed)  # committed, owed, not sent
    assert smtp_server.messages == []

    redis_server.start()
    celery_worker(values, beat=True)
    mails = smtp_server.wait_for(5, timeout=90)
    assert sorted(m.rcpt_tos[0] for m in mails) == [f"panne{i}@exemple.fr" for i in range(5)]
    time.sleep(3)  # several more sweeps run: none sends a mail twice
    assert len(smtp_server.messages) == 5
    assert subscriber(app, "panne0@exemple.fr").confirm_due_at is None
