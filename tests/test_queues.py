"""Mail tasks and the rest go to separate queues: a worker on `default` alone runs the weekly
clock but sends nothing; mail goes out once a worker on `mail` starts; a confirmation mail
does not wait behind the digest's batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from service import jobs
from service.config import load_settings
from service.digest import delivery
from service.digest.planning import get_issue, plan_issue
from service.extensions import CONFIRM_QUEUE, DEFAULT_QUEUE, MAIL_QUEUE, QUEUES, TASK_ROUTES, db
from service.models import Issue
from service.ops.runner import commands
from tests.support.data import add_article, add_subscribers
from tests.support.processes import Process, wait_until
from tests.support.settings import BROKER_URL
from tests.support.smtp import SMTPSink

# Real processes, browsers or many requests: the full suite's, not the fast lane's.
pytestmark = pytest.mark.slow

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def worker_on(values: dict[str, str], queue: str) -> list[str]:
    """The worker command of `hebdo run`, consuming `queue` only (as a compose service does)."""
    argv = [*commands(load_settings(values), "127.0.0.1", 0)["worker"], "--without-heartbeat"]
    argv[argv.index("--queues") + 1] = queue
    return argv


def test_every_task_has_a_queue_and_hebdo_run_consumes_both(env: dict[str, str]) -> None:
    # Every task name service/jobs.py sends has a queue chosen on purpose.
    names = {v for k, v in vars(jobs).items() if k.isupper() and str(v).startswith("hebdo.")}
    assert names == set(TASK_ROUTES)
    assert {n for n, r in TASK_ROUTES.items() if r["queue"] == MAIL_QUEUE} == {jobs.SEND_BATCH}
    assert {n for n, r in TASK_ROUTES.items() if r["queue"] == CONFIRM_QUEUE} == {
        jobs.SEND_CONFIRMATION,
        jobs.SWEEP_CONFIRMATIONS,
    }
    worker = commands(load_settings(env), "127.0.0.1", 0)["worker"]
    assert worker[worker.index("--queues") + 1] == "confirm,mail,default" == ",".join(QUEUES)


def _issue(app: Flask) -> Issue | None:
    with app.app_context():
        db.session.expire_all()
        return db.session.execute(select(Issue)).scalars().first()


def _queued_on_mail(values: dict[str, str]) -> int:
    """Messages waiting in the broker's `mail` queue."""
    if BROKER_URL.startswith("redis"):
        import redis

        client = redis.Redis.from_url(BROKER_URL)
        try:
            return int(client.llen(MAIL_QUEUE))
        finally:
            client.close()
    folder = Path(values["HEBDO_DATA_DIR"]) / "broker" / "queue"
    return sum(1 for f in folder.iterdir() if f.name.endswith(f".{MAIL_QUEUE}.msg"))


def test_a_default_worker_runs_the_tick_and_only_a_mail_worker_sends(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    spawn: Callable[..., Process],
) -> None:
    # The week's send time was two minutes ago: the next tick starts the issue.
    due = datetime.now(UTC) - timedelta(minutes=2)
    values = {
        **smtp_env,
        "HEBDO_TIMEZONE": "UTC",
        "HEBDO_SEND_SCHEDULE": f"{DAYS[due.weekday()]} {due:%H:%M}",
        "HEBDO_SEND_BATCH": "10",
        "HEBDO_WORKER_CONCURRENCY": "1",
    }
    app = make_app(values)
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1))
    add_subscribers(app, 30)
    default = spawn(worker_on(values, DEFAULT_QUEUE), values, ready="ready.")
    with app.app_context():
        assert jobs.enqueue(jobs.DIGEST_TICK)
    # Started (status, recipients), then its batches queued: two commits, so wait for both.
    wait_until(
        lambda: (_issue(app) or Issue(batches_queued=0)).batches_queued > 0,
        30,
        "the tick to start it and queue its batches",
    )
    issue = _issue(app)
    assert issue is not None and issue.recipients == 30 and issue.batches_queued == 3
    time.sleep(2)
    assert smtp_server.messages == []
    assert _queued_on_mail(values) == 3
    assert "Task hebdo.digest_tick[" in default.output()
    assert "Task hebdo.send_batch[" not in default.output()

    spawn(worker_on(values, MAIL_QUEUE), values, ready="ready.")
    smtp_server.wait_for(30, timeout=60)
    wait_until(lambda: (_issue(app) or Issue()).status == "sent", 30, "the issue to be sent")
    assert set(smtp_server.per_recipient().values()) == {1}
    assert _queued_on_mail(values) == 0
    assert "Task hebdo.send_batch[" not in default.output()


def test_a_confirmation_does_not_wait_behind_a_large_send(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    spawn: Callable[..., Process],
) -> None:
    """Twenty digest batches are queued when a reader signs up: one worker process on
    `confirm,mail` sends the confirmation before half of them, not after all twenty (the
    old single queue did; the sign-up's sweep runs a second after it)."""
    values = {**smtp_env, "HEBDO_SEND_BATCH": "2", "HEBDO_WORKER_CONCURRENCY": "1"}
    app = make_app(values)
    now = datetime.now(UTC)
    add_article(app, 1, now - timedelta(days=1))
    add_subscribers(app, 40)
    settings = app.config["SETTINGS"]
    with app.app_context():
        week = f"{now:%G-W%V}"
        plan_issue(settings, week, now)
        issue = get_issue(week)
        assert issue is not None and delivery.start_send(settings, issue.id, now) == 40
        assert delivery.dispatch(settings, issue.id, now, jobs.enqueue_batch) == 20
    smtp_server.data_delay = 0.2  # a slow relay: a batch of 2 takes about half a second
    worker = worker_on(values, f"{CONFIRM_QUEUE},{MAIL_QUEUE}")
    assert worker[worker.index("--queues") + 1] == "confirm,mail"
    spawn(worker, values, ready="ready.")
    smtp_server.wait_for(1, timeout=60)

    signed_up = app.test_client().post("/api/v1/subscriptions", json={"email": "lea@exemple.fr"})
    assert signed_up.status_code == 202

    def confirmation_sent() -> bool:
        return any(m.rcpt_tos == ["lea@exemple.fr"] for m in smtp_server.messages)

    wait_until(confirmation_sent, 30, "the confirmation mail")
    before = next(i for i, m in enumerate(smtp_server.messages) if m.rcpt_tos == ["lea@exemple.fr"])
    # Half the send (ten batches) was still queued behind it.
    assert before <= 20, f"the confirmation went out after {before} digest messages"
    smtp_server.wait_for(41, timeout=60)
