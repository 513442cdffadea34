"""A reader's own choices, from the preference page linked in every digest: the categories
they want, their language, a pause of 1 to 8 weeks, and a change of address confirmed by
mail to the new one.

Plain functions over ids and explicit arguments (`now`, settings, a transport), as in
`lifecycle`: the page's form posts, the JSON API and the tests come in here. Each change
writes its audit event; a change that changes nothing writes none. A pause needs no job to
end it: `paused_until` in the past simply means not paused (the sender compares it with
the issue's date).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from flask import render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from service.admin.audit import audit
from service.config import Settings
from service.extensions import db
from service.i18n import LOCALES
from service.mail.message import build_message
from service.mail.transport import Transport
from service.models import Article, Status, Subscriber, search_key
from service.subscribers.addresses import normalise_email
from service.subscribers.suppressions import is_suppressed
from service.subscribers.tokens import (
    BadToken,
    Purpose,
    make_token,
    public_url,
    read_token,
    unsubscribe_token,
)

# A pause lasts whole weeks, one to eight: longer is an unsubscription in disguise.
MAX_PAUSE_WEEKS = 8
# The categories offered: those of the articles of the last four weeks, with their counts.
CATEGORY_WINDOW = timedelta(weeks=4)
# How long the link mailed to a new address stays good.
ADDRESS_LINK_HOURS = 48


class InvalidPreference(ValueError):
    """A choice the reader cannot make; `field` names it (`categories`, `locale`,
    `paused_until`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Category:
    name: str
    articles: int


@dataclass(frozen=True)
class Preferences:
    categories: list[str]
    locale: str
    # None when not paused (a date in the past is no pause).
    paused_until: date | None


def subscriber_for_preferences(settings: Settings, token: str) -> Subscriber:
    """The reader a preference link names; BadToken when the link is forged, or names a
    row that is erased or no longer receives anything (unsubscribed, bounced)."""
    payload = read_token(settings, Purpose.PREFERENCES, token)
    if len(payload) != 2 or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in payload
    ):
        raise BadToken("malformed payload")
    sub = db.session.get(Subscriber, payload[0])
    if sub is None or int(sub.created_at.timestamp()) != payload[1]:
        raise BadToken("unknown subscriber")
    if sub.status not in (Status.ACTIVE, Status.PENDING):
        raise BadToken("stale link")
    return sub


def categories_offered(now: datetime, chosen: list[str] | None = None) -> list[Category]:
    """The feeds' categories of recent weeks, each with its article count over the last
    four weeks, most articles first; a category the reader chose that has no article now
    stays in the list (with 0), so their choice is never dropped without them seeing it."""
    rows = db.session.execute(
        select(Article.category, func.count())
        .where(
            Article.published_at >= now - CATEGORY_WINDOW,
            Article.category != "",
            Article.excluded.is_(False),
        )
        .group_by(Article.category)
    ).all()
    counts = {name: int(n) for name, n in rows}
    for name in chosen or []:
        counts.setdefault(name, 0)
    return [Category(n, c) for n, c in sorted(counts.items(), key=lambda i: (-i[1], i[0]))]


def read_preferences(sub: Subscriber, today: date) -> Preferences:
    paused = sub.paused_until if sub.paused_until and sub.paused_until > today else None
    return Preferences(list(sub.categories or []), sub.locale, paused)


def pause_until(today: date, weeks: int) -> date:
    if not 1 <= weeks <= MAX_PAUSE_WEEKS:
        raise InvalidPreference("paused_until", f"a pause lasts 1 to {MAX_PAUSE_WEEKS} weeks")
    return today + timedelta(weeks=weeks)


def update_preferences(
    subscriber_id: int,
    *,
    now: datetime,
    categories: list[str] | None = None,
    locale: str | None = None,
    paused_until: date | bool | None = False,
    ip: str | None = None,
) -> list[str]:
    """Apply the choices given (None, or False for `paused_until`, leaves one as it is);
    return the names of those that changed, each audited once (`preferences` events with
    the field, before and after). An empty list of categories, or every category offered,
    means every category. Raises InvalidPreference and changes nothing then."""
    sub = db.session.get(Subscriber, subscriber_id, with_for_update=True)
    if sub is None:
        raise InvalidPreference("subscriber", "no such subscriber")
    today = now.date()
    changes: dict[str, tuple[Any, Any]] = {}
    if categories is not None:
        offered = {c.name for c in categories_offered(now, sub.categories)}
        unknown = sorted(set(categories) - offered)
        if unknown:
            db.session.rollback()
            raise InvalidPreference("categories", f"unknown category: {', '.join(unknown)}")
        wanted = sorted(set(categories))
        new = None if not wanted or set(wanted) == offered else wanted
        if new != (sorted(sub.categories) if sub.categories else None):
            changes["categories"] = (sub.categories, new)
            sub.categories = new
    if locale is not None:
        if locale not in LOCALES:
            db.session.rollback()
            raise InvalidPreference("locale", f"locale must be one of {', '.join(LOCALES)}")
        if locale != sub.locale:
            changes["locale"] = (sub.locale, locale)
            sub.locale = locale
    if paused_until is not False:
        assert paused_until is None or isinstance(paused_until, date)
        if paused_until is not None and not (
            today < paused_until <= today + timedelta(weeks=MAX_PAUSE_WEEKS)
        ):
            db.session.rollback()
            raise InvalidPreference(
                "paused_until",
                f"paused_until must be after today and at most {MAX_PAUSE_WEEKS} weeks away",
            )
        current = read_preferences(sub, today).paused_until
        if paused_until != current:
            changes["paused_until"] = (current, paused_until)
            sub.paused_until = paused_until
    for name, (before, after) in changes.items():
        if name == "paused_until":
            action = "pause" if after is not None else "resume"
            detail = {"until": after.isoformat()} if after is not None else None
        else:
            action, detail = "preferences", {"field": name, "before": before, "after": after}
        audit(action, sub, actor="subscriber", now=now, before=sub.status, ip=ip, detail=detail)
    db.session.commit()
    return list(changes)


