"""What each admin role may see of a subscriber: one rule for the admin pages and the
admin API, so the two faces cannot drift apart.

Editors run the newsletter: they see who is subscribed, since when, from which page,
and what happened to them. Network traces (the IP addresses and browsers in the proof of
consent, the confirmation and the history) and whether an address is on the suppression
list are personal data an editor has no need of: only admins see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.models import AdminRole, AuditEvent, Subscriber

# Keys of an audit event's `detail` that hold network traces (a resubscription keeps the
# browser that clicked).
_TRACE_KEYS = frozenset({"ip", "user_agent"})


def sees_traces(role: str) -> bool:
    """Whether `role` may see IP addresses and browsers (admins only)."""
    return role == AdminRole.ADMIN


def sees_suppressions(role: str) -> bool:
    """Whether `role` may learn that an address is on the suppression list (admins only:
    the list says who was erased, bounced or complained)."""
    return role == AdminRole.ADMIN


@dataclass(frozen=True)
class ConsentSeen:
    at: datetime
    source: str | None
    text_version: str | None
    # None for a role that does not see traces (`traces` says which case).
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class EventSeen:
    id: int
    created_at: datetime
    actor: str
    action: str
    subject: str | None
    subscriber_id: int | None
    before_status: str | None
    after_status: str | None
    ip: str | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class SubscriberSeen:
    """A subscriber's record as `role` may see it; `traces` says whether the IP and browser
    fields were shown (None then means "not recorded") or withheld."""

    traces: bool
    confirm_ip: str | None
    consent: ConsentSeen
    history: list[EventSeen]


def event_seen_by(role: str, event: AuditEvent) -> EventSeen:
    """One audit event as `role` may see it: no IP and no browser for an editor."""
    traces = sees_traces(role)
    detail = event.detail
    if detail and not traces:
        detail = {k: v for k, v in detail.items() if k not in _TRACE_KEYS} or None
    return EventSeen(
        id=event.id,
        created_at=event.created_at,
        actor=event.actor,
        action=event.action,
        subject=event.subject,
        subscriber_id=event.subscriber_id,
        before_status=event.before_status,
        after_status=event.after_status,
        ip=event.ip if traces else None,
        detail=detail,
    )


def subscriber_seen_by(role: str, sub: Subscriber, history: list[AuditEvent]) -> SubscriberSeen:
    """The proof of consent, confirmation IP and history of `sub` as `role` may see them."""
    traces = sees_traces(role)
    return SubscriberSeen(
        traces=traces,
        confirm_ip=sub.confirm_ip if traces else None,
        consent=ConsentSeen(
            at=sub.consent_at,
            source=sub.consent_source,
            text_version=sub.consent_text_version,
            ip=sub.consent_ip if traces else None,
            user_agent=sub.consent_user_agent if traces else None,
        ),
        history=[event_seen_by(role, e) for e in history],
    )
