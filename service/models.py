"""Typed SQLAlchemy models: subscribers, suppressions, audit events, API tokens,
and the weekly digest's articles, feeds, issues and deliveries."""

from __future__ import annotations

import enum
import unicodedata
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.extensions import db


class Status(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


def _values(kind: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{member.value}'" for member in kind)


_STATUSES = _values(Status)


def search_key(text_: str) -> str:
    """Lower case without accents: `José@Exemple.fr` is found by `jose@exemple`."""
    decomposed = unicodedata.normalize("NFKD", text_)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _search_key_default(context: Any) -> str:
    return search_key(context.get_current_parameters()["email"])


# Field limits, written once: the columns below, the API's shapes, the import and the
# sign-up form all take theirs from here.
EMAIL_MAX = 320
LOCALE_TAG_MAX = 35  # the longest language tag in common use (RFC 5646, 4.4.1)
SOURCE_MAX = 2048
CONSENT_VERSION_MAX = 64


class Subscriber(db.Model):  # type: ignore[name-defined]
    __tablename__ = "subscribers"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUSES})", name="status"),
        # The sweep's query: confirmation mails owed and not yet sent.
        Index("ix_subscribers_confirm_due_at", "confirm_due_at"),
        # The admin list's keyset orders (newest first, by status), and the send's snapshot
        # of active subscribers (the status prefix).
        Index("ix_subscribers_created", "created_at", "id"),
        Index("ix_subscribers_status_created", "status", "created_at", "id"),
        # Substring search over a million addresses: trigrams, on PostgreSQL only (SQLite
        # scans, which is fine at the sizes SQLite serves).
        Index(
            "ix_subscribers_search_trgm",
            "search_key",
            postgresql_using="gin",
            postgresql_ops={"search_key": "gin_trgm_ops"},
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Normalised (see subscribers.addresses.normalise_email): unique, the identity of a subscriber.
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), unique=True)
    # search_key(email), for the admin's case- and accent-insensitive search.
    search_key: Mapped[str] = mapped_column(String(EMAIL_MAX), default=_search_key_default)
    status: Mapped[str] = mapped_column(String(16))
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
    consent_source: Mapped[str | None] = mapped_column(String(SOURCE_MAX))
    consent_text_version: Mapped[str] = mapped_column(String(CONSENT_VERSION_MAX))
    consent_ip: Mapped[str | None] = mapped_column(String(45))
    consent_user_agent: Mapped[str | None] = mapped_column(String(512))

    # Confirmation mail ledger: owed from `confirm_due_at`, claimed by a sender at
    # `confirm_claimed_at`, last sent at `confirm_sent_at`.
    confirm_due_at: Mapped[datetime | None]
    confirm_claimed_at: Mapped[datetime | None]
    confirm_sent_at: Mapped[datetime | None]
    confirm_attempts: Mapped[int] = mapped_column(default=0)
    confirm_last_error: Mapped[str | None] = mapped_column(String(512))

    # The reader's own choices (/preferences/<token>): the categories of articles they want
    # (None or empty: every category), and a pause, the digest skipped until this date.
    categories: Mapped[list[str] | None] = mapped_column(JSON)
    paused_until: Mapped[date | None]


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
    # `subscriber`, `system`, `admin:<name>` (browser) or `token:<name>` (API).
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(64))
    # What the action was on when it is not a subscriber: `issue:2026-W48`, `user:alice`...
    subject: Mapped[str | None] = mapped_column(String(100))
    # No foreign key: the event outlives an erased subscriber.
    subscriber_id: Mapped[int | None] = mapped_column(index=True)
    before_status: Mapped[str | None] = mapped_column(String(16))
    after_status: Mapped[str | None] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(45))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ApiToken(db.Model):  # type: ignore[name-defined]
    """A bearer token for machine clients (a CMS pushing articles). Only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # None: never expires (every token made before migration 0008).
    expires_at: Mapped[datetime | None]


class Article(db.Model):  # type: ignore[name-defined]
    """One article of the site, from a feed or pushed by the CMS."""

    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 of the feed's guid (or the link when there is none): stable across re-reads.
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    # Plain text, sanitised at ingestion.
    summary: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(100), default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    image_url: Mapped[str | None] = mapped_column(String(2000))
    published_at: Mapped[datetime] = mapped_column(index=True)
    # The feed URL or path it came from, or `api:<token name>`.
    source: Mapped[str] = mapped_column(String(2000))
    language: Mapped[str] = mapped_column(String(8), default="fr")
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    # Editors' choices for the coming issue: left out of it, or placed at this position
    # (pinned articles come first, in pin order; the others follow in the automatic order).
    excluded: Mapped[bool] = mapped_column(default=False)
    pinned: Mapped[int | None]


class Feed(db.Model):  # type: ignore[name-defined]
    """What the last fetch of one feed said: validators for conditional GET, and health."""

    __tablename__ = "feeds"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2000), unique=True)
    etag: Mapped[str | None] = mapped_column(String(512))
    last_modified: Mapped[str | None] = mapped_column(String(128))
    fetched_at: Mapped[datetime | None]
    ok_at: Mapped[datetime | None]
    # ok | not_modified | error
    last_result: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(String(512))
    failures: Mapped[int] = mapped_column(default=0)


class IssueStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class Issue(db.Model):  # type: ignore[name-defined]
    """One weekly digest. `week` (ISO, `2026-W48`) is unique: one issue a week, however planned."""

    __tablename__ = "issues"
    __table_args__ = (CheckConstraint(f"status IN ({_values(IssueStatus)})", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    week: Mapped[str] = mapped_column(String(8), unique=True)
    subject: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    # Why an issue was cancelled or is empty, for people reading the status.
    note: Mapped[str | None] = mapped_column(String(200))
    planned_at: Mapped[datetime]
    send_at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Counters kept in step with the delivery rows, in the same transactions.
    recipients: Mapped[int] = mapped_column(default=0)
    sent_count: Mapped[int] = mapped_column(default=0)
    failed_count: Mapped[int] = mapped_column(default=0)
    bounced_count: Mapped[int] = mapped_column(default=0)
    # Readers who reported this issue as spam (feedback-loop reports, see complaints.py):
    # complaint_count / sent_count is the complaint rate mailbox providers judge the list by.
    complaint_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # What came back later (inbound.bounces, inbound.receive): delivery status notifications
    # of a permanent failure (hard, undone ones taken off) and of a temporary one (soft, one
    # per delivery), and readers who unsubscribed by mail (the mailto in List-Unsubscribe).
    hard_bounce_count: Mapped[int] = mapped_column(default=0, server_default="0")
    soft_bounce_count: Mapped[int] = mapped_column(default=0, server_default="0")
    mailto_unsubscribe_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # The editor's note at the top of the issue (plain text, paragraphs and links; None: the
    # locale's default intro from the settings).
    intro: Mapped[str | None] = mapped_column(Text)
    # Batch tasks queued and finished, so the sweep knows whether the queue still holds some.
    batches_queued: Mapped[int] = mapped_column(default=0)
    batches_done: Mapped[int] = mapped_column(default=0)
    progress_at: Mapped[datetime | None]


class IssueArticle(db.Model):  # type: ignore[name-defined]
    """The articles of an issue, in the order they are shown, as they were when planned.

    A copy, not a reference: what readers got is what the archive shows, and every
    batch of a send renders the same text, whatever a feed says about the article later.
    """

    __tablename__ = "issue_articles"
    __table_args__ = (UniqueConstraint("issue_id", "article_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int]
    url: Mapped[str] = mapped_column(String(2000))
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(100), default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    image_url: Mapped[str | None] = mapped_column(String(2000))
    # Readers' clicks on this article's link in this issue (no reader is identified).
    clicks: Mapped[int] = mapped_column(default=0, server_default="0")


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"
    # Not sent on purpose: the subscriber left before their turn, or the issue was cancelled.
    SKIPPED = "skipped"


class Delivery(db.Model):  # type: ignore[name-defined]
    """One issue to one subscriber: the ledger that makes each send happen exactly once."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id"),
        CheckConstraint(f"status IN ({_values(DeliveryStatus)})", name="status"),
        # Claims in progress (the sweep looks for stale ones). Partial indexes only: each index
        # costs every row two updates during a send (queued → sending → outcome).
        Index(
            "ix_deliveries_sending",
            "issue_id",
            "claimed_at",
            postgresql_where=text("status = 'sending'"),
            sqlite_where=text("status = 'sending'"),
        ),
        # The claim: queued rows of one issue in id order. Partial, so it holds only what is
        # left to send and a claim never walks past the rows already sent.
        Index(
            "ix_deliveries_queued",
            "issue_id",
            "id",
            postgresql_where=text("status = 'queued'"),
            sqlite_where=text("status = 'queued'"),
        ),
        # Queued rows whose worker was lost while it held them: each is claimed alone (see
        # delivery.claim_rows). Nearly always empty, so looking costs a claim nothing.
        Index(
            "ix_deliveries_suspect",
            "issue_id",
            "id",
            postgresql_where=text("status = 'queued' AND lost_claims > 0"),
            sqlite_where=text("status = 'queued' AND lost_claims > 0"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    claimed_at: Mapped[datetime | None]
    # The connection broke after the message was handed over: it may have arrived.
    uncertain: Mapped[bool] = mapped_column(default=False)
    # Claims that ended with their worker lost (killed, or crashed on this very message):
    # the sweep counts them, and quarantines the row at delivery.MAX_LOST_CLAIMS.
    lost_claims: Mapped[int] = mapped_column(default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(String(512))
    smtp_response: Mapped[str | None] = mapped_column(String(512))
    message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None]
    # A delivery status notification said this delivery failed for now (mailbox full,
    # greylisting that never cleared): HEBDO_SOFT_BOUNCE_LIMIT of these in a row make the
    # reader bounced (see inbound.bounces).
    soft_bounced_at: Mapped[datetime | None]


class AdminRole(enum.StrEnum):
    ADMIN = "admin"  # everything
    EDITOR = "editor"  # issues and articles; subscribers read-only


class AdminUser(db.Model):  # type: ignore[name-defined]
    """A person who signs in to the admin area. Only a scrypt hash of the password is kept."""

    __tablename__ = "admin_users"
    __table_args__ = (CheckConstraint(f"role IN ({_values(AdminRole)})", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    # Where "send a test to me" sends.
    email: Mapped[str | None] = mapped_column(String(320))
    locale: Mapped[str] = mapped_column(String(8), default="fr")
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]


class AdminSession(db.Model):  # type: ignore[name-defined]
    """A signed-in browser. The cookie holds a random id; only its SHA-256 is stored, so a
    session can be ended (logout, timeout, user disabled) on the server."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(45))


class ImportFile(db.Model):  # type: ignore[name-defined]
    """An uploaded CSV between its dry run and its import. Holds addresses, so it is
    deleted once imported, and after a day when it never is."""

    __tablename__ = "import_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(80))
    filename: Mapped[str] = mapped_column(String(255))
    content: Mapped[str] = mapped_column(Text)


class InboundVerdict(enum.StrEnum):
    """What hebdo made of a mail that came back (see inbound.receive)."""

    BOUNCED = "bounced"  # a permanent failure: the reader is bounced and suppressed
    SOFT_BOUNCE = "soft_bounce"  # a temporary failure, counted against the delivery
    COMPLAINED = "complained"  # a feedback-loop report: the reader complained
    UNSUBSCRIBED = "unsubscribed"  # mail to the reader's unsubscribe address
    DUPLICATE = "duplicate"  # about a reader already in that state: nothing changed
    AUTO_REPLY = "auto_reply"  # out of office, vacation, challenge-response: nothing changes
    FORWARDED = "forwarded"  # a person's reply, sent on to HEBDO_REPLY_TO
    KEPT = "kept"  # for a person: a reply without HEBDO_REPLY_TO, anything not understood
    UNATTRIBUTED = "unattributed"  # a bounce naming no delivery of ours (forged, foreign)
    UNDONE = "undone"  # a bounce an admin took back


class InboundMessage(db.Model):  # type: ignore[name-defined]
    """One mail that came back to hebdo (a bounce, a complaint, a mailto unsubscription, an
    auto-reply, a reader's reply), the verdict on it and the evidence for that verdict.

    The raw message is kept RAW_KEEP_DAYS for a person to read, then dropped; the row,
    which holds no address (the evidence's are masked), stays as the record."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        CheckConstraint(f"verdict IN ({_values(InboundVerdict)})", name="verdict"),
        # A provider's event sent twice (webhook retries) is one event.
        UniqueConstraint("source", "external_id"),
        Index("ix_inbound_messages_received", "received_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime]
    # How it came in: cli, maildir, api, smtp, or a provider's webhook (webhook:ses…).
    source: Mapped[str] = mapped_column(String(32))
    # The provider's id for a webhook event (idempotent replays); None for a mail.
    external_id: Mapped[str | None] = mapped_column(String(255))
    # bounce, complaint, unsubscribe, auto_reply, reply, unknown.
    kind: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    # Which rule decided (`dsn 5.1.1`, `verp`, `Auto-Submitted header`, `flufl:postfix`…).
    rule: Mapped[str] = mapped_column(String(100))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    issue_id: Mapped[int | None] = mapped_column(
        ForeignKey("issues.id", ondelete="SET NULL"), index=True
    )
    subject: Mapped[str | None] = mapped_column(String(200))
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    undone_at: Mapped[datetime | None]
    undone_by: Mapped[str | None] = mapped_column(String(80))
