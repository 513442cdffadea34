"""An issue sent in the test process, batch by batch, at chosen times (the worker tests
run the same batches in Celery workers).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import select

from service.digest import delivery
from service.digest.planning import get_issue, plan_issue
from service.extensions import db
from service.mail.transport import open_transport
from service.models import Delivery, Issue, Subscriber
from tests.support.data import add_article, add_subscribers
from tests.support.smtp import Received, SMTPSink

NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
WEEK = "2026-W48"


class Sender:
    """Start an issue and run its batch tasks in this process, at chosen times."""

    def __init__(self, app: Flask, week: str = WEEK) -> None:
        self.app = app
        self.week = week
        self.settings = app.config["SETTINGS"]
        self.queue: list[int] = []

    def enqueue(self, issue_id: int) -> bool:
        self.queue.append(issue_id)
        return True

    def start(self, now: datetime = NOW) -> int:
        with self.app.app_context():
            plan_issue(self.settings, self.week, now)
            issue = get_issue(self.week)
            assert issue is not None
            recipients = delivery.start_send(self.settings, issue.id, now)
            delivery.dispatch(self.settings, issue.id, now, self.enqueue)
            return recipients

    def run(self, now: datetime = NOW) -> list[delivery.BatchReport]:
        """Run every queued batch task (as a worker would), at `now`."""
        reports = []
        with self.app.app_context(), open_transport(self.settings) as transport:
            while self.queue:
                issue_id = self.queue.pop(0)
                reports.append(
                    delivery.send_batch(
                        self.settings, issue_id, transport=transport, clock=lambda: now
                    )
                )
        return reports

    def sweep(self, now: datetime) -> int:
        with self.app.app_context():
            return delivery.sweep(self.settings, now, self.enqueue)

    def issue(self) -> Issue:
        with self.app.app_context():
            issue = get_issue(self.week)
            assert issue is not None
            db.session.expunge(issue)
            return issue

    def deliveries(self) -> dict[str, Delivery]:
        with self.app.app_context():
            rows = db.session.execute(
                select(Subscriber.email, Delivery).join(
                    Subscriber, Subscriber.id == Delivery.subscriber_id
                )
            ).all()
            for _email, row in rows:
                db.session.expunge(row)
            return {email: row for email, row in rows}


def send_to_readers(app: Flask, smtp_server: SMTPSink, count: int = 3) -> dict[str, Received]:
    """Issue 2026-W48 (one article) sent to reader0..reader<count-1> through `smtp_server`:
    what each mailbox received, by address. The server's list is emptied afterwards."""
    add_article(app, 1, NOW - timedelta(days=1))
    add_subscribers(app, count)
    sender = Sender(app)
    sender.start()
    sender.run()
    mails = {m.rcpt_tos[0]: m for m in smtp_server.wait_for(count)}
    smtp_server.messages.clear()
    return mails
