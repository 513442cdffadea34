"""The audit log: `audit` writes one event (every action of every face goes through it),
and filtered pages, newest first, and rows for a CSV export read it back.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from service.extensions import db
from service.models import AuditEvent, Subscriber

COLUMNS = (
    "id",
    "created_at",
    "actor",
    "action",
    "subject",
    "subscriber_id",
    "before_status",
    "after_status",
    "ip",
)


@dataclass(frozen=True)
class Actor:
    """Who acts, from where: written into every audit event. `name` says what kind of actor
    and which (`admin:alice`, `token:cms`, `cli:root`, `system`, `subscriber`)."""

    name: str
    ip: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        """Whoever runs a `hebdo` command: the operating-system account."""
        try:
            user = getpass.getuser()
        except (OSError, KeyError):
            user = "unknown"
        return cls(f"cli:{user}")


def audit(
    action: str,
    subscriber: Subscriber | None = None,
    *,
    actor: str,
    now: datetime,
    subject: str | None = None,
    before: str | None = None,
    ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one event to the session (the caller commits it with the change it records).
    About a subscriber: its id and status after; about anything else: `subject`."""
    db.session.add(
        AuditEvent(
            created_at=now,
            actor=actor,
            action=action,
            subject=subject,
            subscriber_id=subscriber.id if subscriber else None,
            before_status=before,
            after_status=subscriber.status if subscriber else None,
            ip=ip,
            detail=detail,
        )
    )


@dataclass(frozen=True)
class AuditFilters:
    action: str = ""
    actor: str = ""
    subscriber_id: int | None = None


def _query(filters: AuditFilters, before: int | None) -> Select[Any]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if filters.action:
        query = query.where(AuditEvent.action == filters.action[:64])
    if filters.actor:
        query = query.where(AuditEvent.actor == filters.actor[:80])
    if filters.subscriber_id is not None:
        query = query.where(AuditEvent.subscriber_id == filters.subscriber_id)
    if before:
        query = query.where(AuditEvent.id < before)
    return query


def page(
    filters: AuditFilters, before: int | None, size: int
) -> tuple[list[AuditEvent], int | None]:
    """A page of events and the `before` that fetches the next one (None at the end)."""
    rows = list(db.session.execute(_query(filters, before).limit(size + 1)).scalars())
    return rows[:size], (rows[size - 1].id if len(rows) > size else None)


def rows(filters: AuditFilters, chunk: int = 1000) -> Iterator[list[Any]]:
    """Every matching event as a row of COLUMNS, a page at a time (for the streamed CSV)."""
    before: int | None = None
    while True:
        events, before = page(filters, before, chunk)
        for event in events:
            yield [getattr(event, column) for column in COLUMNS]
        db.session.expunge_all()
        db.session.rollback()
        if before is None:
            return
