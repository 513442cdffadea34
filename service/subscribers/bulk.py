"""What the admin does to subscribers: unsubscribe, resubscribe, mark bounced and erase,
on one, on a selection, or on a pasted/uploaded list of addresses.

Every action answers per subscriber with one word, the same in the pages, the API
and the bulk reports: `done`, `already` (nothing to change), `unknown` (no such
subscriber), `invalid` (not an address), `refused` (the action may not apply: a
subscriber who complained is never invited back). Every change writes an AuditEvent
naming the actor; none of them ever holds a plaintext address.
"""

from __future__ import annotations

import csv
import enum
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select, text, update

from service.admin.audit import Actor, audit
from service.config import Settings
from service.extensions import db
from service.models import (
    AuditEvent,
    Delivery,
    ImportFile,
    InboundMessage,
    Status,
    Subscriber,
)
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.confirmations import owe_confirmation
from service.subscribers.lifecycle import unsubscribe
from service.subscribers.suppressions import mark_bounced, suppress

log = logging.getLogger(__name__)

# A pasted or uploaded list, or an API call, names at most this many addresses.
MAX_BULK = 10_000
# The longest reason an admin may give (kept in the audit event).
REASON_MAX = 200


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
    REFUSED = "refused"


class BulkError(ValueError):
    """A list too long to act on; `count` says how many it held."""

    def __init__(self, count: int) -> None:
        super().__init__(f"at most {MAX_BULK} addresses at a time, got {count}")
        self.count = count


def act(
    settings: Settings,
    action: Action,
    subscriber_id: int,
    *,
    by: Actor,
    now: datetime,
    reason: str = "",
    forget: bool = True,
) -> Outcome:
    """Carry out one action on one subscriber, committed. `forget=False` leaves the erased
    data's copies on disk to the caller's `forget_erased()` (once for a whole list)."""
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
        detail = {"reason": reason[:REASON_MAX]} if reason else {}
        mark_bounced(settings, sub, now, detail=detail, actor=by.name, ip=by.ip)
        db.session.commit()
        return Outcome.DONE
    erase(settings, sub, by=by, now=now, reason=reason)
    if forget:
        forget_erased()
    return Outcome.DONE


def _resubscribe(settings: Settings, sub: Subscriber, by: Actor, now: datetime) -> Outcome:
    """Back to pending, never straight to active: the address must confirm again, and the
    confirmation mail is owed now (within the per-address resend limit). Never for an
    address that complained (marked the mail as spam): it may sign up again itself."""
    if sub.status in (Status.ACTIVE, Status.PENDING):
        return Outcome.ALREADY
    if sub.status == Status.COMPLAINED:
        return Outcome.REFUSED
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
    rows (SMTP answers may quote the address), and every upload waiting for its import (it
    may hold the address in any spelling; it lives a day at most and can be uploaded
    again). Kept, scrubbed: their audit events, without IP or detail, so the log still
    shows what happened to subscriber #id. The issues' counters keep their totals.
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
    db.session.execute(delete(ImportFile))
    # What came back from their mailbox (bounces, replies): the raw mail, its subject and
    # evidence go; the row saying what was done stays, about nobody.
    db.session.execute(
        update(InboundMessage)
        .where(InboundMessage.subscriber_id == subscriber_id)
        .values(raw=None, subject=None, evidence=None, subscriber_id=None)
        .execution_options(synchronize_session=False)
    )
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
            detail={"reason": reason[:REASON_MAX]} if reason else None,
        )
    )
    db.session.commit()


def forget_erased() -> None:
    """Wipe the copies an erasure leaves on disk, where the database allows it.

    SQLite runs with `secure_delete` (deleted content is overwritten with zeros), but the
    write-ahead log still holds the pages as they were before the DELETE: a TRUNCATE
    checkpoint writes them back into the database file and empties the log (≈ 8 ms, so a
    list of erasures checkpoints once, at its end). A checkpoint that readers keep from
    finishing is logged; the next one completes it. PostgreSQL keeps dead row versions
    until vacuum reuses their space, and backups keep what they hold: see docs/admin.md.
    """
    if db.engine.dialect.name != "sqlite":
        return
    busy, _log, _moved = db.session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).one()
    if busy:
        log.warning("erasure: the SQLite log could not be emptied yet (readers); it will be")


# ---------------------------------------------------------------- lists of addresses


def addresses_in(text: str) -> list[tuple[int, str]]:
    """(line number, address) of a pasted or uploaded list: one address per line, or a CSV
    whose header has an `email` column (else its first column). Blank lines and `#`
    comments are skipped; line numbers are those of the text as given."""
    numbered = [
        (n, line)
        for n, line in enumerate(text.lstrip("\ufeff").splitlines(), 1)
        if line.strip() and not line.startswith("#")
    ]
    if not numbered:
        return []
    first = numbered[0][1]
    dialect = ";" if first.count(";") > first.count(",") else ","
    header = [cell.strip().casefold() for cell in next(csv.reader([first], delimiter=dialect))]
    column = 0
    if "email" in header:
        column = header.index("email")
        numbered = numbered[1:]
    if len(numbered) > MAX_BULK:
        raise BulkError(len(numbered))
    found = []
    for n, line in numbered:
        cells = next(csv.reader([line], delimiter=dialect), [])
        found.append((n, cells[column].strip() if len(cells) > column else ""))
    return found


@dataclass
class BulkLine:
    line: int
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
    addresses: list[tuple[int, str]],
    *,
    by: Actor,
    now: datetime,
    reason: str = "",
    locale: str = "en",
) -> BulkReport:
    """Apply one action to each (line, address) of a list; a report line per address, in
    the list's order, with the validator's reason (in `locale`) for an invalid one."""
    if len(addresses) > MAX_BULK:
        raise BulkError(len(addresses))
    report = BulkReport()
    seen: dict[str, Outcome] = {}
    for line, given in addresses:
        try:
            email = normalise_email(given)
        except InvalidEmail as exc:
            report.lines.append(BulkLine(line, given, Outcome.INVALID, exc.message(locale)))
            continue
        if email in seen:
            # The same address twice in one list: the second asks for what is already done.
            outcome = Outcome.ALREADY if seen[email] != Outcome.UNKNOWN else Outcome.UNKNOWN
            report.lines.append(BulkLine(line, given, outcome))
            continue
        subscriber_id = db.session.execute(
            select(Subscriber.id).where(Subscriber.email == email)
        ).scalar_one_or_none()
        if subscriber_id is None:
            outcome = Outcome.UNKNOWN
        else:
            outcome = act(
                settings, action, subscriber_id, by=by, now=now, reason=reason, forget=False
            )
        seen[email] = outcome
        report.lines.append(BulkLine(line, given, outcome))
    if action == Action.ERASE:
        forget_erased()
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
        raise BulkError(len(ids))
    counts: Counter[str] = Counter()
    for subscriber_id in dict.fromkeys(ids):
        outcome = act(settings, action, subscriber_id, by=by, now=now, reason=reason, forget=False)
        counts[outcome.value] += 1
    if action == Action.ERASE:
        forget_erased()
    return counts
