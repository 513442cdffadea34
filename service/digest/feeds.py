"""RSS/Atom ingestion with feedparser, one feed at a time, each in its own transaction.

Every feed of HEBDO_FEEDS is fetched with conditional GET (ETag,
Last-Modified), a time limit on the whole download, and a size cap. A feed that
is down, slow, malformed or huge is recorded as failing and the others go on.
An item without a link is skipped (a digest entry needs somewhere to go); an
item without a date is dated when first seen.
"""

from __future__ import annotations

import calendar
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
from sqlalchemy import select

from service.config import Settings
from service.digest.articles import ArticleInput, InvalidArticle, store_article
from service.extensions import db
from service.models import Feed

log = logging.getLogger(__name__)

SAMPLE = "sample"
SAMPLE_FILE = Path(__file__).resolve().parent / "sample" / "feed.xml"
MAX_ITEMS = 500
USER_AGENT = "hebdo-feed-reader/1 (+https://github.com/hebdo)"


class FeedError(Exception):
    """The feed could not be read or parsed; the message says why."""


@dataclass
class Fetched:
    content: bytes | None  # None: not modified since the last fetch
    etag: str | None = None
    last_modified: str | None = None
    # For feedparser: relative links resolve against the URL, the charset comes from here
    # when the document does not declare one.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FeedReport:
    url: str
    result: str  # ok | not_modified | error
    created: int = 0
    updated: int = 0
    skipped: int = 0
    error: str = ""
    problems: list[str] = field(default_factory=list)


