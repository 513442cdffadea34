"""The suppression list: addresses never mailed again (bounced, complained, erased), kept
as HMACs of the address under every signing key, never the address itself.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from service.admin.audit import audit
from service.config import Settings
from service.extensions import db
from service.models import Status, Subscriber, Suppression
from service.telemetry.metrics import UNSUBSCRIBES


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
