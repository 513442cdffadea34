"""The weekly send through real Celery workers: the CLI's `digest send --now`, and a worker
killed mid-send and restarted (nothing lost; duplicates bounded by what was in flight)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from tests.support.data import add_article, add_subscribers, issue_status
from tests.support.processes import Process, kill_tree, wait_until
from tests.support.smtp import SMTPSink

# Real processes, browsers or many requests: the full suite's, not the fast lane's.
pytestmark = pytest.mark.slow


def test_digest_send_now_reaches_every_confirmed_subscriber_once(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    values = {**smtp_env, "HEBDO_SEND_BATCH": "50"}
    app = make_app(values)
    now = datetime.now(UTC)
    add_article(app, 1, now - timedelta(days=1), title="À la une cette semaine")
    add_subscribers(app, 300)
    add_subscribers(app, 20, status="pending", start=300)
    celery_worker(values, concurrency=2)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    assert "sending to 300 subscribers (6 batch tasks queued)" in result.output
    week = result.output.split(":", 1)[0]
    smtp_server.wait_for(300, timeout=90)
    wait_until(lambda: issue_status(app, week) == "sent", 30, "the issue to be marked sent")
    received = Counter(m.rcpt_tos[0] for m in smtp_server.messages)
    assert len(received) == 300 and set(received.values()) == {1}
    assert all("À la une cette semaine" in m.message["Subject"] for m in smtp_server.messages[:5])
    again = runner.invoke(args=["digest", "send", "--now", "--yes", "--week", week])
    assert again.exit_code == 0 and "already sent; nothing sent twice" in again.output
    status = runner.invoke(args=["digest", "status", "--week", week])
    assert "300/300 done (100.0 %), sent 300, queued 0" in status.output
    time.sleep(1)
    assert len(smtp_server.messages) == 300


def test_a_worker_killed_mid_send_loses_nothing_and_duplicates_stay_bounded(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    batch, concurrency, total = 20, 2, 400
    values = {
        **smtp_env,
        "HEBDO_SEND_BATCH": str(batch),
        "HEBDO_CLAIM_TIMEOUT_SECONDS": "3",
        "HEBDO_SMTP_TIMEOUT": "0.5",
        "HEBDO_SWEEP_SECONDS": "1",
    }
    app = make_app(values)
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1))
    add_subscribers(app, total)
    smtp_server.data_delay = 0.01  # ~100 messages/s per connection: the kill lands mid-send
    worker = celery_worker(values, concurrency=concurrency)
    result = app.test_cli_runner().invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    week = result.output.split(":", 1)[0]
    smtp_server.wait_for(100, timeout=60)
    kill_tree(worker)
    at_kill = len(smtp_server.messages)
    assert at_kill < total, "the send finished before the kill; slow the sink down"
    # A new worker, with beat: the sweep requeues the dead worker's claims and re-dispatches.
    celery_worker(values, concurrency=concurrency, beat=True)
    smtp_server.data_delay = 0
    wait_until(
        lambda: len({m.rcpt_tos[0] for m in smtp_server.messages}) == total,
        90,
        "every subscriber to be mailed",
    )
    wait_until(lambda: issue_status(app, week) == "sent", 30, "the issue to be marked sent")
    received = Counter(m.rcpt_tos[0] for m in smtp_server.messages)
    duplicates = sum(n - 1 for n in received.values())
    print(f"killed after {at_kill} of {total} messages; {duplicates} duplicate(s)")
    # At most the batches that were in flight in the killed worker's processes.
    assert duplicates <= batch * concurrency
