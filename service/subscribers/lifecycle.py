"""Every change of a subscriber's status by the reader: subscribe, confirm, unsubscribe,
resubscribe.

Plain functions over explicit arguments (ids, `now`, settings, a transport): the API, the
pages, the Celery tasks and the tests all come in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, select, text
from sqlalchemy import insert as insert_into

from service.admin.audit import audit
from service.config import Settings
from service.extensions import db
from service.models import AuditEvent, Status, Subscriber, Suppression, search_key
from service.subscribers.addresses import normalise_email, suggest_fix
from service.subscribers.confirmations import owe_confirmation
from service.subscribers.suppressions import suppression_hashes
from service.subscribers.tokens import BadToken, Purpose, _micros, read_token
from service.telemetry.metrics import CONFIRMATIONS, UNSUBSCRIBES


@dataclass(frozen=True)
class Consent:
    """Where and how an address opted in: kept with the subscriber as proof."""

    source: str | None
    text_version: str
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class SubscribeResult:
    subscriber_id: int
    confirmation_due: bool
    suggestion: str | None


def _record_consent(sub: Subscriber, consent: Consent, now: datetime) -> None:
    sub.consent_at = now
    sub.consent_source = consent.source
    sub.consent_text_version = consent.text_version
    sub.consent_ip = consent.ip
    sub.consent_user_agent = consent.user_agent


def subscribe(
    raw_email: object,
    *,
    locale: str,
    consent: Consent,
    now: datetime,
    settings: Settings,
) -> SubscribeResult:
    """Record a sign-up and owe it a confirmation mail when one may be sent.

    New and formerly unsubscribed/bounced addresses become pending (an opt-in
    anew, even for a suppressed address: the confirmation is its proof).
    Active addresses are left alone. The caller learns nothing it may show
    about which case applied: only whether a mail must be queued.
    """
    email = normalise_email(
        raw_email,
        check_deliverability=settings.check_deliverability,
        dns_timeout=settings.dns_timeout,
    )
    suggestion = suggest_fix(email)
    for _attempt in range(3):
        # A new address (the common case) in one statement; None when it exists.
        created = _insert_new(email, locale=locale, consent=consent, now=now)
        if created is not None:
            return SubscribeResult(created, True, suggestion)
        sub = db.session.execute(
            select(Subscriber).where(Subscriber.email == email).with_for_update()
        ).scalar_one_or_none()
        if sub is None:
            # Erased between the two statements: insert again.
            db.session.rollback()
            continue
        due = False
        if sub.status == Status.PENDING:
            due = owe_confirmation(sub, settings, now)
        elif sub.status != Status.ACTIVE:
            before = sub.status
            sub.status = Status.PENDING
            sub.optin_serial += 1
            sub.locale = locale
            _record_consent(sub, consent, now)
            due = owe_confirmation(sub, settings, now)
            audit("subscribe", sub, actor="subscriber", now=now, before=before, ip=consent.ip)
        # Read before the commit expires the row (else one more SELECT to reload it).
        subscriber_id = sub.id
        db.session.commit()
        return SubscribeResult(subscriber_id, due, suggestion)
    raise RuntimeError("could not record the subscription: the address kept changing")


# The columns a new subscriber's INSERT binds (the others keep their defaults), and the
# columns of its audit event.
_NEW_SUBSCRIBER_COLUMNS = (
    "email",
    "search_key",
    "status",
    "locale",
    "created_at",
    "optin_serial",
    "confirm_due_at",
    "confirm_attempts",
    "consent_at",
    "consent_source",
    "consent_text_version",
    "consent_ip",
    "consent_user_agent",
)
# Built from the constant names above only (no input reaches SQL text): values are bound.
_NEW_SUBSCRIBER_INSERT = (
    f"INSERT INTO subscribers ({', '.join(_NEW_SUBSCRIBER_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + name for name in _NEW_SUBSCRIBER_COLUMNS)}) "
    "ON CONFLICT (email) DO NOTHING RETURNING id"
)
_SUBSCRIBE_EVENT = {
    "actor": "subscriber",
    "action": "subscribe",
    "after_status": Status.PENDING.value,
}


@cache
def _insert_statements(dialect: str) -> tuple[Any, Any]:
    """The statements of a new sign-up, built once per dialect, values bound per sign-up.

    PostgreSQL: one statement, the subscriber's INSERT and its audit event's INSERT in a
    data-modifying CTE, atomic on its own, so it runs on an autocommit connection — one
    round trip where a transaction costs four (BEGIN, two INSERTs, COMMIT). SQLite (no
    data-modifying CTEs, and no network to save): the two INSERTs and a commit.

    Written as SQL text because SQLAlchemy 2.0 gives the dialects'
    `insert().on_conflict_do_nothing()` no cache key: it was compiled anew on every sign-up
    (about 0.3 ms, a tenth of the request). Typed bind parameters keep the columns'
    conversions (UTC times); every column with a Python-side default is bound.
    """
    subscribers = Subscriber.__table__
    params = [bindparam(name, type_=subscribers.c[name].type) for name in _NEW_SUBSCRIBER_COLUMNS]
    if dialect == "postgresql":
        both = text(
            f"WITH new AS ({_NEW_SUBSCRIBER_INSERT}) "  # noqa: S608 (constant text)
            "INSERT INTO audit_events (created_at, actor, action, subscriber_id, after_status, ip) "
            "SELECT :created_at, :actor, :action, id, :after_status, :consent_ip FROM new "
            "RETURNING subscriber_id"
        )
        return both.bindparams(*params).columns(AuditEvent.__table__.c.subscriber_id), None
    subscriber = text(_NEW_SUBSCRIBER_INSERT).bindparams(*params).columns(subscribers.c.id)
    return subscriber, insert_into(AuditEvent.__table__)


def _insert_new(email: str, *, locale: str, consent: Consent, now: datetime) -> int | None:
    """The common case, a new address: its row and its audit event, committed, in one
    round trip on PostgreSQL (see `_insert_statements`). None when the address exists: the
    caller then reads and updates it under a row lock.

    A sign-up is the form's hot path: the ORM's SELECT-then-INSERT in a transaction cost
    four more round trips and most of a millisecond of Python per sign-up.
    """
    values = {
        "email": email,
        "search_key": search_key(email),
        "status": Status.PENDING.value,
        "locale": locale,
        "created_at": now,
        "optin_serial": 1,
        "confirm_due_at": now,
        "confirm_attempts": 0,
        "consent_at": now,
        "consent_source": consent.source,
        "consent_text_version": consent.text_version,
        "consent_ip": consent.ip,
        "consent_user_agent": consent.user_agent,
    }
    engine = db.engine
    add_subscriber, add_event = _insert_statements(engine.dialect.name)
    if add_event is None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            subscriber_id = conn.execute(add_subscriber, values | _SUBSCRIBE_EVENT).scalar()
        return None if subscriber_id is None else int(subscriber_id)
    subscriber_id = db.session.execute(add_subscriber, values).scalar_one_or_none()
    if subscriber_id is None:
        db.session.rollback()
        return None
    db.session.execute(
        add_event,
        {
            "created_at": now,
            "subscriber_id": subscriber_id,
            "ip": consent.ip,
            **_SUBSCRIBE_EVENT,
        },
    )
    db.session.commit()
    return int(subscriber_id)


def _subscriber_for(payload: list[Any], size: int) -> Subscriber | None:
    """The subscriber a token names, or None when that row no longer exists (erased)."""
    if len(payload) != size or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in payload
    ):
        raise BadToken("malformed payload")
    sub = db.session.get(Subscriber, payload[0])
    if sub is None or int(sub.created_at.timestamp()) != payload[1]:
        return None
    return sub


@dataclass(frozen=True)
class ConfirmCheck:
    subscriber: Subscriber
    already_confirmed: bool


def check_confirm_token(settings: Settings, token: str) -> ConfirmCheck:
    """What a confirmation link would do, without doing it. Raises BadToken."""
    payload = read_token(
        settings, Purpose.CONFIRM, token, max_age=settings.confirm_ttl_hours * 3600
    )
    sub = _subscriber_for(payload, 3)
    if sub is None:
        raise BadToken("unknown subscriber")
    if sub.optin_serial != payload[2]:
        raise BadToken("stale opt-in")
    if sub.status == Status.ACTIVE:
        return ConfirmCheck(sub, already_confirmed=True)
    if sub.status != Status.PENDING:
        raise BadToken("stale opt-in")
    return ConfirmCheck(sub, already_confirmed=False)


def confirm(settings: Settings, token: str, *, ip: str | None, now: datetime) -> ConfirmCheck:
    """Turn a pending subscriber active (idempotent). Raises BadToken and changes nothing then."""
    check = check_confirm_token(settings, token)
    if check.already_confirmed:
        return check
    sub = check.subscriber
    sub.status = Status.ACTIVE
    sub.confirmed_at = now
    sub.confirm_ip = ip
    sub.confirm_due_at = None
    sub.confirm_claimed_at = None
    # Opting in anew lifts an earlier suppression (erasure, bounce).
    db.session.execute(
        delete(Suppression).where(
            Suppression.email_hash.in_(suppression_hashes(settings, sub.email))
        )
    )
    audit("confirm", sub, actor="subscriber", now=now, before=Status.PENDING, ip=ip)
    db.session.commit()
    CONFIRMATIONS.inc()
    return check


def subscriber_for_unsubscribe(settings: Settings, token: str) -> Subscriber | None:
    """The subscriber of an unsubscribe link (no expiry); None when erased. Raises BadToken."""
    return _subscriber_for(read_token(settings, Purpose.UNSUBSCRIBE, token), 2)


def unsubscribe(
    subscriber_id: int,
    *,
    channel: str,
    now: datetime,
    ip: str | None = None,
    actor: str = "subscriber",
    reason: str = "",
) -> bool:
    """Stop all mail to a subscriber; True when this call changed the status (idempotent)."""
    sub = db.session.get(Subscriber, subscriber_id, with_for_update=True)
    if sub is None or sub.status not in (Status.ACTIVE, Status.PENDING):
        db.session.rollback()
        return False
    before = sub.status
    sub.status = Status.UNSUBSCRIBED
    sub.unsubscribed_at = now
    sub.unsubscribe_channel = channel
    # A pending address that unsubscribes from its confirmation mail is owed nothing more.
    sub.confirm_due_at = None
    sub.confirm_claimed_at = None
    detail = {"channel": channel, **({"reason": reason[:200]} if reason else {})}
    audit("unsubscribe", sub, actor=actor, now=now, before=before, ip=ip, detail=detail)
    db.session.commit()
    UNSUBSCRIBES.labels(channel=channel).inc()
    return True


def resubscribe_by_token(
    settings: Settings, token: str, *, consent: Consent, now: datetime
) -> Subscriber:
    """Undo an unsubscription from the link on the "you are unsubscribed" page.

    The token came from a link mailed to this address, so it proves the
    mailbox: the subscriber is active again at once, with a new consent record.
    Raises BadToken when the link is stale (7 days) or the status changed since.
    """
    payload = read_token(settings, Purpose.RESUBSCRIBE, token, max_age=7 * 24 * 3600)
    sub = _subscriber_for(payload, 3)
    if sub is None:
        raise BadToken("unknown subscriber")
    if sub.status == Status.ACTIVE:
        return sub
    if (
        sub.status != Status.UNSUBSCRIBED
        or sub.unsubscribed_at is None
        or _micros(sub.unsubscribed_at) != payload[2]
    ):
        raise BadToken("stale resubscribe link")
    sub.status = Status.ACTIVE
    _record_consent(sub, consent, now)
    audit(
        "resubscribe", sub, actor="subscriber", now=now, before=Status.UNSUBSCRIBED, ip=consent.ip
    )
    db.session.commit()
    return sub
