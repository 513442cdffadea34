"""Finding subscribers: filters, substring search, keyset pages, counts, one subscriber's record.

Pages are keyset pages (`WHERE (created_at, id) < (:last_created_at, :last_id)`), never
OFFSET: the thousandth page of a million subscribers costs what the first does, over the
(created_at, id) and (status, created_at, id) indexes. Search is a substring match on
`search_key` (lower case, no accents), served by a trigram index on PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from sqlalchemy import Select, and_, func, literal, or_, select, tuple_

from service.extensions import UTCDateTime, db
from service.models import (
    EMAIL_MAX,
    SOURCE_MAX,
    AuditEvent,
    Delivery,
    Issue,
    Status,
    Subscriber,
    search_key,
)

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
SORTS = ("newest", "oldest", "email", "-email")
MAX_QUERY = EMAIL_MAX


# Ids and cursor keys beyond this are no row's: refused before they reach the database
# (PostgreSQL's integer is 32-bit; a larger literal is an error there, not "no match").
MAX_ID = 2**31 - 1


class SearchError(ValueError):
    """A filter or cursor that cannot be used; the message names it, `field` says which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def bounded_int(value: object, *, default: int | None = None, maximum: int = MAX_ID) -> int | None:
    """An integer from a query or form value: ASCII digits only (`"²".isdigit()` is true),
    at most `maximum`; `default` when absent or not such a number."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return default
    number = int(value[:12])
    return number if number <= maximum else default


@dataclass(frozen=True)
class Filters:
    """A view of the subscribers, as the list page, the API and the CSV export take it."""

    q: str = ""
    statuses: tuple[str, ...] = ()
    locale: str = ""
    # A prefix of the consent source (the page URL, `import:<file>`, `admin:<name>`...).
    source: str = ""
    # Signed up on or after `since`, before the end of `until` (dates in UTC).
    since: date | None = None
    until: date | None = None
    sort: str = "newest"


NO_NUL = r"^[^\x00]*$"
# Empty is no filter: the list page's form sends its empty fields.
_DATE_FILTER = WithJsonSchema({"anyOf": [{"type": "string", "format": "date"}, {"const": ""}]})


class FilterQuery(BaseModel):
    """The filters as query parameters, as the list page, the CSV export and the API take
    them; the API's document shows this model. A text filter holds no NUL character: no
    stored text does (PostgreSQL cannot), and a query with one is an error on PostgreSQL."""

    model_config = ConfigDict(extra="ignore")

    q: str = Field(
        default="",
        max_length=MAX_QUERY,
        pattern=NO_NUL,
        description="Substring of the address, case- and accent-insensitive.",
    )
    status: str = Field(default="", description="One status, or several separated by commas.")
    locale: str = Field(default="", max_length=8, pattern=NO_NUL)
    source: str = Field(
        default="",
        max_length=SOURCE_MAX,
        pattern=NO_NUL,
        description="Prefix of the consent source (page URL, `import:<file>`, `admin:<name>`).",
    )
    since: Annotated[str, _DATE_FILTER] = Field(
        default="", description="Signed up on or after this day (UTC); empty: no filter."
    )
    until: Annotated[str, _DATE_FILTER] = Field(
        default="", description="Signed up on or before this day (UTC); empty: no filter."
    )
    sort: Literal[(*SORTS, "")] = Field(  # type: ignore[valid-type]
        default="", description="Empty: `newest`, the default."
    )


TEXT_FILTERS = ("q", "locale", "source")


@cache
def _limit(name: str) -> int:
    """The longest value of a text filter, as FilterQuery declares it."""
    return int(FilterQuery.model_json_schema()["properties"][name]["maxLength"])


def refuse_nul(args: Any, names: Iterable[str]) -> None:
    """SearchError for a NUL character in a text filter (see FilterQuery)."""
    for name in names:
        value = args.get(name, "")
        if isinstance(value, str) and "\x00" in value:
            raise SearchError(name, f"{name} cannot contain a NUL character")


def parse_filters(args: Any, *, exact_lengths: bool = False) -> Filters:
    """Filters from query parameters (a MultiDict or a dict); SearchError names a bad one.

    `exact_lengths` (the API): a text filter's length holds as sent, before the trim, so a
    value padded with spaces past its limit is refused as the document says; the browser's
    pages trim first."""
    refuse_nul(args, TEXT_FILTERS)

    def one(name: str) -> str:
        value = args.get(name, "")
        if not isinstance(value, str):
            return ""
        return value if exact_lengths and name in TEXT_FILTERS else value.strip()

    for name in TEXT_FILTERS:
        limit = _limit(name)
        if len(one(name)) > limit:
            raise SearchError(name, f"{name} is longer than {limit} characters")
    raw_statuses = args.getlist("status") if hasattr(args, "getlist") else [args.get("status", "")]
    statuses = tuple(s for value in raw_statuses for s in str(value or "").split(",") if s.strip())
    for status in statuses:
        if status not in tuple(Status):
            raise SearchError(
                "status", f"status must be one of {', '.join(Status)}, got {status!r}"
            )
    sort = one("sort") or "newest"
    if sort not in SORTS:
        raise SearchError("sort", f"sort must be one of {', '.join(SORTS)}")
    return Filters(
        q=one("q").strip(),
        statuses=statuses,
        locale=one("locale").strip(),
        source=one("source").strip(),
        since=_date(one("since"), "since"),
        until=_date(one("until"), "until"),
        sort=sort,
    )


def _date(value: str, name: str) -> date | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise SearchError(name, f"{name} must be a date, YYYY-MM-DD") from None
    if not 1970 <= day.year <= 9998:
        # Out of any sign-up's range, and `until` + 1 day must stay a date.
        raise SearchError(name, f"{name} must be between 1970 and 9998")
    return day


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def filtered(filters: Filters) -> Select[Any]:
    """SELECT Subscriber with the filters applied (no order, no limit)."""
    query = select(Subscriber)
    if filters.q:
        query = query.where(Subscriber.search_key.contains(search_key(filters.q), autoescape=True))
    if filters.statuses:
        query = query.where(Subscriber.status.in_(filters.statuses))
    if filters.locale:
        query = query.where(Subscriber.locale == filters.locale)
    if filters.source:
        query = query.where(Subscriber.consent_source.startswith(filters.source, autoescape=True))
    if filters.since:
        query = query.where(Subscriber.created_at >= _midnight(filters.since))
    if filters.until:
        query = query.where(Subscriber.created_at < _midnight(filters.until) + timedelta(days=1))
    return query


def _order(query: Select[Any], sort: str) -> Select[Any]:
    if sort == "newest":
        return query.order_by(Subscriber.created_at.desc(), Subscriber.id.desc())
    if sort == "oldest":
        return query.order_by(Subscriber.created_at, Subscriber.id)
    if sort == "email":
        return query.order_by(Subscriber.email)
    return query.order_by(Subscriber.email.desc())


def _after(query: Select[Any], sort: str, key: list[Any]) -> Select[Any]:
    """Rows after the cursor's key, in the sort's order."""
    if sort in ("newest", "oldest"):
        moment = datetime.fromisoformat(key[0])
        position = tuple_(Subscriber.created_at, Subscriber.id)
        bound = tuple_(literal(moment, UTCDateTime()), literal(int(key[1])))
        # Row-value comparison: one index range on PostgreSQL. SQLite compares row values
        # too (3.15+), and SQLAlchemy renders it for both.
        return query.where(position < bound if sort == "newest" else position > bound)
    email = str(key[0])
    return query.where(Subscriber.email > email if sort == "email" else Subscriber.email < email)


def _key(sub: Subscriber, sort: str) -> list[Any]:
    if sort in ("newest", "oldest"):
        return [sub.created_at.isoformat(), sub.id]
    return [sub.email]


def encode_cursor(filters: Filters, key: list[Any]) -> str:
    raw = json.dumps({"s": filters.sort, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        key = data["k"]
        if data["s"] != sort or not isinstance(key, list):
            raise ValueError
        if sort in ("newest", "oldest"):
            moment = datetime.fromisoformat(key[0])
            if moment.tzinfo is None or not isinstance(key[1], int) or not 0 <= key[1] <= MAX_ID:
                raise ValueError
        elif not isinstance(key[0], str) or len(key[0]) > EMAIL_MAX:
            raise ValueError
    except (
        ValueError,
        OverflowError,
        KeyError,
        IndexError,
        TypeError,
        binascii.Error,
        UnicodeDecodeError,
        RecursionError,
    ):
        raise SearchError(
            "cursor", "cursor is not one this list gave out (or the sort changed)"
        ) from None
    return key


@dataclass(frozen=True)
class Page:
    items: list[Subscriber]
    next_cursor: str | None


def list_page(filters: Filters, *, cursor: str | None = None, limit: int = DEFAULT_LIMIT) -> Page:
    if not 1 <= limit <= MAX_LIMIT:
        raise SearchError("limit", f"limit must be 1 to {MAX_LIMIT}")
    query = filtered(filters)
    if cursor:
        query = _after(query, filters.sort, decode_cursor(cursor, filters.sort))
    rows = list(db.session.execute(_order(query, filters.sort).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(filters, _key(rows[-1], filters.sort)) if more and rows else None
    return Page(rows, next_cursor)


def iterate(filters: Filters, chunk: int = 2000) -> Iterator[Subscriber]:
    """Every subscriber of a view in its order, one keyset page at a time (for exports):
    memory stays flat and no transaction is held open across the whole walk."""
    cursor: str | None = None
    while True:
        page = list_page(filters, cursor=cursor, limit=min(chunk, MAX_LIMIT))
        yield from page.items
        db.session.expunge_all()
        # End the read transaction between pages: a slow download must not hold a pooled
        # connection idle in a transaction (nor an old snapshot) for its whole length.
        db.session.rollback()
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def status_counts() -> dict[str, int]:
    """Subscribers per status (every status present, zeros included)."""
    rows = db.session.execute(
        select(Subscriber.status, func.count()).group_by(Subscriber.status)
    ).all()
    counts = {status.value: 0 for status in Status}
    counts.update({status: int(n) for status, n in rows})
    return counts


# ---------------------------------------------------------------- one subscriber


@dataclass(frozen=True)
class DeliveryLine:
    week: str
    status: str
    attempts: int
    sent_at: datetime | None
    error: str | None


def history(subscriber_id: int, limit: int = 200) -> list[AuditEvent]:
    """The subscriber's audit events, newest first: every status change and who made it."""
    return list(
        db.session.execute(
            select(AuditEvent)
            .where(AuditEvent.subscriber_id == subscriber_id)
            .order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
            .limit(limit)
        ).scalars()
    )


