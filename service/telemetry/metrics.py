"""Prometheus metrics: counters the code increments, and gauges read from the database when
`/metrics` is scraped.

Counters live in each process. Under gunicorn (several web processes) and Celery's prefork
pool (several worker processes) they are shared through prometheus_client's multiprocess
mode: set `PROMETHEUS_MULTIPROC_DIR` to an empty folder before the processes start (`hebdo
run` does, and docker-compose.yml); each process then writes its counters there and
`/metrics` adds them up. A worker machine serves its own on `HEBDO_METRICS_PORT` (the
worker's main process, from the same folder). Without the variable (tests, one process)
the counters are the process's own.

Gauges (subscribers per status, the send queue's depth and age, each sending issue's
progress, each recent issue's sent deliveries and complaints, the broker's queue lengths)
are read at scrape time from PostgreSQL/SQLite and Redis, so they are right whichever
process asks, and cost a handful of indexed queries per scrape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import redis
from prometheus_client import CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import func, select

from service.config import Settings
from service.extensions import QUEUES, db
from service.models import Delivery, DeliveryStatus, Feed, Issue, IssueStatus, Subscriber

SIGNUPS = Counter(
    "hebdo_signup_attempts",
    "Sign-up posts by outcome: accepted, invalid, consent_missing, rate_limited, honeypot, "
    "too_fast, bad_form_token, captcha_required, captcha_failed.",
    ["outcome"],
)
CONFIRMATIONS = Counter("hebdo_confirmations", "Subscriptions confirmed from the mailed link")
CONFIRMATION_MAILS = Counter(
    "hebdo_confirmation_mails",
    "Confirmation mails, by result (sent, deferred, bounced, failed)",
    ["result"],
)
UNSUBSCRIBES = Counter(
    "hebdo_unsubscribes",
    "Subscribers who stopped receiving mail, by channel (one-click, page, admin, bounce, "
    "complaint)",
    ["channel"],
)
COMPLAINTS = Counter(
    "hebdo_complaint_reports",
    "Feedback-loop (ARF) reports, by result (complained, duplicate, unknown, ignored, invalid)",
    ["result"],
)
INBOUND = Counter(
    "hebdo_inbound_messages",
    "Mails and provider events that came back, by kind (bounce, complaint, unsubscribe, "
    "auto_reply, reply, notice) and verdict (bounced, soft_bounce, complained, unsubscribed, "
    "duplicate, auto_reply, forwarded, kept, unattributed)",
    ["kind", "verdict"],
)
DELIVERIES = Counter(
    "hebdo_deliveries",
    "Digest deliveries, by outcome (sent, retried, failed, bounced, skipped, released)",
    ["outcome"],
)
FEED_FETCHES = Counter(
    "hebdo_feed_fetches", "Feed fetches, by result (ok, not_modified, error)", ["result"]
)
CLICKS = Counter(
    "hebdo_clicks",
    "Digest article links followed (/c/…), by result: counted, or not counted and why (head, "
    "scanner, not_sent, burst, error); every one was redirected",
    ["result"],
)

# How long after its send an issue's complaint rate is served: reports trickle in for days.
RECENT_ISSUES = timedelta(days=30)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def counters_registry() -> CollectorRegistry:
    """Every process's counters (multiprocess mode), or this process's."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class StateCollector(Collector):
    """Gauges read from the database and the broker at scrape time (in an app context)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        subscribers = GaugeMetricFamily(
            "hebdo_subscribers", "Subscribers per status", labels=["status"]
        )
        for status, n in db.session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)
        ):
            subscribers.add_metric([status], n)
        yield subscribers

        now = datetime.now(UTC)
        due = (
            Delivery.status == DeliveryStatus.QUEUED,
            Delivery.next_attempt_at <= now,
        )
        depth, oldest = db.session.execute(
            select(func.count(), func.min(Delivery.next_attempt_at)).where(*due)
        ).one()
        yield GaugeMetricFamily(
            "hebdo_send_queue_depth", "Deliveries due now and not yet claimed", value=depth
        )
        # min() keeps the column's type (UTCDateTime): an aware time on every backend.
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "hebdo_send_queue_age_seconds",
            "How long the oldest due delivery has waited (0 when none waits)",
            value=max(age, 0.0),
        )
        owed = db.session.execute(
            select(func.count()).where(Subscriber.confirm_due_at.is_not(None))
        ).scalar_one()
        yield GaugeMetricFamily(
            "hebdo_confirmations_owed", "Confirmation mails owed and not yet sent", value=owed
        )

        progress = GaugeMetricFamily(
            "hebdo_issue_deliveries",
            "Deliveries of each issue being sent (or paused), per status",
            labels=["week", "status"],
        )
        rows = db.session.execute(
            select(Issue.week, Delivery.status, func.count())
            .join(Delivery, Delivery.issue_id == Issue.id)
            .where(Issue.status.in_((IssueStatus.SENDING, IssueStatus.PAUSED)))
            .group_by(Issue.week, Delivery.status)
        )
        for week, status, n in rows:
            progress.add_metric([week, status], n)
        yield progress

        # Complaints arrive for days after a send: every issue started in the last 30 days.
        sent = GaugeMetricFamily(
            "hebdo_issue_sent", "Deliveries sent of each recent issue", labels=["week"]
        )
        complaints = GaugeMetricFamily(
            "hebdo_issue_complaints",
            "Feedback-loop complaints about each recent issue (its complaint rate: / sent)",
            labels=["week"],
        )
        hard = GaugeMetricFamily(
            "hebdo_issue_hard_bounces",
            "Hard bounces of each recent issue: refused at the relay, or by a DSN or a "
            "provider's event since (its hard-bounce rate: / recipients)",
            labels=["week"],
        )
        soft = GaugeMetricFamily(
            "hebdo_issue_soft_bounces",
            "Deliveries of each recent issue that a DSN said failed for now",
            labels=["week"],
        )
        recipients = GaugeMetricFamily(
            "hebdo_issue_recipients", "Recipients of each recent issue", labels=["week"]
        )
        recent = db.session.execute(
            select(
                Issue.week,
                Issue.sent_count,
                Issue.complaint_count,
                Issue.recipients,
                Issue.bounced_count + Issue.hard_bounce_count,
                Issue.soft_bounce_count,
            ).where(Issue.started_at >= now - RECENT_ISSUES)
        )
        for week, sent_count, complaint_count, total, hard_count, soft_count in recent:
            sent.add_metric([week], sent_count)
            complaints.add_metric([week], complaint_count)
            recipients.add_metric([week], total)
            hard.add_metric([week], hard_count)
            soft.add_metric([week], soft_count)
        yield from (sent, complaints, recipients, hard, soft)

        failing = db.session.execute(
            select(func.count()).where(Feed.last_result == "error")
        ).scalar_one()
        yield GaugeMetricFamily(
            "hebdo_feeds_failing", "Feeds whose last fetch failed", value=failing
        )
        db.session.remove()

        if self.settings.broker_url.startswith(("redis://", "rediss://")):
            queues = GaugeMetricFamily(
                "hebdo_broker_queue_length", "Messages waiting in each queue", labels=["queue"]
            )
            client = redis.Redis.from_url(self.settings.broker_url, socket_timeout=2)
            try:
                for name in QUEUES:
                    queues.add_metric([name], int(client.llen(name)))
            except redis.RedisError:
                pass  # /readyz says the broker is down; the metrics still answer
            finally:
                client.close()
            yield queues


def exposition(settings: Settings) -> bytes:
    """The text `/metrics` answers: counters of every process, then the state gauges."""
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(settings))
    return generate_latest(counters_registry()) + generate_latest(state)
