"""Previews and test mails of an issue: the exact mail one reader would get, and a copy
sent to one address marked [TEST], without recording a delivery.
"""

from __future__ import annotations

from datetime import datetime
from email import message_from_bytes, policy

from sqlalchemy import select

from service.config import Settings
from service.digest.rendering import Recipient, mail_for, mail_template
from service.extensions import db
from service.mail.message import Outgoing
from service.mail.transport import open_transport
from service.models import Issue, Subscriber
from service.subscribers.addresses import normalise_email
from service.subscribers.suppressions import is_suppressed

# ---------------------------------------------------------------- previews and test mails

PLACEHOLDER_ADDRESS = "lectrice@example.fr"


def sample_recipient(email: str | None, locale: str | None, now: datetime) -> Recipient:
    """Whom a preview or test is rendered for: the subscriber with that address when there
    is one (their locale and links), else a stand-in that is nobody's subscription.
    Raises InvalidEmail for an address that is not one."""
    if not email:
        return Recipient(0, PLACEHOLDER_ADDRESS, locale or "fr", now)
    address = normalise_email(email, check_deliverability=False)
    sub = db.session.execute(
        select(Subscriber).where(Subscriber.email == address)
    ).scalar_one_or_none()
    if sub is not None:
        return Recipient(sub.id, sub.email, locale or sub.locale, sub.created_at)
    return Recipient(0, address, locale or "fr", now)


def mail_part(mail: Outgoing, subtype: str) -> str:
    """The `plain` or `html` part of a built message, decoded."""
    message = message_from_bytes(mail.data, policy=policy.default)
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None
    return str(body.get_content())


def preview(settings: Settings, issue: Issue, recipient: Recipient, now: datetime) -> Outgoing:
    """The exact mail `recipient` would get."""
    return mail_for(settings, mail_template(settings, issue, recipient.locale), recipient, now)


class SuppressedAddress(ValueError):
    """A test send to an address on the suppression list: refused (nothing is sent)."""

    def __init__(self, recipient: Recipient) -> None:
        super().__init__(f"{recipient.email} is on the suppression list")
        self.recipient = recipient


def send_test(
    settings: Settings, issue: Issue, to: str, locale: str | None, now: datetime
) -> tuple[Recipient, str]:
    """Send the issue to one address now through the configured mailer, marked [TEST];
    no delivery is recorded. Returns the recipient and the server's reply; raises
    InvalidEmail, SuppressedAddress (never mailed, even a test) or mail.errors.DeliveryError."""
    recipient = sample_recipient(to, locale, now)
    if is_suppressed(settings, recipient.email):
        raise SuppressedAddress(recipient)
    template = mail_template(settings, issue, recipient.locale, subject_prefix="[TEST] ")
    mail = mail_for(settings, template, recipient, now)
    with open_transport(settings) as transport:
        reply = transport.send(mail)
    return recipient, reply
