"""Click counts without tracking anybody: the digest's article links, `/c/<week>/<n>/<sig>`.

A link names an issue and an article's position in it, signed so that nobody can make
one up; it names no reader, so every reader gets the same link and a click says only
"someone opened article n of this issue". Following it counts one click on that
`IssueArticle` and redirects to the URL stored for that issue and position: no parameter
names the target, so the redirect cannot be pointed elsewhere.

Not every GET is a reader. Not counted (still redirected, so nothing breaks): HEAD,
user agents of link scanners and previewers (`SCANNER_AGENTS`), clicks on an issue that
has not gone out (editors' test mails and previews), and clicks within
HEBDO_CLICK_BURST_SECONDS after the issue last handed mail to the relay
(`Issue.progress_at`): mail security gateways fetch every link as the mail arrives, often
with a browser's user agent, and with no reader in the link the time of the send is the
only thing that tells them apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.extensions import db
from service.models import Issue, IssueArticle
from service.subscribers.tokens import public_url
from service.telemetry import metrics

log = logging.getLogger(__name__)

# The salt of these signatures: a click signature never verifies as any other token.
PURPOSE = b"hebdo.click"
# 12 bytes of HMAC-SHA256 (16 characters): guessing one is 2^-96 per try.
_SIGNATURE_BYTES = 12
_SIGNATURE_FORM = re.compile(r"[A-Za-z0-9_-]{16}")

# Substrings of the User-Agent of link scanners, previewers and scripts, lower-case. A
# reader's browser carries none of them. Gateways that fetch with a browser's agent are
# left to the burst window.
SCANNER_AGENTS = (
    "bingpreview",  # Microsoft Safe Links / Outlook previews
    "microsoft office",  # Office apps' link checks (e.g. "Microsoft Office Existence Discovery")
    "ms-office",
    "safelinks",
    "barracuda",
    "proofpoint",
    "mimecast",
    "google-safety",
    "googlebot",
    "google-read-aloud",
    "googleimageproxy",
    # Yahoo's crawler and mail proxies, not "yahoo" alone: Yahoo's own apps open links in
    # browsers whose agents may name Yahoo.
    "slurp",
    "yahoomailproxy",
    "yahoocachesystem",
    "slackbot",
    "facebookexternalhit",
    "twitterbot",
    "linkedinbot",
    "discordbot",
    "telegrambot",
    "whatsapp",
    "skypeuripreview",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "curl/",
    "wget/",
    "libwww-perl",
    "bot/",
    "crawler",
    "spider",
)


def signature(settings: Settings, week: str, position: int, article_id: int) -> str:
    """The link's signature with the current key. It covers the article's id too, so a
    link made before editors re-planned a draft stops working rather than counting and
    redirecting to whatever article took its place."""
    return _sign(settings.signing_keys[-1], week, position, article_id)


def _sign(key: str, week: str, position: int, article_id: int) -> str:
    message = b"%s|%s|%d|%d" % (PURPOSE, week.encode(), position, article_id)
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _verifies(settings: Settings, week: str, position: int, article_id: int, sig: str) -> bool:
    """Any of the signing keys (HEBDO_SECRET_KEY_FALLBACKS too): links in mails already sent
    keep working after a key rotation."""
    if not _SIGNATURE_FORM.fullmatch(sig):
        return False
    return any(
        hmac.compare_digest(_sign(key, week, position, article_id), sig)
        for key in settings.signing_keys
    )


def click_url(settings: Settings, article: IssueArticle, week: str) -> str:
    sig = signature(settings, week, article.position, article.article_id)
    return public_url(settings, f"/c/{week}/{article.position}/{sig}")


def link_for(settings: Settings, week: str, *, mail: bool) -> Callable[[IssueArticle], str]:
    """Where an article's links lead in the rendering: `/c/` links in the mail, the article
    itself on the web version (the archive is read in a browser the site can measure by
    itself; counting there would mix visits to the archive with readers of the mail), and
    direct links everywhere with HEBDO_CLICK_COUNTS=0."""
    if not (mail and settings.click_counts):
        return lambda article: article.url
    return lambda article: click_url(settings, article, week)


@dataclass(frozen=True)
class Click:
    """Where to send the browser, and whether the click counted (`reason` says why not)."""

    url: str
    counted: bool
    reason: str


def scanner_agent(agent: str | None) -> bool:
    """A link scanner, previewer or script by its User-Agent; no agent at all is one too."""
    if not agent:
        return True
    lowered = agent.lower()
    return any(mark in lowered for mark in SCANNER_AGENTS)


def follow(
    settings: Settings,
    week: str,
    position: int,
    sig: str,
    *,
    method: str,
    agent: str | None,
    now: datetime,
) -> Click | None:
    """The article behind a click link, and the click counted when a reader made it; None
    for a forged or unknown link (the view answers 404). A database error while counting
    is logged and the reader still goes to the article."""
    if len(week) > 8 or not _SIGNATURE_FORM.fullmatch(sig) or not 0 <= position < 10_000:
        return None
    row = db.session.execute(
        select(IssueArticle.id, IssueArticle.url, IssueArticle.article_id, Issue.started_at)
        .join(Issue, Issue.id == IssueArticle.issue_id)
        .add_columns(Issue.progress_at)
        .where(Issue.week == week, IssueArticle.position == position)
    ).first()
    if row is None:
        return None
    row_id, url, article_id, started_at, progress_at = row
    if not _verifies(settings, week, position, article_id, sig):
        return None
    reason = _not_counted(settings, method, agent, started_at, progress_at, now)
    if reason is None:
        reason = "counted" if _count(row_id) else "error"
    metrics.CLICKS.labels(reason).inc()
    return Click(url, reason == "counted", reason)


def _not_counted(
    settings: Settings,
    method: str,
    agent: str | None,
    started_at: datetime | None,
    progress_at: datetime | None,
    now: datetime,
) -> str | None:
    if method != "GET":
        return "head"
    if scanner_agent(agent):
        return "scanner"
    if started_at is None:
        return "not_sent"
    burst = timedelta(seconds=settings.click_burst_seconds)
    last_send = _aware(progress_at or started_at)
    if burst and last_send <= now < last_send + burst:
        return "burst"
    return None


def _aware(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes (stored as UTC).
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _count(row_id: int) -> bool:
    """One click, as one UPDATE (concurrent clicks add up, none is lost)."""
    try:
        db.session.execute(
            update(IssueArticle)
            .where(IssueArticle.id == row_id)
            .values(clicks=IssueArticle.clicks + 1)
        )
        db.session.commit()
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("click on issue article %s not counted", row_id)
        return False
    return True
