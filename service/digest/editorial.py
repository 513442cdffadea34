"""Editors' choices for the coming issue: leave an article out, take it back, move it,
make it the lead (first: the large block with its picture, and the subject's title).

The choices live on the article (`Article.excluded`, `Article.pinned`), not on the issue,
so they hold whenever the issue is (re)planned: by the beat, by `hebdo digest plan`, or
right after the change here. Planning applies them (planning.candidates never offers an
excluded article; planning.display_order puts pinned ones first, in pin order).

After a change, the coming issue is re-planned when it exists and has not started, so
its articles follow at once. In review mode that makes it a draft again: an approval
covers the articles that were approved, not the ones an editor changed since.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from service.admin.audit import audit
from service.config import Settings
from service.digest.planning import (
    candidates,
    display_order,
    get_issue,
    issue_articles,
    plan_issue,
    send_time,
    upcoming_week,
    week_of,
)
from service.extensions import db
from service.models import Article, Issue, IssueArticle, IssueStatus

RECENT = timedelta(days=30)
PAGE_SIZE = 50
_REPLANNABLE = (IssueStatus.DRAFT, IssueStatus.SCHEDULED)


class EditorialError(ValueError):
    """The change cannot be made (unknown article, not in the coming issue…)."""


def _open(issue: Issue | None) -> bool:
    """An issue whose articles may still change."""
    return issue is not None and issue.status in _REPLANNABLE and issue.started_at is None


def coming_week(settings: Settings, now: datetime) -> str:
    """The week of the next issue to go out: this week's (see digest.upcoming_week), or
    the following one once this week's has started."""
    week = upcoming_week(settings, now)
    issue = get_issue(week)
    if issue is not None and (
        issue.started_at is not None or issue.status in (IssueStatus.SENT, IssueStatus.SENDING)
    ):
        week = week_of(settings, send_time(settings, week) + timedelta(weeks=1))
    return week


def coming_order(settings: Settings, now: datetime) -> tuple[str, list[int], bool]:
    """(week, article ids in order, planned): the coming issue's articles as planned when
    it is planned and open, else as planning it now would choose them."""
    week = coming_week(settings, now)
    issue = get_issue(week)
    if _open(issue):
        assert issue is not None
        return week, [a.article_id for a in issue_articles(issue.id)], True
    if issue is not None and issue.status != IssueStatus.CANCELLED:
        # Sending or sent: nothing of it can change.
        return week, [], False
    ids = candidates(settings, issue.id if issue else None, week, now)
    return week, [a.id for a in display_order(ids)], False


@dataclass(frozen=True)
class ArticleLine:
    article: Article
    # Position (1-based) in the coming issue, when it is in it.
    position: int | None
    # Weeks of issues that went out with it.
    sent_in: list[str]
    # Week and status of another issue holding it, not started (a draft of another week).
    held_by: tuple[str, str] | None


@dataclass(frozen=True)
class ArticlePage:
    week: str
    planned: bool
    issue_status: str | None
    # How many articles the coming issue holds (the last position).
    size: int
    lines: list[ArticleLine]
    page: int
    pages: int
    total: int


def recent_articles(settings: Settings, now: datetime, page: int = 1) -> ArticlePage:
    """The last 30 days' articles, newest first, with where each stands."""
    week, order, planned = coming_order(settings, now)
    issue = get_issue(week)
    since = now - RECENT
    total = int(
        db.session.execute(
            select(func.count()).select_from(Article).where(Article.published_at > since)
        ).scalar_one()
    )
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(max(page, 1), pages)
    articles = list(
        db.session.execute(
            select(Article)
            .where(Article.published_at > since)
            .order_by(Article.published_at.desc(), Article.id.desc())
            .offset((page - 1) * PAGE_SIZE)
            .limit(PAGE_SIZE)
        ).scalars()
    )
    holders: dict[int, list[tuple[str, str, bool]]] = {}
    if articles:
        rows = db.session.execute(
            select(IssueArticle.article_id, Issue.week, Issue.status, Issue.started_at)
            .join(Issue, Issue.id == IssueArticle.issue_id)
            .where(IssueArticle.article_id.in_([a.id for a in articles]))
            .order_by(Issue.week)
        )
        for article_id, held_week, status, started_at in rows:
            holders.setdefault(article_id, []).append((held_week, status, started_at is not None))
    position = {article_id: n + 1 for n, article_id in enumerate(order)}
    lines = []
    for article in articles:
        held = holders.get(article.id, [])
        sent_in = [w for w, _s, started in held if started]
        other = [
            (w, s)
            for w, s, started in held
            if not started and w != week and s in (IssueStatus.DRAFT, IssueStatus.SCHEDULED)
        ]
        lines.append(
            ArticleLine(article, position.get(article.id), sent_in, other[0] if other else None)
        )
    return ArticlePage(
        week, planned, issue.status if issue else None, len(order), lines, page, pages, total
    )