def recent_deliveries(subscriber_id: int, limit: int = 12) -> list[DeliveryLine]:
    rows = db.session.execute(
        select(Issue.week, Delivery)
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Delivery.subscriber_id == subscriber_id)
        .order_by(Issue.week.desc())
        .limit(limit)
    ).all()
    return [
        DeliveryLine(week, d.status, d.attempts, d.sent_at, d.last_error or d.smtp_response)
        for week, d in rows
    ]


def bounces(subscriber_id: int) -> list[AuditEvent]:
    """Bounce events (confirmation mails and digests), with the server's answer in `detail`."""
    return list(
        db.session.execute(
            select(AuditEvent)
            .where(AuditEvent.subscriber_id == subscriber_id, AuditEvent.action == "bounce")
            .order_by(AuditEvent.id.desc())
        ).scalars()
    )


def signups_and_unsubscribes(weeks: int, now: datetime) -> list[tuple[date, int, int]]:
    """(Monday, sign-ups, unsubscribes) for each of the last `weeks` ISO weeks, oldest first.

    One indexed range count per week and measure: cheap at a million subscribers, where
    loading the dates to bucket them would not be.
    """
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=today.weekday(), weeks=weeks - 1)
    result = []
    for n in range(weeks):
        monday = first + timedelta(weeks=n)
        start, end = _midnight(monday), _midnight(monday + timedelta(weeks=1))
        signups = db.session.execute(
            select(func.count())
            .select_from(Subscriber)
            .where(Subscriber.created_at >= start, Subscriber.created_at < end)
        ).scalar_one()
        leaving = db.session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.created_at >= start,
                AuditEvent.created_at < end,
                # Leaving: an unsubscription, or an erasure of someone still subscribed (one
                # who had unsubscribed before was counted then).
                or_(
                    AuditEvent.action == "unsubscribe",
                    and_(
                        AuditEvent.action == "erase",
                        AuditEvent.before_status.in_((Status.ACTIVE, Status.PENDING)),
                    ),
                ),
            )
        ).scalar_one()
        result.append((monday, int(signups), int(leaving)))
    return result
