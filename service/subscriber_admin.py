"""What the admin does to subscribers: unsubscribe, resubscribe, mark bounced and erase,
on one, on a selection, or on a pasted/uploaded list of addresses.

Every action answers per subscriber with one of four words, the same in the pages,
the API and the bulk reports: `done`, `already` (nothing to change), `unknown` (no
such subscriber), `invalid` (not an address). Every change writes an AuditEvent
naming the actor; none of them ever holds a plaintext address.
"""

from __future__ import annotations

import csv
import enum
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select, update

from .config import Settings
from .extensions import db
from .models import AuditEvent, Delivery, ImportFile, Status, Subscriber
from .subscriptions import (
    InvalidEmail,
    audit,
    mark_bounced,
    normalise_email,
    owe_confirmation,
    suppress,
    unsubscribe,
)

# A pasted or uploaded list, or an API call, names at most this many addresses.
MAX_BULK = 10_000


class Action(enum.StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    RESUBSCRIBE = "resubscribe"
    BOUNCE = "bounce"
    ERASE = "erase"


class Outcome(enum.StrEnum):
    DONE = "done"
    ALREADY = "already"
    UNKNOWN = "unknown"
    INVALID = "invalid"


class BulkError(ValueError):
    """A list that cannot be read at all (too long, not text); the message says why."""


@dataclass(frozen=True)
class Actor:
    """Who acts, from where: written into every audit event."""

    name: str
    ip: str | None


def act(
    settings: Settings,
    action: Action,
    subscriber_id: int,
    *,
    by: Actor,
    now: datetime,
    reason: str = "",
) -> Outcome:
    """Carry out one action on one subscriber, committed."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None:
        return Outcome.UNKNOWN
    if action == Action.UNSUBSCRIBE:
        changed = unsubscribe(
            subscriber_id, channel="admin", now=now, ip=by.ip, actor=by.name, reason=reason
        )
        return Outcome.DONE if changed else Outcome.ALREADY
    if action == Action.RESUBSCRIBE:
        return _resubscribe(settings, sub, by, now)
    if action == Action.BOUNCE:
        if sub.status == Status.BOUNCED:
            return Outcome.ALREADY
        detail = {"reason": reason[:200]} if reason else {}
        mark_bounced(settings, sub, now, detail=detail, actor=by.name, ip=by.ip)
        db.session.commit()
        return Outcome.DONE
    erase(settings, sub, by=by, now=now, reason=reason)
    return Outcome.DONE


def _resubscribe(settings: Settings, sub: Subscriber, by: Actor, now: datetime) -> Outcome:
    """Back to pending, never straight to active: the address must confirm again, and the
    confirmation mail is owed now (within the per-address resend limit)."""
    if sub.status in (Status.ACTIVE, Status.PENDING):
        return Outcome.ALREADY
    before = sub.status
    sub.status = Status.PENDING
    sub.optin_serial += 1
    sub.consent_at = now
    sub.consent_source = by.name
    sub.consent_text_version = settings.consent_version
    sub.consent_ip = None
    sub.consent_user_agent = None
    owe_confirmation(sub, settings, now)
    audit("resubscribe", sub, actor=by.name, now=now, before=before, ip=by.ip)
    db.session.commit()
    return Outcome.DONE


def erase(
    settings: Settings, sub: Subscriber, *, by: Actor, now: datetime, reason: str = ""
) -> None:
    """GDPR erasure: every row holding the person's data goes; an HMAC of the address stays
    on the suppression list so it is never mailed again unless it opts in anew.

    Deleted: the subscriber row (address, consent record, IPs, user agent), their delivery
    rows (SMTP answers may quote the address), and pending import files that name it. Kept,
    scrubbed: their audit events, without IP or detail, so the log still shows what
    happened to subscriber #id. The issues' counters keep their totals.
    """
    subscriber_id, email, before = sub.id, sub.email, sub.status
    suppress(settings, email, "erased", now)
    db.session.execute(delete(Delivery).where(Delivery.subscriber_id == subscriber_id))
    db.session.execute(
        update(AuditEvent)
        .where(AuditEvent.subscriber_id == subscriber_id)
        .values(ip=None, detail=None)
        .execution_options(synchronize_session=False)
    )
    needle = email.casefold()
    for upload in db.session.execute(select(ImportFile)).scalars():
        if needle in upload.content.casefold():
            db.session.delete(upload)
    db.session.delete(sub)
    db.session.add(
        AuditEvent(
            created_at=now,
            actor=by.name,
            action="erase",
            subscriber_id=subscriber_id,
            before_status=before,
            after_status=None,
            ip=by.ip,
            detail={"reason": reason[:200]} if reason else None,
        )
    )
    db.session.commit()


# ---------------------------------------------------------------- lists of addresses


def addresses_in(text: str) -> list[str]:
    """The addresses of a pasted or uploaded list: one per line, or a CSV whose header has
    an `email` column (else its first column). Blank lines and `#` comments are skipped."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        return []
    dialect = ";" if lines[0].count(";") > lines[0].count(",") else ","
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=dialect))
    header = [cell.strip().lstrip("\ufeff").casefold() for cell in rows[0]]
    column = 0
    if "email" in header:
        column = header.index("email")
        rows = rows[1:]
    found = [row[column].strip() if len(row) > column else "" for row in rows]
    if len(found) > MAX_BULK:
        raise BulkError(f"at most {MAX_BULK} addresses at a time, got {len(found)}")
    return found


@dataclass
class BulkLine:
    given: str
    outcome: Outcome
    reason: str = ""


@dataclass
class BulkReport:
    lines: list[BulkLine] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(line.outcome.value for line in self.lines)
        return {outcome.value: counted.get(outcome.value, 0) for outcome in Outcome}


def act_on_addresses(
    settings: Settings,
    action: Action,
    addresses: list[str],
    *,
    by: Actor,
    now: datetime,
    reason: str = "",
) -> BulkReport:
    """Apply one action to each address of a list; a line per address, in the list's order."""
    if len(addresses) > MAX_BULK:
        raise BulkError(f"at most {MAX_BULK} addresses at a time, got {len(addresses)}")
    report = BulkReport()
    seen: dict[str, Outcome] = {}
    for given in addresses:
        try:
            email = normalise_email(given)
        except InvalidEmail as exc:
            report.lines.append(BulkLine(given, Outcome.INVALID, exc.message("en")))
            continue
        if email in seen:
            # The same address twice in one list: the second asks for what is already done.
            outcome = Outcome.ALREADY if seen[email] != Outcome.UNKNOWN else Outcome.UNKNOWN
            report.lines.append(BulkLine(given, outcome))
            continue
        subscriber_id = db.session.execute(
            select(Subscriber.id).where(Subscriber.email == email)
        ).scalar_one_or_none()
        if subscriber_id is None:
            outcome = Outcome.UNKNOWN
        else:
            outcome = act(settings, action, subscriber_id, by=by, now=now, reason=reason)
        seen[email] = outcome
        report.lines.append(BulkLine(given, outcome))
    return report


def act_on_ids(
    settings: Settings,
    action: Action,
    ids: list[int],
    *,
    by: Actor,
    now: datetime,
    reason: str = "",
) -> Counter[str]:
    """Apply one action to a selection from the list page; counts per outcome."""
    if len(ids) > MAX_BULK:
        raise BulkError(f"at most {MAX_BULK} subscribers at a time, got {len(ids)}")
    counts: Counter[str] = Counter()
    for subscriber_id in dict.fromkeys(ids):
        counts[act(settings, action, subscriber_id, by=by, now=now, reason=reason).value] += 1
    return counts
