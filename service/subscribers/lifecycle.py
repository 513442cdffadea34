"""Every change of a subscriber's status by the reader: subscribe, confirm, unsubscribe,
resubscribe.

Plain functions over explicit arguments (ids, `now`, settings, a transport): the API, the
pages, the Celery tasks and the tests all come in here.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Integer, bindparam, column, delete, select, text
from sqlalchemy import insert as insert_into

from service.admin.audit import audit
from service.config import Settings
from service.extensions import db
from service.models import AuditEvent, Status, Subscriber, Suppression, search_key
from service.subscribers.addresses import normalise_email, suggest_fix
from service.subscribers.confirmations import mail_allowed, owe_confirmation
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
        # A new address (the common case) in one statement, which reads a known one.
        started = time.perf_counter()
        found = _insert_new(email, locale=locale, consent=consent, now=now)
        if isinstance(found, int):
            _NEW_SIGNUP_TIMES.add(time.perf_counter() - started)
            return SubscribeResult(found, True, suggestion)
        if found is not None and not _changes(found, settings, now):
            # Active, or pending with its mail owed or sent lately: nothing to write. The
            # same round trip as a new address, then as long as a new address's writes
            # take, so the answer's time does not tell a known address from a new one.
            _NEW_SIGNUP_TIMES.pad(started)
            return SubscribeResult(found.id, False, suggestion)
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


class _SignupTimes:
    """How long the latest sign-up statements took in this process, for new addresses
    (which write and commit) and for known ones (which only read).

    A known address's sign-up that changes nothing only reads where a new one writes and
    commits, and would answer faster (0.1–0.35 ms here): a prober who times many answers
    would tell the two apart. So it then waits the difference of the two medians, the
    cost of the write: both statements are one round trip with the same spread, and the
    wait moves one median onto the other (docs/performance.md has the figures). Known
    addresses are rare in real traffic; the wait costs them well under a millisecond.
    """

    def __init__(self, keep: int = 101) -> None:
        self._lock = threading.Lock()
        self._new: deque[float] = deque(maxlen=keep)
        self._known: deque[float] = deque(maxlen=keep)

    def add(self, seconds: float) -> None:
        with self._lock:
            self._new.append(seconds)

    def pad(self, started: float) -> None:
        """Wait what a new address's write would have added to a read begun at `started`
        (a `perf_counter` reading)."""
        now = time.perf_counter()
        with self._lock:
            self._known.append(now - started)
            if not self._new:
                return
            deadline = now + statistics.median(self._new) - statistics.median(self._known)
        # A sleep overshoots by a tenth of a millisecond or so, about the gap it closes:
        # sleep short of the deadline, then spin to it.
        nap = deadline - time.perf_counter() - SLEEP_SLACK
        if nap > 0:
            time.sleep(nap)
        while time.perf_counter() < deadline:
            pass


_NEW_SIGNUP_TIMES = _SignupTimes()
SLEEP_SLACK = 0.0003


@dataclass(frozen=True)
class _Known:
    """A known address's row, as far as a sign-up needs it, read by the sign-up's insert."""

    id: int
    status: str
    confirm_due_at: datetime | None
    confirm_sent_at: datetime | None


def _changes(known: _Known, settings: Settings, now: datetime) -> bool:
    """Whether a sign-up of this known address changes its row (then under a row lock)."""
    if known.status == Status.ACTIVE:
        return False
    if known.status == Status.PENDING:
        return mail_allowed(known.confirm_due_at, known.confirm_sent_at, settings, now)
    return True


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
    """The statements of a sign-up, built once per dialect, values bound per sign-up.

    PostgreSQL: one statement, the subscriber's INSERT and its audit event's INSERT in a
    data-modifying CTE, atomic on its own, so it runs on an autocommit connection — one
    round trip where a transaction costs four (BEGIN, two INSERTs, COMMIT). The same
    statement reads the row of an address that exists (the CTE's snapshot does not see
    the row it inserts), so a known address costs the same round trip as a new one:
    sign-up timing measured 1 ms more for known addresses when they took a second,
    locking transaction. SQLite (no data-modifying CTEs, and no network to save): the two
    INSERTs and a commit, or the INSERT and the read.

    Written as SQL text because SQLAlchemy 2.0 gives the dialects'
    `insert().on_conflict_do_nothing()` no cache key: it was compiled anew on every sign-up
    (about 0.3 ms, a tenth of the request). Typed bind parameters keep the columns'
    conversions (UTC times); every column with a Python-side default is bound.
    """
    subscribers = Subscriber.__table__
    params = [bindparam(name, type_=subscribers.c[name].type) for name in _NEW_SUBSCRIBER_COLUMNS]
    if dialect == "postgresql":
        both = text(
            f"WITH new AS ({_NEW_SUBSCRIBER_INSERT}), "  # noqa: S608 (constant text)
            "event AS (INSERT INTO audit_events "
            "(created_at, actor, action, subscriber_id, after_status, ip) "
            "SELECT :created_at, :actor, :action, id, :after_status, :consent_ip FROM new "
            "RETURNING subscriber_id) "
            "SELECT (SELECT subscriber_id FROM event) AS created, "
            "s.id, s.status, s.confirm_due_at, s.confirm_sent_at "
            "FROM (SELECT 1) AS one LEFT JOIN subscribers AS s ON s.email = :email"
        )
        read = (subscribers.c[name] for name in _Known.__dataclass_fields__)
        return both.bindparams(*params).columns(column("created", Integer), *read), None
    subscriber = text(_NEW_SUBSCRIBER_INSERT).bindparams(*params).columns(subscribers.c.id)
    return subscriber, insert_into(AuditEvent.__table__)


_READ_KNOWN = select(*(Subscriber.__table__.c[name] for name in _Known.__dataclass_fields__)).where(
    Subscriber.email == bindparam("email")
)


def _insert_new(email: str, *, locale: str, consent: Consent, now: datetime) -> int | _Known | None:
    """The common case, a new address: its row and its audit event, committed, in one
    round trip on PostgreSQL (see `_insert_statements`); its id. When the address exists,
    its row as that round trip read it, or None when it could not (the row was being
    inserted or erased meanwhile): the caller then reads it again under a row lock.

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
            row = conn.execute(add_subscriber, values | _SUBSCRIBE_EVENT).one()
        if row.created is not None:
            return int(row.created)
        return None if row.id is None else _Known(*row[1:])
    subscriber_id = db.session.execute(add_subscriber, values).scalar_one_or_none()
    if subscriber_id is None:
        known = db.session.execute(_READ_KNOWN, {"email": email}).one_or_none()
        db.session.rollback()
        return None if known is None else _Known(*known)
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