def _read_capped(stream: Any, limit: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    # read1 returns what has arrived: a server trickling bytes cannot hold one read open
    # past the deadline (each wait is bounded by the socket timeout, HEBDO_FEED_TIMEOUT).
    read = getattr(stream, "read1", stream.read)
    while True:
        if time.monotonic() > deadline:
            raise FeedError("timed out while downloading")
        chunk = read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise FeedError(f"larger than HEBDO_FEED_MAX_BYTES ({limit} bytes)")
        chunks.append(chunk)


def fetch(url: str, settings: Settings, feed: Feed) -> Fetched:
    """Download a feed (http/https) or read it (a path, file:// or `sample`)."""
    limit = settings.feed_max_bytes
    deadline = time.monotonic() + settings.feed_timeout
    if url == SAMPLE or not url.startswith(("http://", "https://")):
        path = SAMPLE_FILE if url == SAMPLE else Path(url.removeprefix("file://")).expanduser()
        try:
            with path.open("rb") as handle:
                return Fetched(_read_capped(handle, limit, deadline))
        except OSError as exc:
            raise FeedError(f"cannot read {path}: {exc.strerror or exc}") from None
    headers = {"User-Agent": USER_AGENT, "Accept": "application/rss+xml, application/atom+xml"}
    if feed.etag:
        headers["If-None-Match"] = feed.etag
    if feed.last_modified:
        headers["If-Modified-Since"] = feed.last_modified
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http/https only)
    try:
        with urllib.request.urlopen(request, timeout=settings.feed_timeout) as response:  # noqa: S310
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise FeedError(f"larger than HEBDO_FEED_MAX_BYTES ({limit} bytes)")
            content = _read_capped(response, limit, deadline)
            return Fetched(
                content,
                response.headers.get("ETag"),
                response.headers.get("Last-Modified"),
                {
                    "content-location": response.geturl() or url,
                    "content-type": response.headers.get("Content-Type", ""),
                },
            )
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Fetched(None, feed.etag, feed.last_modified)
        raise FeedError(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FeedError(f"cannot fetch: {reason}") from None


def _when(entry: Any) -> datetime | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if not parsed:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(parsed), UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _image(entry: Any) -> str | None:
    for media in (*entry.get("media_content", ()), *entry.get("media_thumbnail", ())):
        medium, kind = media.get("medium"), str(media.get("type", ""))
        # An image says so (medium="image" or an image/* type); a thumbnail is one anyway.
        is_image = medium == "image" or kind.startswith("image/") or (not medium and not kind)
        if media.get("url") and is_image:
            return str(media["url"])
    for link in entry.get("links", ()):
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image/"):
            return str(link.get("href"))
    return None


def _sample_shift(entries: list[Any], now: datetime) -> timedelta:
    """Whole weeks that bring the sample's newest item into the last seven days.

    The bundled sample has fixed dates; shifted so, it always reads as a fresh
    three weeks of news, and the shift changes only once a week.
    """
    dates = [d for d in (_when(e) for e in entries) if d is not None]
    if not dates:
        return timedelta(0)
    weeks = (now - max(dates)) // timedelta(weeks=1)
    return timedelta(weeks=weeks)


def parse(
    content: bytes, url: str, now: datetime, headers: dict[str, str] | None = None
) -> tuple[list[ArticleInput], list[str]]:
    """The feed's items as article inputs, and a line per item that was skipped (and why)."""
    try:
        document = feedparser.parse(content, response_headers=headers or {})
    except Exception as exc:  # feedparser itself trips on some character references
        raise FeedError(f"unparsable feed: {type(exc).__name__}: {exc}") from None
    if document.get("bozo") and not document.entries:
        raise FeedError(f"not a readable RSS/Atom feed: {document.get('bozo_exception')}")
    if not document.get("version") and not document.entries:
        raise FeedError("not an RSS/Atom feed")
    entries = list(document.entries[:MAX_ITEMS])
    problems = []
    if len(document.entries) > MAX_ITEMS:
        log.warning("feed %s: only the first %d of %d items read", url, MAX_ITEMS, len(entries))
    shift = _sample_shift(entries, now) if url == SAMPLE else timedelta(0)
    language = str(document.feed.get("language") or "")
    items = []
    for position, entry in enumerate(entries, 1):
        link = entry.get("link") or (entry.get("id") if entry.get("guidislink") else None)
        if not link:
            problems.append(f"item {position}: no link: skipped")
            continue
        published = _when(entry)
        tags = entry.get("tags") or []
        authors = entry.get("authors") or []
        items.append(
            ArticleInput(
                url=str(link),
                guid=str(entry.get("id") or ""),
                title=str(entry.get("title") or ""),
                summary=str(entry.get("summary") or ""),
                category=str(tags[0].get("term") or "") if tags else "",
                author=str(authors[0].get("name") or "") if authors else "",
                image_url=_image(entry),
                published_at=published + shift if published else None,
                language=str(entry.get("language") or language),
            )
        )
    return items, problems


def _feed_row(url: str) -> Feed:
    feed = db.session.execute(select(Feed).where(Feed.url == url)).scalar_one_or_none()
    if feed is None:
        feed = Feed(url=url, failures=0)
        db.session.add(feed)
        db.session.flush()
    return feed


def ingest(url: str, settings: Settings, now: datetime) -> FeedReport:
    """Fetch one feed and store its items; the outcome is recorded on its Feed row."""
    feed = _feed_row(url)
    feed.fetched_at = now
    report = FeedReport(url, "ok")
    try:
        fetched = fetch(url, settings, feed)
        if fetched.content is None:
            report.result = "not_modified"
        else:
            items, report.problems = parse(fetched.content, url, now, fetched.headers)
            report.skipped = len(report.problems)
            for item in items:
                try:
                    _id, created = store_article(item, source=url, now=now)
                except InvalidArticle as exc:
                    report.skipped += 1
                    report.problems.append(f"{item.url[:200]}: {exc}: skipped")
                    continue
                if created:
                    report.created += 1
                else:
                    report.updated += 1
        # Validators too long for their columns are not kept (no conditional GET, no failure).
        feed.etag = fetched.etag if fetched.etag and len(fetched.etag) <= 512 else None
        feed.last_modified = (
            fetched.last_modified
            if fetched.last_modified and len(fetched.last_modified) <= 128
            else None
        )
        feed.ok_at = now
        feed.failures = 0
        feed.last_error = None
    except FeedError as exc:
        db.session.rollback()
        feed = _feed_row(url)
        feed.fetched_at = now
        feed.failures += 1
        feed.last_error = str(exc)[:512]
        report.result, report.error = "error", str(exc)
    feed.last_result = report.result
    db.session.commit()
    return report


def ingest_all(settings: Settings, now: datetime) -> list[FeedReport]:
    """Every configured feed; one failing never stops the others."""
    reports = []
    for url in settings.feeds:
        try:
            report = ingest(url, settings, now)
        except Exception as exc:  # a bug or a database error on one feed: log, go on
            db.session.rollback()
            log.exception("feed %s: ingestion failed", url)
            report = FeedReport(url, "error", error=f"internal error: {type(exc).__name__}")
        if report.result == "error":
            log.warning("feed %s: %s", url, report.error)
        else:
            log.info(
                "feed %s: %s, %d new, %d updated, %d skipped",
                url,
                report.result,
                report.created,
                report.updated,
                report.skipped,
            )
        reports.append(report)
    return reports
