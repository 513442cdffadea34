"""The confirmation-mail ledger on the subscriber row: a mail is *owed* from
`confirm_due_at`, *claimed* by one sender, then *sent*. Subscribing commits the debt before any
task is queued, so a broker outage delays the mail (the sweep sends it) but never loses it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import or_, select, update

from service.config import Settings
from service.extensions import db, rowcount
from service.inbound.verp import bounce_address, unsubscribe_address
from service.mail import brand
from service.mail.errors import PermanentFailure, TransientFailure
from service.mail.message import build_message
from service.mail.transport import Transport
from service.models import Status, Subscriber
from service.subscribers.suppressions import mark_bounced
from service.subscribers.tokens import (
    confirm_token,
    public_url,
    unsubscribe_token,
)
from service.telemetry.metrics import CONFIRMATION_MAILS

log = logging.getLogger(__name__)
MAX_CONFIRM_ATTEMPTS = 8


def _mail_allowed(sub: Subscriber, settings: Settings, now: datetime) -> bool:
    return mail_allowed(sub.confirm_due_at, sub.confirm_sent_at, settings, now)


def mail_allowed(
    due_at: datetime | None, sent_at: datetime | None, settings: Settings, now: datetime
) -> bool:
    """One confirmation mail per HEBDO_CONFIRM_RESEND_HOURS per address, one owed at a time
    (from the row's two columns: the sign-up reads them without loading the row)."""
    if due_at is not None:
        return False
    if sent_at is None:
        return True
    return now - sent_at >= timedelta(hours=settings.confirm_resend_hours)


def owe_confirmation(sub: Subscriber, settings: Settings, now: datetime) -> bool:
    """Owe the subscriber a confirmation mail now, if the per-address limit allows one."""
    if not _mail_allowed(sub, settings, now):
        return False
    sub.confirm_due_at = now
    sub.confirm_attempts = 0
    return True


def render_confirmation(settings: Settings, sub: Subscriber, now: datetime) -> tuple[str, str, str]:
    """Subject, text and HTML of the confirmation mail, in the subscriber's locale."""
    context = {
        "locale": sub.locale,
        # The same masthead and colours as the digest: one family of mails.
        **brand.masthead(settings),
        "confirm_url": public_url(settings, f"/confirm/{confirm_token(settings, sub)}"),
        "unsubscribe_url": public_url(settings, f"/unsubscribe/{unsubscribe_token(settings, sub)}"),
        "hours": settings.confirm_ttl_hours,
    }
    with force_locale(sub.locale):
        subject = _("Confirm your subscription to %(site)s", site=settings.site_name)
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
            envelope_from=bounce_address(settings, sub.id, optin_serial=sub.optin_serial),
            unsubscribe_mailto=unsubscribe_address(settings, sub.id, sub.created_at),
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
