"""Thin Celery tasks over the domain functions: ids in, no results out."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import shared_task

from service.config import Settings
from service.digest import actions, delivery, feeds
from service.digest.send_rate import SendRate, send_rate
from service.extensions import current_settings
from service.jobs import enqueue_batch
from service.mail.errors import TransientFailure
from service.mail.transport import open_transport
from service.ops.housekeeping import housekeeping
from service.subscribers.confirmations import send_confirmation, send_due_confirmations
from service.telemetry.metrics import DELIVERIES, FEED_FETCHES

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


_rate: SendRate | None = None


def _send_rate(settings: Settings) -> SendRate:
    """One limiter per worker process (it holds a Redis connection pool)."""
    global _rate
    if _rate is None:
        _rate = send_rate(settings)
    return _rate


@shared_task(name="hebdo.send_confirmation")
def send_confirmation_task(subscriber_id: int) -> None:
    """Send one confirmation mail. A transient failure is left to the sweep (with backoff)."""
    settings = current_settings()
    with open_transport(settings) as transport:
        try:
            send_confirmation(
                subscriber_id, transport=transport, settings=settings, now=datetime.now(UTC)
            )
        except TransientFailure as exc:
            log.info("confirmation for %s deferred: %s", subscriber_id, exc)


# A burst of sign-ups may owe more mails than one round sends: go on while rounds come back
# full, within a bound (the next sweep carries on).
SWEEP_ROUNDS = 20
SWEEP_BATCH = 500


@shared_task(name="hebdo.sweep_confirmations")
def sweep_confirmations_task() -> None:
    """Send every owed confirmation mail nobody is sending."""
    settings = current_settings()
    total = 0
    with open_transport(settings) as transport:
        for _round in range(SWEEP_ROUNDS):
            sent = send_due_confirmations(
                transport=transport, settings=settings, now=datetime.now(UTC), limit=SWEEP_BATCH
            )
            total += sent
            if sent < SWEEP_BATCH:
                break
    if total:
        log.info("sweep sent %d confirmation mail(s)", total)


@shared_task(name="hebdo.send_batch")
def send_batch_task(issue_id: int) -> None:
    """Claim and send one batch of an issue over one SMTP connection.

    Safe to run twice or in parallel: it only sends rows it claimed. A soft
    time limit (240 s) interrupts it with its outcomes written (see send_batch).
    """
    settings = current_settings()
    with open_transport(settings) as transport:
        report = delivery.send_batch(
            settings, issue_id, transport=transport, clock=_now, rate=_send_rate(settings)
        )
    for outcome in ("sent", "retried", "failed", "bounced", "skipped", "released"):
        if count := getattr(report, outcome):
            DELIVERIES.labels(outcome=outcome).inc(count)
    if report.claimed:
        log.info(
            "issue %s batch: %d sent, %d retried, %d failed, %d bounced, %d skipped, %d released",
            issue_id,
            report.sent,
            report.retried,
            report.failed,
            report.bounced,
            report.skipped,
            report.released,
        )


@shared_task(name="hebdo.digest_tick")
def digest_tick_task() -> None:
    """Plan and start this week's issue when it is due, and keep sending issues moving."""
    actions.tick(current_settings(), _now(), enqueue_batch)


@shared_task(name="hebdo.fetch_feeds")
def fetch_feeds_task() -> None:
    """Read every configured feed (each in its own transaction)."""
    for report in feeds.ingest_all(current_settings(), _now()):
        FEED_FETCHES.labels(result=report.result).inc()


@shared_task(name="hebdo.housekeeping")
def housekeeping_task() -> None:
    """Delete timed-out admin sessions, uploads never imported, old raw inbound mail."""
    purged = housekeeping(current_settings(), _now())
    if purged.sessions or purged.import_files or purged.inbound_raw:
        log.info(
            "housekeeping: %d admin session(s), %d import file(s), %d raw inbound mail(s) deleted",
            purged.sessions,
            purged.import_files,
            purged.inbound_raw,
        )
