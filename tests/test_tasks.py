"""The worker's tasks in this process, as the worker's own Celery app registers and routes
them: every task the service queues by name exists, goes to its queue, and runs its domain
function inside an app context. (Real workers are the worker tests'; this is the fast
lane's view of worker/.)"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from flask import Flask

from service import jobs
from service.digest.planning import week_of
from service.extensions import TASK_ROUTES, db
from service.models import Article, ImportFile, Subscriber
from service.subscribers.lifecycle import Consent, subscribe
from service.telemetry import logs
from tests.support.data import add_article, add_subscribers, issue_status


@pytest.fixture
def worker(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """worker.celery_app, built from this test's settings as `celery -A` builds it."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Built again from these settings; the tasks and signal handlers stay imported once, as
    # in a worker (importing them twice would register every task name twice).
    sys.modules.pop("worker.celery_app", None)
    module = importlib.import_module("worker.celery_app")
    yield module
    with module.flask_app.app_context():
        db.session.remove()
        db.engine.dispose()


def _celery(worker: ModuleType) -> Celery:
    celery: Celery = worker.celery
    return celery


def test_every_task_the_service_queues_is_registered_and_routed(worker: ModuleType) -> None:
    celery = _celery(worker)
    names = {
        value
        for key, value in vars(jobs).items()
        if key.isupper() and str(value).startswith("hebdo.")
    }
    assert names == set(TASK_ROUTES)
    for name in names:
        assert name in celery.tasks, name
        assert celery.amqp.router.route({}, name)["queue"].name == TASK_ROUTES[name]["queue"]
    for entry in celery.conf.beat_schedule.values():
        assert entry["task"] in names


def _flask(worker: ModuleType) -> Flask:
    app: Flask = worker.flask_app
    return app


def test_a_confirmation_task_sends_the_mail_it_is_given(worker: ModuleType) -> None:
    app = _flask(worker)
    settings = app.config["SETTINGS"]
    consent = Consent(source=None, text_version="t", ip=None, user_agent=None)
    with app.app_context():
        result = subscribe(
            "tache@exemple.fr",
            locale="fr",
            consent=consent,
            now=datetime.now(UTC),
            settings=settings,
        )
    # Called as the worker calls it (not .delay()): the task body in an app context.
    _celery(worker).tasks["hebdo.send_confirmation"](result.subscriber_id)
    captured = list(settings.mail_capture_dir.glob("*.eml"))
    assert len(captured) == 1 and b"tache@exemple.fr" in captured[0].read_bytes()
    with app.app_context():
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None and sub.confirm_sent_at is not None
    # The sweep finds nothing more to send: the mail went once.
    _celery(worker).tasks["hebdo.sweep_confirmations"]()
    assert len(list(settings.mail_capture_dir.glob("*.eml"))) == 1


def test_the_feed_task_reads_the_sample_feed(worker: ModuleType) -> None:
    app = _flask(worker)
    _celery(worker).tasks["hebdo.fetch_feeds"]()  # the bundled sample feed, outside production
    with app.app_context():
        assert db.session.query(Article).count() == 14


@pytest.fixture
def due_now(env: dict[str, str]) -> dict[str, str]:
    """The weekly send scheduled five minutes ago, local time."""
    moment = datetime.now(ZoneInfo("Europe/Paris")) - timedelta(minutes=5)
    env["HEBDO_SEND_SCHEDULE"] = f"{moment:%a} {moment:%H:%M}".lower()
    return env


def test_the_tick_task_plans_and_starts_the_issue_that_is_due(
    due_now: dict[str, str], worker: ModuleType
) -> None:
    app = _flask(worker)
    add_subscribers(app, 2)
    add_article(app, 1, datetime.now(UTC) - timedelta(hours=1))
    _celery(worker).tasks["hebdo.digest_tick"]()
    with app.app_context():
        week = week_of(app.config["SETTINGS"], datetime.now(UTC))
    # Started: its two deliveries wait for batch tasks no worker runs here.
    assert issue_status(app, week) == "sending"


def test_housekeeping_deletes_uploads_never_imported(worker: ModuleType) -> None:
    app = _flask(worker)
    old = datetime.now(UTC) - timedelta(days=2)
    with app.app_context():
        db.session.add(
            ImportFile(created_at=old, created_by="admin:a", filename="a.csv", content="x")
        )
        db.session.commit()
    _celery(worker).tasks["hebdo.housekeeping"]()
    with app.app_context():
        assert db.session.query(ImportFile).count() == 0


def test_log_lines_carry_the_task_id_while_it_runs(worker: ModuleType) -> None:
    signals = importlib.import_module("worker.signals")
    signals._task_started(task_id="abc-123")
    assert logs.task_id.get() == "abc-123"
    signals._task_finished(task_id="abc-123")
    assert logs.task_id.get() is None