@dataclass(frozen=True)
class Change:
    week: str
    # The coming issue was re-planned; its status afterwards (a draft again in review mode).
    replanned: bool
    status: str | None


def _article(article_id: int) -> Article:
    article = db.session.get(Article, article_id)
    if article is None:
        raise EditorialError(f"no article {article_id}")
    return article


def _after_change(
    settings: Settings,
    week: str,
    action: str,
    article_id: int,
    *,
    actor: str,
    now: datetime,
    ip: str | None,
    detail: dict[str, Any] | None = None,
) -> Change:
    audit(
        action,
        actor=actor,
        now=now,
        subject=f"article:{article_id}",
        ip=ip,
        detail={"week": week, **(detail or {})},
    )
    db.session.commit()
    issue = get_issue(week)
    if not _open(issue):
        return Change(week, False, issue.status if issue else None)
    result = plan_issue(settings, week, now)
    return Change(week, result.changed, result.status)


def exclude(
    settings: Settings, article_id: int, *, actor: str, now: datetime, ip: str | None = None
) -> Change:
    """Leave the article out of the coming issue, and of every later one."""
    article = _article(article_id)
    article.excluded = True
    article.pinned = None
    week = coming_week(settings, now)
    return _after_change(settings, week, "article.exclude", article_id, actor=actor, now=now, ip=ip)


def include(
    settings: Settings, article_id: int, *, actor: str, now: datetime, ip: str | None = None
) -> Change:
    """Take an excluded article back: a candidate again, like any other."""
    article = _article(article_id)
    article.excluded = False
    week = coming_week(settings, now)
    return _after_change(settings, week, "article.include", article_id, actor=actor, now=now, ip=ip)


def _pin(order: list[int]) -> None:
    """Pin the coming issue's articles in `order`, so later planning keeps it."""
    # Pins are for the coming issue only: older pins must not outrank the new order.
    db.session.execute(
        update(Article)
        .where(Article.pinned.is_not(None), Article.id.not_in(order))
        .values(pinned=None)
    )
    for n, pinned_id in enumerate(order):
        db.session.execute(update(Article).where(Article.id == pinned_id).values(pinned=n))


def move(
    settings: Settings,
    article_id: int,
    offset: int,
    *,
    actor: str,
    now: datetime,
    ip: str | None = None,
) -> Change:
    """Move the article `offset` places in the coming issue (-1 up, +1 down).

    Pins the whole list as it now reads, so later planning keeps this order; articles
    arriving afterwards follow the pinned ones in the automatic order.
    """
    _article(article_id)
    week, order, _planned = coming_order(settings, now)
    if article_id not in order:
        raise EditorialError(f"article {article_id} is not in the coming issue ({week})")
    here = order.index(article_id)
    there = min(max(here + offset, 0), len(order) - 1)
    order.insert(there, order.pop(here))
    _pin(order)
    action = "article.move_up" if offset < 0 else "article.move_down"
    return _after_change(
        settings,
        week,
        action,
        article_id,
        actor=actor,
        now=now,
        ip=ip,
        detail={"from": here + 1, "to": there + 1},
    )


def make_lead(
    settings: Settings, article_id: int, *, actor: str, now: datetime, ip: str | None = None
) -> Change:
    """Make the article the coming issue's lead: first, so it gets the large block with its
    picture and gives the subject its title. A move to the top, audited as its own action
    (`article.lead`) so the log says what the editor meant."""
    _article(article_id)
    week, order, _planned = coming_order(settings, now)
    if article_id not in order:
        raise EditorialError(f"article {article_id} is not in the coming issue ({week})")
    here = order.index(article_id)
    order.insert(0, order.pop(here))
    _pin(order)
    return _after_change(
        settings,
        week,
        "article.lead",
        article_id,
        actor=actor,
        now=now,
        ip=ip,
        detail={"from": here + 1, "to": 1},
    )
