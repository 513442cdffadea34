"""The subscription lifecycle: normalise, subscribe, confirm, unsubscribe, resubscribe.

Plain functions over explicit arguments (ids, `now`, settings, a transport):
the API, the pages, the Celery tasks and the tests all come in here.

A confirmation mail is a ledger entry on the subscriber row: it is *owed* from
`confirm_due_at`, *claimed* by one sender, then *sent*. Subscribing commits the
debt before any task is queued, so a broker outage delays the mail (the sweep
sends it) but never loses it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import Any

from email_validator import (
    EmailNotValidError,
    EmailUndeliverableError,
    caching_resolver,
    validate_email,
)
from flask import render_template
from sqlalchemy import bindparam, delete, func, or_, select, text, update
from sqlalchemy import insert as insert_into

from . import i18n
from .audit_log import audit
from .config import Settings
from .extensions import db, rowcount
from .mailer import PermanentFailure, TransientFailure, Transport, build_message
from .metrics import CONFIRMATION_MAILS, CONFIRMATIONS, UNSUBSCRIBES
from .models import AuditEvent, Status, Subscriber, Suppression, search_key
from .tokens import BadToken, Purpose, make_token, read_token

log = logging.getLogger(__name__)

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit, minus the angle brackets
MAX_CONFIRM_ATTEMPTS = 8
MAJOR_DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "hotmail.com",
    "hotmail.fr",
    "outlook.com",
    "outlook.fr",
    "live.com",
    "live.fr",
    "msn.com",
    "yahoo.com",
    "yahoo.fr",
    "icloud.com",
    "me.com",
    "orange.fr",
    "wanadoo.fr",
    "free.fr",
    "sfr.fr",
    "laposte.net",
    "neuf.fr",
    "bbox.fr",
    "gmx.fr",
    "gmx.com",
    "proton.me",
    "protonmail.com",
    "aol.com",
)


class InvalidEmail(ValueError):
    """The address was refused; `code` names the problem (a key of i18n 'invalid.*')."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code
        self.detail = detail

    def message(self, locale: str) -> str:
        return i18n.translate(locale, f"invalid.{self.code}")


@cache
def _resolver(timeout: int) -> Any:
    return caching_resolver(timeout=timeout)


def normalise_email(
    raw: object, *, check_deliverability: bool = False, dns_timeout: int = 1
) -> str:
    """The stored form of an address, or InvalidEmail.

    Trimmed, Unicode-normalised by email-validator (internationalised addresses
    are kept in Unicode), then lower-cased as a whole: mailbox providers treat
    local parts case-insensitively, and one subscriber per mailbox matters more
    (limits, suppression, no duplicates) than the rare case-sensitive server.
    """
    if not isinstance(raw, str):
        raise InvalidEmail("type")
    if not check_deliverability:
        return _normalised(raw)
    return _normalise(raw, check_deliverability=True, dns_timeout=dns_timeout)


@lru_cache(maxsize=4096)
def _normalised(raw: str) -> str:
    """Syntax-only normalisation, remembered: a sign-up asks it three times (the
    per-address rate limit's key, the view, subscribe()), at ≈ 0.08 ms each. Only
    answers are cached; an invalid address raises every time."""
    return _normalise(raw, check_deliverability=False, dns_timeout=1)


