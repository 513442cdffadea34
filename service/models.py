"""Typed SQLAlchemy models: subscribers, suppressions, audit events.

Article, Issue and Delivery come with the weekly digest.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db


class Status(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


_STATUSES = ", ".join(f"'{s.value}'" for s in Status)


class Subscriber(db.Model):  # type: ignore[name-defined]
    __tablename__ = "subscribers"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUSES})", name="status"),
        # The sweep's query: confirmation mails owed and not yet sent.
        Index("ix_subscribers_confirm_due_at", "confirm_due_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Normalised (see subscriptions.normalise_email): unique, the identity of a subscriber.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    locale: Mapped[str] = mapped_column(String(8), default="fr")
    created_at: Mapped[datetime]
    # Incremented each time the address enters `pending`: a confirmation link
    # only confirms the opt-in it was sent for.
    optin_serial: Mapped[int] = mapped_column(default=1)

    confirmed_at: Mapped[datetime | None]
    confirm_ip: Mapped[str | None] = mapped_column(String(45))
    unsubscribed_at: Mapped[datetime | None]
    unsubscribe_channel: Mapped[str | None] = mapped_column(String(16))

    # Proof of consent, for the opt-in in force.
    consent_at: Mapped[datetime]
    consent_source: Mapped[str | None] = mapped_column(String(2048))
    consent_text_version: Mapped[str] = mapped_column(String(64))
    consent_ip: Mapped[str | None] = mapped_column(String(45))
    consent_user_agent: Mapped[str | None] = mapped_column(String(512))

    # Confirmation mail ledger: owed from `confirm_due_at`, claimed by a sender at
    # `confirm_claimed_at`, last sent at `confirm_sent_at`.
    confirm_due_at: Mapped[datetime | None]
    confirm_claimed_at: Mapped[datetime | None]
    confirm_sent_at: Mapped[datetime | None]
    confirm_attempts: Mapped[int] = mapped_column(default=0)
    confirm_last_error: Mapped[str | None] = mapped_column(String(512))


class Suppression(db.Model):  # type: ignore[name-defined]
    """An address never to be mailed again unless it opts in anew.

    Keyed by an HMAC of the normalised address, so an erased address stays
    suppressed without being stored.
    """

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class AuditEvent(db.Model):  # type: ignore[name-defined]
    """Who did what to which subscriber, when. Never holds a plaintext address."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    # No foreign key: the event outlives an erased subscriber.
    subscriber_id: Mapped[int | None] = mapped_column(index=True)
    before_status: Mapped[str | None] = mapped_column(String(16))
    after_status: Mapped[str | None] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(45))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