# How long after an unsubscription the "you are unsubscribed" page offers to undo it.
RESUBSCRIBE_WINDOW = timedelta(days=7)


def may_resubscribe(sub: Subscriber, now: datetime) -> bool:
    """Whether the unsubscribed page may offer (and its link carry out) an undo: only
    within RESUBSCRIBE_WINDOW of the unsubscription itself.

    Counted from `unsubscribed_at`, not from when the page was shown: every view of an old
    unsubscribe link (a forwarded digest, its List-Unsubscribe header) would otherwise sign
    a fresh link, and the window would never close.
    """
    return (
        sub.status == Status.UNSUBSCRIBED
        and sub.unsubscribed_at is not None
        and now - sub.unsubscribed_at <= RESUBSCRIBE_WINDOW
    )


def resubscribe_by_token(
    settings: Settings, token: str, *, consent: Consent, now: datetime
) -> Subscriber:
    """Undo an unsubscription from the link on the "you are unsubscribed" page.

    The token came from a link mailed to this address, so it proves the mailbox: the
    subscriber is active again at once. The original proof of consent stays as it was
    (who clicked this link may be whoever the digest was forwarded to): the
    resubscription is a new audit event carrying its own source, text version, IP and
    browser. Raises BadToken when the link is stale, or the unsubscription is more than
    RESUBSCRIBE_WINDOW old (`expired`), or the status changed since.
    """
    payload = read_token(
        settings,
        Purpose.RESUBSCRIBE,
        token,
        max_age=int(RESUBSCRIBE_WINDOW.total_seconds()),
    )
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
    if not may_resubscribe(sub, now):
        raise BadToken("expired", expired=True)
    sub.status = Status.ACTIVE
    audit(
        "resubscribe",
        sub,
        actor="subscriber",
        now=now,
        before=Status.UNSUBSCRIBED,
        ip=consent.ip,
        detail={
            "source": consent.source,
            "text_version": consent.text_version,
            "user_agent": (consent.user_agent or "")[:512] or None,
        },
    )
    db.session.commit()
    return sub
