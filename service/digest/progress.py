"""How far an issue's send has gone: deliveries per status, the last minute's pace and
what is left, for the admin's live panel, the API and `hebdo digest status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from service.digest.lifecycle import status_counts
from service.digest.planning import NoIssue, get_issue
from service.extensions import db
from service.models import Delivery, DeliveryStatus, Issue, IssueStatus


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
    # Feedback-loop reports about this issue (see complaints.py).
    complaints: int = 0
    # What came back later (inbound): bounces of a permanent and of a temporary failure,
    # unsubscriptions by mail.
    late_hard_bounces: int = 0
    soft_bounces: int = 0
    mailto_unsubscribes: int = 0

    @property
    def done(self) -> int:
        c = self.counts
        return c.get("sent", 0) + c.get("failed", 0) + c.get("bounced", 0) + c.get("skipped", 0)

    @property
    def percent(self) -> float:
        if not self.recipients:
            # Nobody to send to: complete once started, not begun before.
            return 100.0 if self.started_at else 0.0
        return 100.0 * self.done / self.recipients

    @property
    def pending(self) -> int:
        """Still to go: queued, or claimed by a batch and not yet answered."""
        return self.counts.get("queued", 0) + self.counts.get("sending", 0)

    @property
    def eta_seconds(self) -> int | None:
        """At the last minute's pace; None when nothing is moving (not sending, or stalled)."""
        if self.status != IssueStatus.SENDING or self.rate_last_minute <= 0:
            return None
        return round(self.pending / self.rate_last_minute)


def progress(week: str, now: datetime) -> Progress:
    issue = get_issue(week)
    if issue is None:
        raise NoIssue(f"no issue for {week}")
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
        complaints=issue.complaint_count,
        late_hard_bounces=issue.hard_bounce_count,
        soft_bounces=issue.soft_bounce_count,
        mailto_unsubscribes=issue.mailto_unsubscribe_count,
    )


@dataclass(frozen=True)
class IssueSummary:
    """One line of the issues list: the issue and its deliveries per status."""

    issue: Issue
    counts: dict[str, int]

    @property
    def pending(self) -> int:
        return self.counts["queued"] + self.counts["sending"]


def recent_issues(limit: int = 104) -> list[IssueSummary]:
    """The latest issues, newest week first, with their delivery counts (one grouped query
    for all of them, not one per issue)."""
    rows = list(
        db.session.execute(select(Issue).order_by(Issue.week.desc()).limit(limit)).scalars()
    )
    counts = {i.id: dict.fromkeys((s.value for s in DeliveryStatus), 0) for i in rows}
    if rows:
        grouped = db.session.execute(
            select(Delivery.issue_id, Delivery.status, func.count())
            .where(Delivery.issue_id.in_(counts))
            .group_by(Delivery.issue_id, Delivery.status)
        )
        for issue_id, status, n in grouped:
            counts[issue_id][status] = int(n)
    return [IssueSummary(i, counts[i.id]) for i in rows]
