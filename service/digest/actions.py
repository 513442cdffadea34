"""What people and the weekly clock do to an issue: plan, approve, send (now or at its
time), pause, resume, cancel, send a test; and `tick`, the clock itself.

One function per action, called alike by the CLI (`hebdo digest …`), the admin pages and
the admin API, so an issue answers the same way whichever face steers it, and each action
leaves the same audit event (`issue.<action>`, subject `issue:<week>`) whoever took it.
Status changes themselves are `lifecycle`'s; this module decides when to make them.

The beat calls `tick` every HEBDO_SWEEP_SECONDS; it decides from the database
alone, so any number of ticks, workers or restarts start one issue a week.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from service.admin.audit import Actor, audit
from service.config import Settings
from service.digest import lifecycle
from service.digest.delivery import Enqueue, dispatch, start_send, sweep
from service.digest.planning import (
    MAX_LATE,
    PlanResult,
    Refused,
    get_issue,
    parse_week,
    plan_issue,
    plan_week,
    require_issue,
    send_time,
    week_of,
)
from service.digest.previews import SuppressedAddress, send_test
from service.digest.rendering import Recipient
from service.extensions import db
from service.models import Issue, IssueStatus
from service.subscribers.addresses import InvalidEmail

log = logging.getLogger(__name__)

ONE_WEEK = timedelta(weeks=1)
# What the admin faces offer, in the order of an issue's life.
ACTIONS = ("plan", "approve", "send", "pause", "resume", "cancel", "test")


def _record(
    action: str, week: str, by: Actor, now: datetime, detail: dict[str, Any] | None = None
) -> None:
    """The audit event of an action on the issue of `week`, committed."""
    audit(
        f"issue.{action}", actor=by.name, now=now, subject=f"issue:{week}", ip=by.ip, detail=detail
    )
    db.session.commit()


def _refused(issue: Issue, action: str) -> Refused:
    db.session.refresh(issue)
    return Refused(f"{issue.week} is {issue.status}: cannot {action} it", issue.week, issue.status)


def _change(
    week: str, action: str, now: datetime, by: Actor, change: Callable[[int], bool]
) -> Issue:
    """Make one status change of the issue of `week` (Refused when its status forbids it),
    audit it, and return the issue as it is now."""
    issue = require_issue(week)
    if not change(issue.id):
        raise _refused(issue, action)
    _record(action, issue.week, by, now)
    return require_issue(issue.week)


def plan(settings: Settings, week: str, now: datetime, by: Actor) -> PlanResult:
    """Plan (or refresh) the issue of `week` ahead of its send, so it can be previewed,
    tested, approved or sent now; Refused once it has started going out."""
    result = plan_issue(settings, plan_week(week), now)
    if not result.changed:
        raise Refused(
            f"{result.week} is {result.status}: cannot plan it again", result.week, result.status
        )
    _record("plan", result.week, by, now, {"articles": result.articles, "status": result.status})
    return result


def approve(settings: Settings, week: str, now: datetime, by: Actor) -> Issue:
    """Review mode: a draft goes out at its scheduled time."""
    return _change(week, "approve", now, by, lambda issue_id: lifecycle.approve(issue_id, now))


def pause(settings: Settings, week: str, now: datetime, by: Actor) -> Issue:
    """Stop sending after the batches in flight; `resume` picks up where it stopped."""
    return _change(week, "pause", now, by, lifecycle.pause)


def resume(settings: Settings, week: str, now: datetime, enqueue: Enqueue, by: Actor) -> Issue:
    """Carry on a paused send: sending again, its due batches queued."""

    def sending_again(issue_id: int) -> bool:
        if not lifecycle.resume(issue_id):
            return False
        dispatch(settings, issue_id, now, enqueue)
        return True

    return _change(week, "resume", now, by, sending_again)


def cancel(settings: Settings, week: str, now: datetime, by: Actor) -> Issue:
    """Stop an issue for good; whoever has not got it yet will not."""
    return _change(week, "cancel", now, by, lambda issue_id: lifecycle.cancel(issue_id, now))


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

    @property
    def started(self) -> bool:
        return self.recipients is not None


def send(
    settings: Settings, week: str, now: datetime, enqueue: Enqueue, by: Actor, *, at_once: bool
) -> SendResult:
    """Approve the issue for its scheduled time, or with `at_once` start sending it now.

    Plans it if absent, refreshes its articles (without review), or revives a week that
    was cancelled before going out. Sending twice is harmless: `start_send` only starts
    a scheduled issue, so a second call finds it sending and starts nothing. Audited as
    `issue.approve` when it approved a draft, `issue.send` when it started the send.
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
    approved = issue.status == IssueStatus.DRAFT and lifecycle.approve(issue.id, now)
    if approved:
        _record("approve", week, by, now)
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
            _record("send", week, by, now, {"recipients": recipients, "approved": approved})
        else:
            # Started by someone else since we read it (another `digest send`, beat's tick):
            # say what it is now rather than nothing.
            db.session.refresh(issue)
            status = issue.status
    return SendResult(week, approved, status, recipients, queued)


def test(
    settings: Settings,
    week: str,
    to: str,
    locale: str | None,
    now: datetime,
    by: Actor,
    *,
    own_address: str | None = None,
    reveal_suppression: bool = True,
) -> tuple[Recipient, str | None]:
    """Send the issue to `to` now, marked [TEST], without recording a delivery; returns the
    recipient and the server's reply. The audit event holds no address (see AuditEvent):
    only whether it was the actor's own (`own_address`).

    A suppressed address is never mailed. With `reveal_suppression` (admins, who may look
    the list up) that raises SuppressedAddress; without it (editors) the call returns as if
    the mail went out, with no reply, so the answer does not tell whether the address is
    on the list; the audit event (admins only) says it was withheld.
    """
    issue = require_issue(week)
    if not to:
        raise InvalidEmail("empty")
    withheld = False
    reply: str | None = None
    try:
        recipient, reply = send_test(settings, issue, to, locale, now)
    except SuppressedAddress as exc:
        if reveal_suppression:
            raise
        recipient, withheld = exc.recipient, True
    detail: dict[str, Any] = {"own_address": recipient.email == (own_address or "")}
    if withheld:
        detail["withheld"] = "suppressed"
    _record("test", issue.week, by, now, detail)
    return recipient, reply


# ---------------------------------------------------------------- the weekly clock


def tick(settings: Settings, now: datetime, enqueue: Enqueue) -> None:
    """Run by beat every HEBDO_SWEEP_SECONDS: plan and start the week's issue when due,
    and sweep. Idempotent: any number of ticks, workers or restarts give one issue."""
    # A draft nobody approved in time gives its articles back to the next issue.
    lifecycle.expire_drafts(now - MAX_LATE)
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
