"""Provider events: what a sending service (Amazon SES, SendGrid, Mailgun, Postmark) says
came back, once its webhook's signature holds (see web/api/webhooks.py and
inbound.providers for the signatures and each provider's fields).

An event is trusted where a mail is not: it is signed by the provider that really tried
the delivery, so its recipient address is the reader's. The issue comes from our
Message-ID when the provider gives it back (SES, SendGrid and Mailgun keep the headers we
sent), else it is the last issue sent to that reader. A bounce, a complaint and an
unsubscription then change the reader exactly as the mail forms do (inbound.bounces,
inbound.complaints, subscribers.lifecycle), and each event is recorded once: the
provider's event id is the ledger row's `external_id`, so a webhook retried or replayed
answers the first verdict and changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from service.config import Settings
from service.extensions import db
from service.inbound import bounces, complaints
from service.inbound.bounces import HARD, SOFT, Decision, severity
from service.inbound.receive import Received, RetryLater, earlier, record
from service.mail.errors import mask_addresses
from service.models import Delivery, DeliveryStatus, InboundVerdict, Issue, Subscriber
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.lifecycle import unsubscribe

__all__ = ["EventKind", "ProviderEvent", "receive_event"]


class EventKind(enum.StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True)
class ProviderEvent:
    """One event of a provider's webhook, in hebdo's words."""

    provider: str  # ses, sendgrid, mailgun, postmark
    event_id: str  # the provider's id of this event (idempotent replays)
    kind: EventKind
    recipient: str
    # For a bounce: HARD or SOFT as the provider says (Permanent/Transient, bounce/deferred…),
    # None to decide from the status code.
    severity: str | None = None
    status: str | None = None  # the enhanced status code when given
    diagnostic: str = ""
    message_id: str | None = None  # the Message-ID hebdo sent, with angle brackets
    detail: dict[str, Any] = field(default_factory=dict)  # the provider's own type names


def receive_event(settings: Settings, event: ProviderEvent, *, now: datetime) -> Received:
    """Apply one provider event and record it, once. Raises RetryLater (and
    SQLAlchemyError) when it must be sent again."""
    source = f"webhook:{event.provider}"[:32]
    external_id = event.event_id[:255]
    found = earlier(source, external_id)
    if found is not None:
        return found
    try:
        decision = _decide(settings, event, source=source, now=now)
    except (bounces.RetryLater, complaints.RetryLater) as exc:
        db.session.rollback()
        raise RetryLater(str(exc)) from None
    except Exception:
        db.session.rollback()
        raise
    return record(decision, source=source, external_id=external_id, now=now)


def _decide(settings: Settings, event: ProviderEvent, *, source: str, now: datetime) -> Decision:
    evidence: dict[str, Any] = {
        "provider": event.provider,
        "status": event.status,
        "diagnostic": mask_addresses(event.diagnostic)[:300],
        "recipient": mask_addresses(event.recipient),
        **{k: str(v)[:100] for k, v in event.detail.items()},
    }
    rule = f"{event.provider} {event.kind}"
    found = _reader(event)
    if found is None:
        return Decision(
            str(event.kind),
            InboundVerdict.UNATTRIBUTED,
            f"{rule}: no subscriber has this address",
            evidence,
        )
    sub, issue = found
    if event.kind == EventKind.COMPLAINT:
        outcome = complaints.mark_complained(
            settings,
            sub.id,
            (issue.id, issue.week) if issue else None,
            actor="system",
            now=now,
            detail={"source": source},
        )
        verdict = {
            complaints.Result.COMPLAINED: InboundVerdict.COMPLAINED,
            complaints.Result.DUPLICATE: InboundVerdict.DUPLICATE,
        }.get(outcome.result, InboundVerdict.UNATTRIBUTED)
        return Decision(
            "complaint",
            verdict,
            rule,
            evidence,
            subscriber_id=outcome.subscriber_id,
            issue_id=issue.id if issue else None,
        )
    if event.kind == EventKind.UNSUBSCRIBE:
        changed = unsubscribe(sub.id, channel=event.provider, now=now)
        return Decision(
            "unsubscribe",
            InboundVerdict.UNSUBSCRIBED if changed else InboundVerdict.DUPLICATE,
            rule,
            evidence,
            subscriber_id=sub.id,
            issue_id=issue.id if issue else None,
            stopped=None,
        )
    kind = event.severity or severity(event.status, "failed", event.diagnostic) or SOFT
    if (
        event.severity == HARD
        and event.status
        and severity(event.status, "failed", event.diagnostic) == SOFT
    ):
        kind = SOFT  # a "permanent" quota bounce is still a full mailbox
    failure = bounces.Failure(
        event.recipient.lower(), kind, event.status, "failed", evidence["diagnostic"]
    )
    return bounces.apply_failure(
        settings,
        failure,
        sub,
        issue,
        rule=f"{rule} {event.status or kind}",
        evidence=evidence,
        source=source,
        now=now,
    )


def _reader(event: ProviderEvent) -> tuple[Subscriber, Issue | None] | None:
    try:
        email = normalise_email(event.recipient)
    except InvalidEmail:
        return None
    sub = db.session.execute(
        select(Subscriber).where(Subscriber.email == email)
    ).scalar_one_or_none()
    if sub is None:
        return None
    query = select(Delivery.issue_id).where(Delivery.subscriber_id == sub.id)
    issue_id = None
    if event.message_id:
        issue_id = db.session.execute(
            query.where(Delivery.message_id == event.message_id).limit(1)
        ).scalar_one_or_none()
    if issue_id is None:
        issue_id = db.session.execute(
            query.where(Delivery.status == DeliveryStatus.SENT)
            .order_by(Delivery.issue_id.desc())
            .limit(1)
        ).scalar_one_or_none()
    return sub, db.session.get(Issue, issue_id) if issue_id is not None else None
