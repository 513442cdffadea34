"""The weekly issue's calendar and contents: when it goes out, which articles it holds.

An issue is identified by its ISO week (`2026-W48`), unique in the database, so planning the
same week again from two beat ticks, two workers or a restart finds the issue already there.
Send times are computed in HEBDO_TIMEZONE from the wall-clock schedule each time, so "Monday
08:00" stays 08:00 in Paris on both sides of a daylight-saving change.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select

from service.config import Settings
from service.digest import lifecycle
from service.extensions import db
from service.models import Article, Issue, IssueArticle, IssueStatus

log = logging.getLogger(__name__)

_WEEK = re.compile(r"(\d{4})-W(\d{2})")
FIRST_ISSUE_LOOKBACK = timedelta(days=7)
# A feed read late still gets its articles into the next issue if they are at most this old.
LATE_INGESTION = timedelta(days=7)


# Issues that hold their articles: any that started going out (even if cancelled since:
# some readers have it), and drafts and scheduled ones. A cancelled issue that never
# started gives its articles back.
def _holding() -> Any:
    return or_(
        Issue.status.in_(
            (
                IssueStatus.DRAFT,
                IssueStatus.SCHEDULED,
                IssueStatus.SENDING,
                IssueStatus.PAUSED,
                IssueStatus.SENT,
            )
        ),
        Issue.started_at.is_not(None),
    )


# A feed read that was still running when the previous issue was planned commits its
# articles with a first-seen time just before that planning: this overlap catches them.
INGESTION_OVERLAP = timedelta(hours=2)


# A weekly send missed by longer than this (service down) is not caught up by the beat:
# mail arriving days late surprises more than it helps; `hebdo digest send --now` does it.
MAX_LATE = timedelta(hours=24)


class DigestError(ValueError):
    """A digest command cannot be carried out; the message says why."""


class NoIssue(DigestError):
    """No issue for that week (or no such week): a 404 for the web faces."""


class Refused(DigestError):
    """The issue is not in a status that allows the action: a 409 for the web faces."""

    def __init__(self, message: str, week: str, status: str) -> None:
        super().__init__(message)
        self.week = week
        self.status = status


def parse_week(value: str) -> str:
    """Validate `YYYY-Www` and return it normalised; raises DigestError."""
    match = _WEEK.fullmatch(value.strip().upper())
    if not match:
        raise DigestError(f"week must look like 2026-W48, got {value!r}")
    year, week = int(match.group(1)), int(match.group(2))
    try:
        date.fromisocalendar(year, week, 1)
    except ValueError:
        raise DigestError(f"{year} has no week {week}") from None
    return f"{year:04d}-W{week:02d}"


def week_of(settings: Settings, moment: datetime) -> str:
    """The ISO week `moment` falls in, on the local calendar of HEBDO_TIMEZONE."""
    year, week, _day = moment.astimezone(settings.timezone).isocalendar()
    return f"{year:04d}-W{week:02d}"


def send_time(settings: Settings, week: str) -> datetime:
    """When the issue of `week` is due (aware, in HEBDO_TIMEZONE)."""
    year, number = (int(x) for x in parse_week(week).split("-W"))
    day = date.fromisocalendar(year, number, settings.send_weekday + 1)
    return datetime.combine(day, settings.send_time, tzinfo=settings.timezone)


def upcoming_week(settings: Settings, now: datetime, late: timedelta = MAX_LATE) -> str:
    """The issue people mean by "this week's": the first of last week's, this week's and
    next week's whose send time is not more than `late` behind us (a Sunday-evening
    issue is still "this week's" on Monday morning)."""
    for offset in (-1, 0, 1):
        week = week_of(settings, now + timedelta(weeks=offset))
        if now - send_time(settings, week) <= late:
            return week
    raise AssertionError("next week's send time is ahead")


def ahead_of_schedule(settings: Settings, week: str, now: datetime) -> datetime | None:
    """When `week`'s issue is due, if that is still ahead of `now`; else None. Sending it
    before then takes the place of that send: the weekly tick finds it sent and sends
    nothing more that day (on a Saturday, "this week's" issue is next Monday's)."""
    due = send_time(settings, week)
    return due if due > now else None


def week_start(week: str) -> date:
    year, number = (int(x) for x in parse_week(week).split("-W"))
    return date.fromisocalendar(year, number, 1)


def get_issue(week: str) -> Issue | None:
    return db.session.execute(select(Issue).where(Issue.week == week)).scalar_one_or_none()


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


def plan_week(week: str) -> str:
    """The canonical form of a week to plan (`2026-w5` → `2026-W05`); NoIssue when it is none."""
    try:
        return parse_week(week)
    except DigestError as exc:
        raise NoIssue(str(exc)) from None


def candidates(settings: Settings, issue_id: int | None, week: str, now: datetime) -> list[int]:
    """Articles published (or first seen) since the previous issue, not in another issue,
    not excluded by an editor; pinned ones are kept first when there are too many."""
    previous = db.session.execute(
        select(Issue.planned_at)
        .where(Issue.week < week, _holding())
        .order_by(Issue.week.desc())
        .limit(1)
    ).scalar_one_or_none()
    if previous is None:
        # The first issue: the last week's articles, however long they have been known.
        window = Article.published_at > now - FIRST_ISSUE_LOOKBACK
    else:
        # Published since the previous issue, or first seen since (with an overlap) and
        # published shortly before it (a feed read late): never missed, never twice (`taken`).
        window = or_(
            Article.published_at > previous,
            and_(
                Article.created_at > previous - INGESTION_OVERLAP,
                Article.published_at > previous - LATE_INGESTION,
            ),
        )
    # Articles of an issue cancelled before it went out (or a draft never approved) are
    # given back: candidates again, however old the window says they are.
    given_back = (
        select(IssueArticle.id)
        .join(Issue, Issue.id == IssueArticle.issue_id)
        .where(
            IssueArticle.article_id == Article.id,
            Issue.status == IssueStatus.CANCELLED,
            Issue.started_at.is_(None),
        )
    )
    window = or_(window, exists(given_back))
    taken = (
        select(IssueArticle.id)
        .join(Issue, Issue.id == IssueArticle.issue_id)
        .where(IssueArticle.article_id == Article.id, _holding())
    )
    if issue_id is not None:
        taken = taken.where(Issue.id != issue_id)
    query = (
        select(Article.id)
        .where(
            Article.published_at <= now,
            Article.excluded.is_(False),
            window,
            ~exists(taken),
        )
        .order_by(Article.pinned.is_(None), Article.published_at.desc(), Article.id.desc())
        .limit(settings.digest_max_articles)
    )
    return list(db.session.execute(query).scalars())


def display_order(article_ids: list[int]) -> list[Article]:
    """Pinned articles first, in pin order (an editor's choice, see editorial); then the
    automatic order: grouped by category (the category with the newest article first),
    newest first within."""
    articles = list(
        db.session.execute(select(Article).where(Article.id.in_(article_ids))).scalars()
    )
    pinned = sorted((a for a in articles if a.pinned is not None), key=lambda a: (a.pinned, a.id))
    newest_first = sorted(
        (a for a in articles if a.pinned is None),
        key=lambda a: (a.published_at, a.id),
        reverse=True,
    )
    rank: dict[str, int] = {}
    for article in newest_first:
        # Uncategorised articles go last, under "Other stories".
        rank.setdefault(article.category, len(rank) if article.category else 10**6)
    return pinned + sorted(newest_first, key=lambda a: rank[a.category])


@dataclass(frozen=True)
class PlanResult:
    issue_id: int
    week: str
    status: str
    articles: int
    changed: bool


def plan_issue(settings: Settings, week: str, now: datetime) -> PlanResult:
    """Create the issue of `week`, or refresh its articles while it is a draft or scheduled.

    In review mode a refreshed issue is a draft again: an approval covers the
    articles that were approved.

    A week without new articles gets a cancelled issue noting so: it is logged
    once, and the beat does not look at that week again (`plan` again, with
    new articles, revives it).
    """
    week = parse_week(week)
    issue = get_issue(week)
    if issue is not None and (
        issue.status not in lifecycle.PLANNABLE or issue.started_at is not None
    ):
        count = _article_count(issue.id)
        return PlanResult(issue.id, week, issue.status, count, False)
    article_ids = candidates(settings, issue.id if issue else None, week, now)
    articles = display_order(article_ids)
    status = IssueStatus.DRAFT if settings.review else IssueStatus.SCHEDULED
    if not articles:
        status = IssueStatus.CANCELLED
    due = send_time(settings, week)
    if issue is None:
        issue = lifecycle.create(week, status, now, due)
        if issue is None:
            existing = get_issue(week)
            assert existing is not None
            return PlanResult(existing.id, week, existing.status, 0, False)
    subject = articles[0].title[:200] if articles else ""
    note = None if articles else "no new articles"
    if not lifecycle.replan(issue.id, status, now, due, subject, note):
        db.session.rollback()
        current = get_issue(week)
        assert current is not None
        return PlanResult(current.id, week, current.status, _article_count(current.id), False)
    db.session.execute(delete(IssueArticle).where(IssueArticle.issue_id == issue.id))
    db.session.add_all(
        IssueArticle(
            issue_id=issue.id,
            article_id=a.id,
            position=n,
            url=a.url,
            title=a.title,
            summary=a.summary,
            category=a.category,
            author=a.author,
            image_url=a.image_url,
        )
        for n, a in enumerate(articles)
    )
    db.session.commit()
    if articles:
        log.info("issue %s planned: %d articles, %s", week, len(articles), status)
    else:
        log.info("issue %s: no new articles since the previous issue, nothing to send", week)
    return PlanResult(issue.id, week, status, len(articles), True)


def is_archived(issue: Issue) -> bool:
    """The web version is public once the issue started going out (cancelled later or not)."""
    return issue.started_at is not None


def archived_issues(limit: int = 200) -> list[tuple[Issue, int]]:
    """Issues that went out, newest first, with their number of articles."""
    count = (
        select(func.count(IssueArticle.id))
        .where(IssueArticle.issue_id == Issue.id)
        .scalar_subquery()
    )
    rows = db.session.execute(
        select(Issue, count)
        .where(Issue.started_at.is_not(None))
        .order_by(Issue.week.desc())
        .limit(limit)
    )
    return [(issue, n) for issue, n in rows]


def _article_count(issue_id: int) -> int:
    return int(
        db.session.execute(
            select(func.count()).select_from(IssueArticle).where(IssueArticle.issue_id == issue_id)
        ).scalar_one()
    )


def issue_articles(issue_id: int) -> list[IssueArticle]:
    """The issue's articles in order, as they were planned (see IssueArticle)."""
    return list(
        db.session.execute(
            select(IssueArticle)
            .where(IssueArticle.issue_id == issue_id)
            .order_by(IssueArticle.position)
        ).scalars()
    )