def _normalise(raw: str, *, check_deliverability: bool, dns_timeout: int) -> str:
    email = raw.strip()
    if not email:
        raise InvalidEmail("empty")
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidEmail("too_long")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in email):
        raise InvalidEmail("control")
    if "@" not in email:
        raise InvalidEmail("no_at")
    if email.startswith('"'):
        raise InvalidEmail("quoted")
    if email.count("@") > 1:
        raise InvalidEmail("many_at")
    if email.endswith("]") or "@[" in email:
        raise InvalidEmail("ip_literal")
    if "=?" in email:
        # The opening of an RFC 2047 encoded-word: atext, so valid in a local part, but
        # header parsers and mail clients decode it even there, and read
        # `=?utf-8?q?victim=40evil.example?=@exemple.fr` in a To header as another
        # address ("splitting the email atom"). No real mailbox needs one.
        raise InvalidEmail("local")
    try:
        info = validate_email(
            email,
            check_deliverability=check_deliverability,
            dns_resolver=_resolver(dns_timeout) if check_deliverability else None,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailUndeliverableError as exc:
        raise InvalidEmail("undeliverable", str(exc)) from None
    except EmailNotValidError as exc:
        raise InvalidEmail(_faulty_part(email), str(exc)) from None
    normalised = info.normalized.lower()
    if len(normalised) > MAX_EMAIL_LENGTH:
        raise InvalidEmail("too_long")
    return normalised


def _faulty_part(email: str) -> str:
    """'local' or 'domain': which side of the @ made validation fail."""
    local = email.rpartition("@")[0]
    try:
        validate_email(f"{local}@example.com", check_deliverability=False, allow_quoted_local=False)
    except EmailNotValidError:
        return "local"
    return "domain"


def _osa_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: typos are mostly one slip or one swap."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def suggest_fix(email: str) -> str | None:
    """`user@gmail.com` for `user@gmial.com`: a likely typo of a major mail domain, or None."""
    local, _, domain = email.rpartition("@")
    fixed = _domain_fix(domain)
    return f"{local}@{fixed}" if fixed else None


@lru_cache(maxsize=8192)
def _domain_fix(domain: str) -> str | None:
    """The major domain `domain` is a typo of. Cached: a site's readers share a few hundred
    domains, and comparing one against every major domain costs ≈ 1.5 ms in Python."""
    if domain in MAJOR_DOMAINS:
        return None
    best = min(MAJOR_DOMAINS, key=lambda d: (_osa_distance(domain, d), d))
    distance = _osa_distance(domain, best)
    return best if 0 < distance <= (1 if len(domain) < 8 else 2) else None


def suppression_hashes(settings: Settings, email: str) -> list[str]:
    """HMACs of an address under every signing key, current key first."""
    return [
        hmac.new(key.encode(), email.encode(), hashlib.sha256).hexdigest()
        for key in reversed(settings.signing_keys)
    ]


def suppression_reason(settings: Settings, email: str) -> str | None:
    """Why a (normalised) address is on the suppression list, or None when it is not."""
    return db.session.execute(
        select(Suppression.reason)
        .where(Suppression.email_hash.in_(suppression_hashes(settings, email)))
        .limit(1)
    ).scalar_one_or_none()


def is_suppressed(settings: Settings, email: str) -> bool:
    return suppression_reason(settings, email) is not None


def suppressions_page(before: int | None, size: int) -> tuple[list[Suppression], int | None]:
    """A page of the suppression list, newest first, and the `before` of the next page."""
    query = select(Suppression).order_by(Suppression.id.desc()).limit(size + 1)
    if before:
        query = query.where(Suppression.id < before)
    rows = list(db.session.execute(query).scalars())
    return rows[:size], (rows[size - 1].id if len(rows) > size else None)


def suppression_reasons() -> list[tuple[str, int]]:
    rows = db.session.execute(
        select(Suppression.reason, func.count()).group_by(Suppression.reason)
    ).all()
    return [(reason, int(n)) for reason, n in rows]


def suppress(settings: Settings, email: str, reason: str, now: datetime) -> None:
    """Add the address to the suppression list (idempotent)."""
    if not is_suppressed(settings, email):
        db.session.add(
            Suppression(
                email_hash=suppression_hashes(settings, email)[0], reason=reason, created_at=now
            )
        )


def mark_bounced(
    settings: Settings,
    sub: Subscriber,
    now: datetime,
    *,
    detail: dict[str, Any],
    actor: str = "system",
    ip: str | None = None,
) -> None:
    """The server (or an admin) says the address does not exist: bounced, suppressed, audited."""
    before = sub.status
    sub.status = Status.BOUNCED
    suppress(settings, sub.email, "bounce", now)
    audit("bounce", sub, actor=actor, now=now, before=before, ip=ip, detail=detail)
    if before in (Status.ACTIVE, Status.PENDING):
        UNSUBSCRIBES.labels(channel="bounce").inc()


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


def _mail_allowed(sub: Subscriber, settings: Settings, now: datetime) -> bool:
    """One confirmation mail per HEBDO_CONFIRM_RESEND_HOURS per address, one owed at a time."""
    if sub.confirm_due_at is not None:
        return False
    if sub.confirm_sent_at is None:
        return True
    return now - sub.confirm_sent_at >= timedelta(hours=settings.confirm_resend_hours)


def owe_confirmation(sub: Subscriber, settings: Settings, now: datetime) -> bool:
    """Owe the subscriber a confirmation mail now, if the per-address limit allows one."""
    if not _mail_allowed(sub, settings, now):
        return False
    sub.confirm_due_at = now
    sub.confirm_attempts = 0
    return True


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


def _token_identity(sub: Subscriber) -> list[Any]:
    return _identity(sub.id, sub.created_at)


def _identity(subscriber_id: int, created_at: datetime) -> list[Any]:
    # The creation time makes a token specific to this row even if an id is reused after erasure.
    return [subscriber_id, int(created_at.timestamp())]


def confirm_token(settings: Settings, sub: Subscriber) -> str:
    return make_token(settings, Purpose.CONFIRM, [*_token_identity(sub), sub.optin_serial])


def unsubscribe_token(settings: Settings, sub: Subscriber) -> str:
    return unsubscribe_token_for(settings, sub.id, sub.created_at)


def unsubscribe_token_for(settings: Settings, subscriber_id: int, created_at: datetime) -> str:
    """The one-click unsubscribe token, from columns alone (the digest sender has no rows)."""
    return make_token(settings, Purpose.UNSUBSCRIBE, _identity(subscriber_id, created_at))


def resubscribe_token(settings: Settings, sub: Subscriber) -> str:
    assert sub.unsubscribed_at is not None
    return make_token(
        settings, Purpose.RESUBSCRIBE, [*_token_identity(sub), _micros(sub.unsubscribed_at)]
    )


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def public_url(settings: Settings, path: str) -> str:
    return f"{settings.base_url}{path}"


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


def render_confirmation(settings: Settings, sub: Subscriber, now: datetime) -> tuple[str, str, str]:
    """Subject, text and HTML of the confirmation mail."""
    context = {
        "locale": sub.locale,
        "site": settings.site_name,
        "confirm_url": public_url(settings, f"/confirm/{confirm_token(settings, sub)}"),
        "unsubscribe_url": public_url(settings, f"/unsubscribe/{unsubscribe_token(settings, sub)}"),
        "hours": settings.confirm_ttl_hours,
    }
    subject = i18n.translate(sub.locale, "mail.confirm.subject", site=settings.site_name)
    text = render_template("email/confirm.txt", **context)
    html = render_template("email/confirm.html", **context)
    return subject, text, html


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


def send_confirmation(
    subscriber_id: int, *, transport: Transport, settings: Settings, now: datetime
) -> bool:
    """Send the confirmation mail a subscriber is owed, if any; True when sent.

    The row is claimed first (an atomic UPDATE), so two workers, a retried task
    and the sweep never send the same mail twice; a claim abandoned by a killed
    worker expires after HEBDO_CLAIM_TIMEOUT_SECONDS and the sweep sends it.
    """
    stale = now - timedelta(seconds=settings.claim_timeout_seconds)
    result = db.session.execute(
        update(Subscriber)
        .where(
            Subscriber.id == subscriber_id,
            Subscriber.status == Status.PENDING,
            Subscriber.confirm_due_at.is_not(None),
            Subscriber.confirm_due_at <= now,
            or_(Subscriber.confirm_claimed_at.is_(None), Subscriber.confirm_claimed_at < stale),
        )
        .values(confirm_claimed_at=now, confirm_attempts=Subscriber.confirm_attempts + 1)
        .execution_options(synchronize_session=False)
    )
    claimed = rowcount(result)
    db.session.commit()
    if not claimed:
        return False
    sub = db.session.get(Subscriber, subscriber_id, populate_existing=True)
    assert sub is not None
    try:
        subject, text, html = render_confirmation(settings, sub, now)
        unsubscribe_link = public_url(settings, f"/unsubscribe/{unsubscribe_token(settings, sub)}")
        mail = build_message(
            settings,
            to=sub.email,
            subject=subject,
            text=text,
            html=html,
            unsubscribe_url=unsubscribe_link,
            now=now,
        )
        transport.send(mail)
    except PermanentFailure as exc:
        if exc.kind == "sender":
            # Our relay refuses us (configuration, policy): not this reader's fault.
            sub.confirm_claimed_at = None
            sub.confirm_last_error = str(exc)[:512]
            sub.confirm_due_at = now + _backoff(sub.confirm_attempts)
            db.session.commit()
            log.warning(
                "confirmation mail of subscriber %s refused by the relay: %s", subscriber_id, exc
            )
            CONFIRMATION_MAILS.labels(result="deferred").inc()
            return False
        if exc.kind == "message":
            sub.confirm_claimed_at = None
            sub.confirm_due_at = None
            sub.confirm_last_error = str(exc)[:512]
            db.session.commit()
            log.warning("confirmation mail of subscriber %s rejected: %s", subscriber_id, exc)
            CONFIRMATION_MAILS.labels(result="failed").inc()
            return False
        sub.confirm_due_at = None
        sub.confirm_claimed_at = None
        sub.confirm_last_error = str(exc)[:512]
        mark_bounced(settings, sub, now, detail={"code": exc.code})
        db.session.commit()
        log.info("confirmation mail to subscriber %s bounced: %s", subscriber_id, exc.code)
        CONFIRMATION_MAILS.labels(result="bounced").inc()
        return False
    except TransientFailure as exc:
        sub.confirm_claimed_at = None
        sub.confirm_last_error = str(exc)[:512]
        if sub.confirm_attempts >= MAX_CONFIRM_ATTEMPTS:
            sub.confirm_due_at = None
            log.warning("giving up the confirmation mail of subscriber %s: %s", subscriber_id, exc)
        else:
            delay = (
                timedelta(seconds=exc.retry_after)
                if exc.retry_after
                else _backoff(sub.confirm_attempts)
            )
            sub.confirm_due_at = now + delay
            log.info(
                "confirmation mail of subscriber %s deferred by %s: %s", subscriber_id, delay, exc
            )
        db.session.commit()
        CONFIRMATION_MAILS.labels(result="deferred").inc()
        raise
    sub.confirm_sent_at = now
    sub.confirm_due_at = None
    sub.confirm_claimed_at = None
    sub.confirm_last_error = None
    db.session.commit()
    CONFIRMATION_MAILS.labels(result="sent").inc()
    return True


def due_confirmations(settings: Settings, now: datetime, limit: int = 500) -> list[int]:
    """Ids of subscribers owed a confirmation mail that nobody is sending."""
    stale = now - timedelta(seconds=settings.claim_timeout_seconds)
    rows = db.session.execute(
        select(Subscriber.id)
        .where(
            Subscriber.confirm_due_at <= now,
            Subscriber.status == Status.PENDING,
            or_(Subscriber.confirm_claimed_at.is_(None), Subscriber.confirm_claimed_at < stale),
        )
        .order_by(Subscriber.confirm_due_at)
        .limit(limit)
    )
    return list(rows.scalars())


def send_due_confirmations(
    *, transport: Transport, settings: Settings, now: datetime, limit: int = 500
) -> int:
    """The sweep: send every owed confirmation mail over one transport; return the count."""
    sent = 0
    for subscriber_id in due_confirmations(settings, now, limit):
        try:
            sent += send_confirmation(
                subscriber_id, transport=transport, settings=settings, now=now
            )
        except TransientFailure:
            continue
    return sent
