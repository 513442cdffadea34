"""The admin dashboard's figures and the alerts that need someone's attention.

Alerts are facts (a kind and its values), not sentences: the admin page words them in
the reader's language. Each one is computed from the database alone, so the page says
the same thing whichever process asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from service.digest.progress import IssueSummary, recent_issues
from service.extensions import db
from service.models import Delivery, DeliveryStatus, Feed, Issue, IssueArticle, IssueStatus
from service.subscribers.search import signups_and_unsubscribes, status_counts
from service.telemetry.metrics import RECENT_ISSUES

# Above this share of bounces a list is in trouble with the big mailbox providers
# (Gmail and Yahoo's bulk-sender rules are stricter on complaints, but 2 % of bounces is
# the usual warning line for a list that is not being cleaned).
BOUNCE_ALERT = 0.02
# Gmail asks bulk senders to keep spam complaints under 0.1 % of what they deliver.
COMPLAINT_ALERT = 0.001
# A send in progress that has not moved for this long while mail is still queued: the
# workers or the broker are down (the sweep would otherwise have re-queued it by now).
STALL_AFTER = timedelta(minutes=10)
CHART_WEEKS = 12
LAST_ISSUES = 5
# Most-read articles and categories shown (clicks of the issues of the last CHART_WEEKS).
MOST_READ = 10


@dataclass(frozen=True)
class Alert:
    # bounce_rate | complaint_rate | feed_failing | queue_stalled
    kind: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dashboard:
    subscribers: dict[str, int]
    weeks: list[tuple[date, int, int]]
    issues: list[IssueSummary]
    alerts: list[Alert]
    articles: list[ReadArticle] = field(default_factory=list)
    categories: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ReadArticle:
    week: str
    title: str
    url: str
    category: str
    clicks: int


def most_read(now: datetime) -> tuple[list[ReadArticle], list[tuple[str, int]]]:
    """The articles readers clicked most in the issues started over the last CHART_WEEKS
    weeks, and the categories by their articles' clicks (digest.clicks counts them, with no
    reader named). Articles nobody clicked are left out."""
    since = now - timedelta(weeks=CHART_WEEKS)
    recent = (IssueArticle.issue_id == Issue.id, Issue.started_at >= since, IssueArticle.clicks > 0)
    articles = [
        ReadArticle(week, title, url, category, clicks)
        for week, title, url, category, clicks in db.session.execute(
            select(
                Issue.week,
                IssueArticle.title,
                IssueArticle.url,
                IssueArticle.category,
                IssueArticle.clicks,
            )
            .where(*recent)
            .order_by(IssueArticle.clicks.desc(), Issue.week.desc(), IssueArticle.position)
            .limit(MOST_READ)
        )
    ]
    total = func.sum(IssueArticle.clicks)
    categories = [
        (category, int(clicks))
        for category, clicks in db.session.execute(
            select(IssueArticle.category, total)
            .where(*recent)
            .group_by(IssueArticle.category)
            .order_by(total.desc(), IssueArticle.category)
            .limit(MOST_READ)
        )
    ]
    return articles, categories


def bounce_alert() -> Alert | None:
    """The last issue that finished sending bounced too much: refused at the relay, or
    bounced by a DSN or a provider's event since (inbound), which keep coming for days."""
    issue = db.session.execute(
        select(Issue).where(Issue.status == IssueStatus.SENT).order_by(Issue.week.desc()).limit(1)
    ).scalar_one_or_none()
    if issue is None or not issue.recipients:
        return None
    bounced = issue.bounced_count + issue.hard_bounce_count
    rate = bounced / issue.recipients
    if rate <= BOUNCE_ALERT:
        return None
    return Alert(
        "bounce_rate",
        {
            "week": issue.week,
            "bounced": bounced,
            "recipients": issue.recipients,
            "percent": round(100 * rate, 1),
        },
    )


def complaint_alerts(now: datetime) -> list[Alert]:
    """Issues started in the last RECENT_ISSUES whose readers reported them as spam too often
    (feedback-loop reports keep arriving for days after a send, so not only the last one)."""
    rows = db.session.execute(
        select(Issue)
        .where(
            Issue.started_at >= now - RECENT_ISSUES,
            Issue.complaint_count > 0,
            Issue.sent_count > 0,
        )
        .order_by(Issue.week)
    ).scalars()
    return [
        Alert(
            "complaint_rate",
            {
                "week": i.week,
                "complaints": i.complaint_count,
                "sent": i.sent_count,
                "percent": round(100 * i.complaint_count / i.sent_count, 2),
            },
        )
        for i in rows
        if i.complaint_count / i.sent_count > COMPLAINT_ALERT
    ]


def feed_alerts() -> list[Alert]:
    """Feeds whose last read failed: their articles are missing from the coming issue."""
    feeds = db.session.execute(
        select(Feed).where(Feed.last_result == "error").order_by(Feed.url)
    ).scalars()
    return [
        Alert(
            "feed_failing",
            {
                "url": f.url,
                "failures": f.failures,
                "error": f.last_error or "",
                "since": f.ok_at.isoformat() if f.ok_at else None,
            },
        )
        for f in feeds
    ]


def stalled_alerts(now: datetime) -> list[Alert]:
    """Sending issues with queued mail and no progress for STALL_AFTER.

    Every batch moves `progress_at` when it records its outcomes, so the issue row says
    when the send last moved; whether anything is still queued is one probe of the
    partial index of queued rows. Nothing here grows with the number of deliveries.
    """
    alerts = []
    sending = db.session.execute(
        select(Issue).where(Issue.status == IssueStatus.SENDING).order_by(Issue.week)
    ).scalars()
    for issue in sending:
        queued = db.session.execute(
            select(Delivery.id)
            .where(Delivery.issue_id == issue.id, Delivery.status == DeliveryStatus.QUEUED)
            .limit(1)
        ).first()
        if queued is None:
            continue
        moments = [m for m in (issue.progress_at, issue.started_at) if m is not None]
        last_move = max(moments) if moments else None
        if last_move is None or now - last_move > STALL_AFTER:
            minutes = int((now - last_move).total_seconds() // 60) if last_move else None
            left = max(
                issue.recipients - issue.sent_count - issue.failed_count - issue.bounced_count, 0
            )
            alerts.append(
                Alert("queue_stalled", {"week": issue.week, "queued": left, "minutes": minutes})
            )
    return alerts


def alerts(now: datetime) -> list[Alert]:
    found = [bounce_alert()]
    return [a for a in found if a] + complaint_alerts(now) + feed_alerts() + stalled_alerts(now)


def dashboard(now: datetime) -> Dashboard:
    articles, categories = most_read(now)
    return Dashboard(
        subscribers=status_counts(),
        weeks=signups_and_unsubscribes(CHART_WEEKS, now),
        issues=recent_issues(LAST_ISSUES),
        alerts=alerts(now),
        articles=articles,
        categories=categories,
    )
