"""An issue's life after planning: the weekly clock that starts it, pause, resume,
cancel, approve, sending it at once, and the audit of what people did to it.

The CLI (`hebdo digest …`), the admin pages and the admin API all call these, so an
issue answers the same way whichever face steers it.

The beat calls `tick` every HEBDO_SWEEP_SECONDS; it decides from the database
alone, so any number of ticks, workers or restarts start one issue a week.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from service.admin.audit import audit
from service.config import Settings
from service.digest.delivery import (
    Enqueue,
    dispatch,
    set_issue_status,
    start_send,
    sweep,
)
from service.digest.planning import (
    DigestError,
    PlanResult,
    get_issue,
    parse_week,
    plan_issue,
    send_time,
    week_of,
)
from service.extensions import db
from service.models import Delivery, DeliveryStatus, Issue, IssueStatus

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


class NoIssue(DigestError):
    """No issue for that week (or no such week): a 404 for the web faces."""


class Refused(DigestError):
    """The issue is not in a status that allows the action: a 409 for the web faces."""

    def __init__(self, message: str, week: str, status: str) -> None:
        super().__init__(message)
        self.week = week
        self.status = status


def require_issue(week: str) -> Issue:
    """The issue of `week` (any spelling parse_week accepts); NoIssue when there is none."""
    try:
        week = parse_week(week)
    except DigestError as exc:
        raise NoIssue(str(exc)) from None
    issue = get_issue(week)
    if issue is None:
        raise NoIssue(f"no issue for {week}")
    return issue


TRANSITIONS = ("approve", "pause", "resume", "cancel")


def plan_week(week: str) -> str:
    """The canonical form of a week to plan (`2026-w5` → `2026-W05`); NoIssue when it is none."""
    try:
        return parse_week(week)
    except DigestError as exc:
        raise NoIssue(str(exc)) from None


def plan(settings: Settings, week: str, now: datetime) -> PlanResult:
    """Plan (or refresh) the issue of `week` ahead of its send, so it can be previewed,
    tested, approved or sent now; Refused once it has started going out."""
    result = plan_issue(settings, plan_week(week), now)
    if not result.changed:
        raise Refused(
            f"{result.week} is {result.status}: cannot plan it again", result.week, result.status
        )
    return result


def transition(settings: Settings, week: str, name: str, now: datetime, enqueue: Enqueue) -> Issue:
    """approve, pause, resume or cancel the issue of `week`; Refused when its status forbids it."""
    issue = require_issue(week)
    done = {
        "approve": lambda: approve(issue.id, now),
        "pause": lambda: pause(issue.id),
        "resume": lambda: resume(settings, issue.id, now, enqueue),
        "cancel": lambda: cancel(issue.id, now),
    }[name]()
    if not done:
        raise Refused(f"{issue.week} is {issue.status}: cannot {name} it", issue.week, issue.status)
    db.session.refresh(issue)
    return issue


@dataclass(frozen=True)
class SendResult:
    week: str
    # A draft approved on the way.
    approved: bool
    # The issue's status when the send was decided (before this call started it).
    status: str
    # Set when this call started the send: subscribers snapshotted, batch tasks queued.
    recipients: int | None
    queued: int


def send(
    settings: Settings, week: str, now: datetime, enqueue: Enqueue, *, at_once: bool
) -> SendResult:
    """Approve the issue for its scheduled time, or with `at_once` start sending it now.

    Plans it if absent, refreshes its articles (without review), or revives a week that
    was cancelled before going out. Sending twice is harmless: `start_send` only starts
    a scheduled issue, so a second call finds it sending and starts nothing.
    """
    week = parse_week(week)
    issue = get_issue(week)
    if (
        issue is None
        or (issue.status == IssueStatus.SCHEDULED and not settings.review)
        or (issue.status == IssueStatus.CANCELLED and issue.started_at is None)
    ):
        plan_issue(settings, week, now)
        issue = require_issue(week)
    if issue.status == IssueStatus.CANCELLED:
        raise Refused(
            f"{week} is cancelled ({issue.note or 'by an operator'}); nothing sent",
            week,
            issue.status,
        )
    approved = issue.status == IssueStatus.DRAFT and approve(issue.id, now)
    issue = require_issue(week)
    db.session.refresh(issue)
    status = issue.status
    recipients: int | None = None
    queued = 0
    if status == IssueStatus.SCHEDULED and at_once:
        started = start_send(settings, issue.id, now)
        if started >= 0:
            recipients = started
            queued = dispatch(settings, issue.id, now, enqueue)
        else:
            # Started by someone else since we read it (another `digest send`, beat's tick):
            # say what it is now rather than nothing.
            status = _status_of(issue.id)
    return SendResult(week, approved, status, recipients, queued)


def _status_of(issue_id: int) -> str:
    return str(db.session.execute(select(Issue.status).where(Issue.id == issue_id)).scalar_one())


def record(
    action: str,
    week: str,
    *,
    actor: str,
    now: datetime,
    ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """An audit event about the issue of `week` (`issue.send`, `issue.pause`…), committed."""
    audit(action, actor=actor, now=now, subject=f"issue:{week}", ip=ip, detail=detail)
    db.session.commit()


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
