"""Articles in: sanitise what a feed or the CMS says about an article, and store it once.

Feeds and the push API both end in `store_article`, keyed by a stable id (the
feed's guid, else the link): reading the same item again updates the row,
never adds a second one. Everything stored is plain text; the digest template
escapes it again on the way out.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import nh3
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from service.extensions import db
from service.models import Article

log = logging.getLogger(__name__)

MAX_URL = 2000
MAX_TITLE = 500
MAX_SUMMARY = 2000
MAX_CATEGORY = 100
MAX_AUTHOR = 200
_SPACES = re.compile(r"\s+")
# C0/C1 controls, zero-width space, bidi embeddings/overrides/isolates, BOM: never useful in
# a title, misleading in some. ZWNJ/ZWJ (Persian words, emoji sequences) and LRM/RLM
# (right-to-left text) are part of the text and stay.
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b\u202a-\u202e\u2066-\u2069\ufeff]")
_LANGUAGE = re.compile(r"[a-z]{2,3}")


class InvalidArticle(ValueError):
    """An article cannot be stored; the message says which field and why."""


@dataclass(frozen=True)
class ArticleInput:
    """What we know of an article, as received (not yet sanitised)."""

    url: str
    title: str
    guid: str = ""
    summary: str = ""
    category: str = ""
    author: str = ""
    image_url: str | None = None
    published_at: datetime | None = None
    language: str = ""


def plain_text(value: str | None, limit: int) -> str:
    """HTML or text in, one line of plain text out: tags, scripts and controls removed."""
    if not value:
        return ""
    # Lone surrogates (from character references like &#55296;) cannot be stored or sent.
    value = value.encode("utf-8", "replace").decode("utf-8")
    # nh3 (ammonia) drops every tag, and the content of <script>/<style>, keeping the text.
    text = html.unescape(nh3.clean(value, tags=set()))
    text = _SPACES.sub(" ", _INVISIBLE.sub(" ", text)).strip()
    if len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:.") + "…"
    return text


def web_url(value: str | None) -> str | None:
    """The URL if it is an absolute http(s) URL we can put in a mail, else None."""
    if not value:
        return None
    value = value.strip()
    if len(value) > MAX_URL or _INVISIBLE.search(value) or " " in value or not _encodable(value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _language(value: str) -> str:
    code = value.strip().lower().replace("_", "-").split("-", 1)[0]
    return code if _LANGUAGE.fullmatch(code) else "fr"


def uid_for(guid: str, url: str, namespace: str) -> str:
    """The stable id: the guid within its feed (two feeds may both number theirs 1, 2, 3),
    else the URL, which is the same article wherever it comes from."""
    key = f"{namespace}\0{guid.strip()}" if guid.strip() else url
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def store_article(
    item: ArticleInput, *, source: str, now: datetime, namespace: str | None = None
) -> tuple[int, bool]:
    """Insert or update one article; return (id, created). Raises InvalidArticle.

    Found by its stable id first, then by URL (a CMS that changed its guids).
    A missing publication date becomes the time it was first seen, and stays so.
    """
    url = web_url(item.url)
    if url is None:
        raise InvalidArticle("url: an absolute http(s) URL of at most 2000 characters is required")
    title = plain_text(item.title, MAX_TITLE)
    if not title:
        raise InvalidArticle("title: required")
    values = {
        "url": url,
        "title": title,
        "summary": plain_text(item.summary, MAX_SUMMARY),
        "category": plain_text(item.category, MAX_CATEGORY),
        "author": plain_text(item.author, MAX_AUTHOR),
        "image_url": web_url(item.image_url),
        "language": _language(item.language),
        "source": source[:MAX_URL],
        "updated_at": now,
    }
    uid = uid_for(item.guid, url, source if namespace is None else namespace)
    for _attempt in range(2):
        found = db.session.execute(
            select(Article).where(or_(Article.uid == uid, Article.url == url)).limit(2)
        ).scalars()
        rows = sorted(found, key=lambda a: a.uid != uid)
        if rows:
            article = rows[0]
            if len(rows) > 1:
                # Another row already owns this URL: keep both, leave the URL as it was.
                values.pop("url")
            try:
                with db.session.begin_nested():
                    for key, value in values.items():
                        setattr(article, key, value)
                    if item.published_at is not None:
                        article.published_at = item.published_at
            except IntegrityError:
                # Its new URL was taken meanwhile by another ingestion: look again.
                values.pop("url", None)
                continue
            return article.id, False
        article = Article(uid=uid, published_at=item.published_at or now, created_at=now, **values)
        try:
            with db.session.begin_nested():
                db.session.add(article)
        except IntegrityError:
            # Inserted meanwhile by another ingestion: update that row instead.
            continue
        return article.id, True
    raise RuntimeError(f"could not store article {url}")
