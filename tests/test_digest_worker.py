"""The weekly send through real Celery workers: the CLI's `digest send --now`, and a worker
killed mid-send and restarted (nothing lost; duplicates bounded by what was in flight)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from service.digest.delivery import NOTHING_CHOSEN, PAUSED
from service.digest.lifecycle import status_counts
from service.digest.planning import get_issue
from service.extensions import db
from service.models import Delivery, DeliveryStatus, Subscriber
from tests.support.data import add_article, add_readers, add_subscribers, issue_status
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
    received = smtp_server.per_recipient()
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
    duplicates = smtp_server.duplicates()
    print(f"killed after {at_kill} of {total} messages; {duplicates} duplicate(s)")
    # At most the batches that were in flight in the killed worker's processes.
    assert duplicates <= batch * concurrency


def test_each_reader_gets_only_their_categories_and_paused_or_empty_choices_get_nothing(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    values = {**smtp_env, "HEBDO_SEND_BATCH": "3"}
    app = make_app(values)
    now = datetime.now(UTC)
    titles = {"International": "Sommet climat", "IA": "Modeles ouverts", "Startups": "Levee record"}
    for n, (category, title) in enumerate(titles.items(), 1):
        add_article(app, n, now - timedelta(days=1), category=category, title=title)
    choices: dict[str, list[str] | None] = {
        "all@exemple.fr": None,
        "none-chosen@exemple.fr": [],
        "every@exemple.fr": ["Startups", "Sport", "IA", "International"],
        "ia@exemple.fr": ["IA"],
        "ia-startups@exemple.fr": ["IA", "Startups"],
        "startups-ia@exemple.fr": ["Startups", "IA", "Startups"],
        "sport@exemple.fr": ["Sport"],
        "paused@exemple.fr": None,
    }
    ids = add_readers(app, list(choices))
    ids |= add_readers(app, ["ia-en@exemple.fr"], locale="en")
    choices["ia-en@exemple.fr"] = ["IA"]
    with app.app_context():
        for email, categories in choices.items():
            db.session.get(Subscriber, ids[email]).categories = categories  # type: ignore[union-attr]
        paused = db.session.get(Subscriber, ids["paused@exemple.fr"])
        paused.paused_until = date.today() + timedelta(days=14)  # type: ignore[union-attr]
        db.session.commit()
    worker = celery_worker(values)
    result = app.test_cli_runner().invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    week = result.output.split(":", 1)[0]
    wait_until(lambda: issue_status(app, week) == "sent", 60, "the issue to be marked sent")

    expected = {
        "all@exemple.fr": set(titles),
        "none-chosen@exemple.fr": set(titles),
        "every@exemple.fr": set(titles),
        "ia@exemple.fr": {"IA"},
        "ia-en@exemple.fr": {"IA"},
        "ia-startups@exemple.fr": {"IA", "Startups"},
        "startups-ia@exemple.fr": {"IA", "Startups"},
    }
    received = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    assert len(smtp_server.messages) == len(received) == len(expected)
    assert set(received) == set(expected)
    for email, wanted in expected.items():
        for part in ("plain", "html"):
            body = received[email].part(part)
            shown = {c for c, title in titles.items() if title in body}
            assert shown == wanted, (email, part)
    with app.app_context():
        issue = get_issue(week)
        assert issue is not None
        counts = status_counts(issue.id)
        reasons = dict(
            db.session.execute(
                select(Subscriber.email, Delivery.last_error)
                .join(Delivery, Delivery.subscriber_id == Subscriber.id)
                .where(Delivery.status == DeliveryStatus.SKIPPED)
            )
            .tuples()
            .all()
        )
    assert (counts["sent"], counts["skipped"], counts["failed"]) == (7, 2, 0)
    assert reasons == {"paused@exemple.fr": PAUSED, "sport@exemple.fr": NOTHING_CHOSEN}
    status = app.test_cli_runner().invoke(args=["digest", "status", "--week", week])
    assert "9/9 done (100.0 %), sent 7," in status.output and "skipped 2" in status.output
    # One rendering per variant present, not per reader (one pool process, batches of 3):
    # fr × every category, fr × IA, fr × IA + Startups, en × IA.
    renders = re.findall(r"rendered the (\w+) digest for (.+)", worker.output())
    assert sorted((locale, what.strip()) for locale, what in renders) == [
        ("en", "IA"),
        ("fr", "IA"),
        ("fr", "IA, Startups"),
        ("fr", "every category"),
    ]
