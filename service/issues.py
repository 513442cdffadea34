"""An issue's life after planning: the weekly clock that starts it, pause, resume,
cancel, approve, and its progress.

The beat calls `tick` every HEBDO_SWEEP_SECONDS; it decides from the database
alone, so any number of ticks, workers or restarts start one issue a week.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from .config import Settings
from .delivery import Enqueue, dispatch, set_issue_status, start_send, status_counts, sweep
from .digest import DigestError, get_issue, plan_issue, send_time, week_of
from .extensions import db
from .models import Delivery, DeliveryStatus, Issue, IssueStatus

log = logging.getLogger(__name__)

# A weekly send missed by longer than this (service down) is not caught up by the beat:
# mail arriving days late surprises more than it helps; `hebdo digest send --now` does it.
MAX_LATE = timedelta(hours=24)
ONE_WEEK = timedelta(weeks=1)


def approve(issue_id: int, now: datetime) -> bool:
    """draft → scheduled (review mode)."""
    return set_issue_status(
        issue_id, (IssueStatus.DRAFT,), status=IssueStatus.SCHEDULED, approved_at=now
    )


def pause(issue_id: int) -> bool:
    """sending → paused: batch tasks stop claiming; the batches in flight finish."""
    return set_issue_status(issue_id, (IssueStatus.SENDING,), status=IssueStatus.PAUSED)


def resume(settings: Settings, issue_id: int, now: datetime, enqueue: Enqueue) -> bool:
    if not set_issue_status(issue_id, (IssueStatus.PAUSED,), status=IssueStatus.SENDING):
        return False
    dispatch(settings, issue_id, now, enqueue)
    return True


def cancel(issue_id: int, now: datetime) -> bool:
    """Stop an issue for good; deliveries not yet sent are marked skipped."""
    allowed = (IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.SENDING, IssueStatus.PAUSED)
    if not set_issue_status(issue_id, allowed, status=IssueStatus.CANCELLED, finished_at=now):
        return False
    db.session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.SKIPPED, last_error="issue cancelled")
    )
    db.session.commit()
    return True


@dataclass(frozen=True)
class Progress:
    week: str
    status: str
    recipients: int
    counts: dict[str, int]
    started_at: datetime | None
    finished_at: datetime | None
    rate_last_minute: float
    note: str | None

    @property
    def done(self) -> int:
        c = self.counts
        return c.get("sent", 0) + c.get("failed", 0) + c.get("bounced", 0) + c.get("skipped", 0)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.recipients if self.recipients else 100.0


def progress(week: str, now: datetime) -> Progress:
    issue = get_issue(week)
    if issue is None:
        raise DigestError(f"no issue for {week}")
    counts = status_counts(issue.id)
    last_minute = db.session.execute(
        select(func.count())
        .select_from(Delivery)
        .where(Delivery.issue_id == issue.id, Delivery.sent_at > now - timedelta(minutes=1))
    ).scalar_one()
    return Progress(
        week=issue.week,
        status=issue.status,
        recipients=issue.recipients,
        counts=counts,
        started_at=issue.started_at,
        finished_at=issue.finished_at,
        rate_last_minute=last_minute / 60.0,
        note=issue.note,
    )


# ---------------------------------------------------------------- the weekly clock


def tick(settings: Settings, now: datetime, enqueue: Enqueue) -> None:
    """Run by beat every HEBDO_SWEEP_SECONDS: plan and start the week's issue when due,
    and sweep. Idempotent: any number of ticks, workers or restarts give one issue."""
    # A draft nobody approved in time gives its articles back to the next issue.
    expired = (
        db.session.execute(
            update(Issue)
            .where(Issue.status == IssueStatus.DRAFT, Issue.send_at < now - MAX_LATE)
            .values(
                status=IssueStatus.CANCELLED,
                note="not approved in time; articles go to the next issue",
            )
            .returning(Issue.week)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    db.session.commit()
    for week in expired:
        log.warning(
            "issue %s was never approved: cancelled, its articles go to the next issue", week
        )
    # This week's send; last week's, when a late send crossed into a new week (a Sunday
    # evening schedule, beat down until Monday); next week's, when review mode plans it
    # ahead across Sunday night.
    weeks = (
        week_of(settings, now - ONE_WEEK),
        week_of(settings, now),
        week_of(settings, now + ONE_WEEK),
    )
    for week in dict.fromkeys(weeks):
        due = send_time(settings, week)
        plan_from = due - timedelta(hours=settings.review_lead_hours) if settings.review else due
        if now < plan_from or now - due > MAX_LATE:
            continue
        issue = get_issue(week)
        if issue is None or (not settings.review and issue.status == IssueStatus.SCHEDULED):
            # Without review, the articles are refreshed right before the send.
            plan_issue(settings, week, now)
            issue = get_issue(week)
        if (
            issue is not None
            and issue.status == IssueStatus.SCHEDULED
            and now >= issue.send_at
            and start_send(settings, issue.id, now) >= 0
        ):
            dispatch(settings, issue.id, now, enqueue)
    sweep(settings, now, enqueue)