# ---------------------------------------------------------------- change of address


def _address_token(settings: Settings, sub: Subscriber, new_email: str) -> str:
    return make_token(
        settings, Purpose.ADDRESS, [sub.id, int(sub.created_at.timestamp()), new_email]
    )


def request_address_change(
    settings: Settings,
    subscriber_id: int,
    raw_email: object,
    *,
    transport: Transport,
    now: datetime,
    ip: str | None = None,
) -> bool:
    """Mail a link to the new address; the address changes only when it is followed.

    Raises InvalidEmail for an address that is not one. An address already subscribed or
    on the suppression list gets no mail, but the caller answers the same as for any other
    (so the page tells nobody who subscribes); True when a mail went out.
    """
    email = normalise_email(
        raw_email,
        check_deliverability=settings.check_deliverability,
        dns_timeout=settings.dns_timeout,
    )
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None or email == sub.email:
        return False
    taken = db.session.execute(
        select(Subscriber.id).where(Subscriber.email == email)
    ).scalar_one_or_none()
    if taken is not None or is_suppressed(settings, email):
        return False
    token = _address_token(settings, sub, email)
    context = {
        "locale": sub.locale,
        "site": settings.site_name,
        "address_url": public_url(settings, f"/preferences/address/{token}"),
        "hours": ADDRESS_LINK_HOURS,
    }
    with force_locale(sub.locale):
        subject = _("Confirm your new address for %(site)s", site=settings.site_name)
        text = render_template("email/address_change.txt", **context)
        html = render_template("email/address_change.html", **context)
    mail = build_message(
        settings,
        to=email,
        subject=subject,
        text=text,
        html=html,
        unsubscribe_url=public_url(settings, f"/unsubscribe/{unsubscribe_token(settings, sub)}"),
        now=now,
    )
    audit("address_change_requested", sub, actor="subscriber", now=now, before=sub.status, ip=ip)
    # Recorded before it is sent: a mail that fails leaves a trace of the attempt.
    db.session.commit()
    transport.send(mail)
    return True


def address_change_target(settings: Settings, token: str) -> tuple[Subscriber, str]:
    """The reader and new address an address link names; BadToken when forged, expired,
    for an erased or unsubscribed row."""
    payload = read_token(settings, Purpose.ADDRESS, token, max_age=ADDRESS_LINK_HOURS * 3600)
    if (
        len(payload) != 3
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in payload[:2])
        or not isinstance(payload[2], str)
    ):
        raise BadToken("malformed payload")
    sub = db.session.get(Subscriber, payload[0])
    if sub is None or int(sub.created_at.timestamp()) != payload[1]:
        raise BadToken("unknown subscriber")
    if sub.status not in (Status.ACTIVE, Status.PENDING):
        raise BadToken("stale link")
    return sub, payload[2]


def change_address(
    settings: Settings, token: str, *, now: datetime, ip: str | None = None
) -> Subscriber:
    """Follow an address link: the row takes the new address (idempotent). Raises BadToken,
    also when the new address was taken or suppressed meanwhile (`stale`)."""
    sub, email = address_change_target(settings, token)
    if sub.email == email:
        return sub
    taken = db.session.execute(
        select(Subscriber.id).where(Subscriber.email == email)
    ).scalar_one_or_none()
    if taken is not None or is_suppressed(settings, email):
        raise BadToken("stale link")
    sub.email = email
    sub.search_key = search_key(email)
    audit("address_change", sub, actor="subscriber", now=now, before=sub.status, ip=ip)
    try:
        db.session.commit()
    except IntegrityError:
        # Signed up by someone between the check and the commit.
        db.session.rollback()
        raise BadToken("stale link") from None
    return sub
