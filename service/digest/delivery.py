"""The delivery ledger: start an issue's send, fan it out, send batches, record outcomes.

One `Delivery` row per (issue, subscriber), unique, is the truth of what was
sent. Celery messages carry only an issue id; a batch task *claims* up to
HEBDO_SEND_BATCH due rows in one statement (FOR UPDATE SKIP LOCKED on
PostgreSQL), sends them over one SMTP connection, and records every outcome in
one bulk update. So a duplicated task, a retry or a second `digest send` finds
nothing left to claim, and the database work per batch is a fixed handful of
statements whatever the number of subscribers.

A worker killed mid-batch leaves its rows claimed: after
HEBDO_CLAIM_TIMEOUT_SECONDS the sweep puts them back in the queue. Which of them
the dead worker's SMTP server had already accepted, the send journal says (see
journal: one write per message, no round trip): those are recorded as sent, the
others sent. So a killed process sends again at most the one message whose 250
it was holding.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from operator import attrgetter
from typing import Any

import redis
from sqlalchemy import (
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)

from service.config import Settings
from service.digest import lifecycle
from service.digest.journal import BatchJournal, Entry, Journal, send_journal
from service.digest.planning import DigestError
from service.digest.rendering import Recipient, envelope_for, mail_for, mail_template
from service.digest.send_rate import SendRate, Unlimited
from service.extensions import UTCDateTime, db, rowcount
from service.mail.errors import DeliveryError, PermanentFailure, TransientFailure
from service.mail.message import Envelope, MailTemplate, Outgoing
from service.mail.transport import Transport
from service.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueArticle,
    IssueStatus,
    Status,
    Subscriber,
)
from service.subscribers.suppressions import mark_bounced

log = logging.getLogger(__name__)

Enqueue = Callable[[int], bool]
Clock = Callable[[], datetime]

# A row whose worker was lost this many times while holding it is quarantined (failed, with
# the reason): it is the likeliest cause (a message that crashes the process building or
# sending it), and the sweep must not hand it out forever. From its first lost claim on it
# is claimed alone, so a poison message takes down no one else's batch again.
MAX_LOST_CLAIMS = 3
# A crash while building one subscriber's mail is retried this many times, then quarantined.
MAX_BUILD_FAILURES = 3
# A claim slower than this on PostgreSQL means stale planner statistics (see claim()). A
# normal claim of 100 rows takes 7-9 ms at a million deliveries (docs/scaling.md), a stale
# plan grows past 100 ms: in between, so a normal send never pays for ANALYZE.
CLAIM_SLOW_SECONDS = 0.05
# This many recipients in a row refused for a reason on our side (relay, policy, content)
# pause the issue: the rest would be refused the same way.
POLICY_BREAKER = 5
# Outcomes are written at least this often during a slow (rate-limited) batch.
FLUSH_SECONDS = 2.0
# A batch stops claiming time after this, well inside the task's soft time limit (240 s).
BATCH_SECONDS = 120.0


def backoff(attempts: int, base_seconds: int = 60) -> timedelta:
    """base, 2 × base, 4 × base … (HEBDO_RETRY_BASE_SECONDS: 1, 2, 4 … minutes), capped at
    2 hours."""
    return timedelta(seconds=min(base_seconds * 2 ** max(attempts - 1, 0), 7200))


# ---------------------------------------------------------------- starting a send


PAUSED = "paused by the reader"
NOTHING_CHOSEN = "none of the reader's categories in this issue"


def send_date(settings: Settings, now: datetime) -> date:
    """The day an issue goes out, in HEBDO_TIMEZONE: what a reader's pause is compared with."""
    return now.astimezone(settings.timezone).date()


def start_send(settings: Settings, issue_id: int, now: datetime) -> int:
    """scheduled → sending, snapshotting every active subscriber as a delivery: queued, or
    skipped at once for a reader who paused the digest.

    One transaction: either the issue is sending with all its rows, or nothing
    changed. Returns the number of recipients (paused ones included: their rows
    say they were skipped), or -1 when the issue was not scheduled (already
    started by someone else, a draft, paused…).

    A pause is decided here, not when a batch claims the row: the answer is then
    written in the same transaction that starts the send, so every worker, retry,
    sweep and resumed send sees one answer for the whole issue (a send crossing
    midnight, or paused and resumed the next day, does not change who is paused),
    and a paused reader's row never enters the queue (no claim, no batch task, no
    lock spent on it). A reader is paused while `paused_until` is later than the day
    the send starts (the day it names is their first issue again, as the preference
    page counts it); no job ends a pause: the next send simply finds the date passed.
    """
    if not lifecycle.start(issue_id, now):
        db.session.rollback()
        return -1
    paused = and_(
        Subscriber.paused_until.is_not(None),
        Subscriber.paused_until > send_date(settings, now),
    )
    rows = select(
        literal(issue_id),
        Subscriber.id,
        case(
            (paused, literal(DeliveryStatus.SKIPPED.value)),
            else_=literal(DeliveryStatus.QUEUED.value),
        ),
        literal(0),
        literal(now, UTCDateTime()),
        literal(False),
        case((paused, literal(PAUSED)), else_=None),
    ).where(Subscriber.status == Status.ACTIVE)
    db.session.execute(
        insert(Delivery).from_select(
            [
                "issue_id",
                "subscriber_id",
                "status",
                "attempts",
                "next_attempt_at",
                "uncertain",
                "last_error",
            ],
            rows,
        )
    )
    # Counted: this INSERT … SELECT reports no row count on PostgreSQL (-1).
    recipients = int(
        db.session.execute(
            select(func.count()).select_from(Delivery).where(Delivery.issue_id == issue_id)
        ).scalar_one()
    )
    db.session.execute(update(Issue).where(Issue.id == issue_id).values(recipients=recipients))
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        # The snapshot just added up to millions of rows; until autovacuum notices, the
        # planner would scan the whole table for every batch's claim and load.
        db.session.execute(text("ANALYZE deliveries"))
        db.session.commit()
    log.info("issue %s: sending to %d subscribers", issue_id, recipients)
    lifecycle.finish_if_done(issue_id, now)
    return recipients


def due_batches(settings: Settings, issue_id: int, now: datetime) -> int:
    """Batch tasks that cover every due delivery: one per suspect (claimed alone, see
    claim_rows), one per HEBDO_SEND_BATCH of the others."""
    suspect = case((Delivery.lost_claims > 0, 1), else_=0)
    suspects, due = db.session.execute(
        select(func.coalesce(func.sum(suspect), 0), func.count())
        .select_from(Delivery)
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status == DeliveryStatus.QUEUED,
            Delivery.next_attempt_at <= now,
        )
    ).one()
    return int(suspects) + math.ceil((int(due) - int(suspects)) / settings.send_batch)


def dispatch(settings: Settings, issue_id: int, now: datetime, enqueue: Enqueue) -> int:
    """Queue enough batch tasks to cover every due delivery; return how many were queued."""
    batches = due_batches(settings, issue_id, now)
    if not batches:
        return 0
    # Counted before queueing: a fast worker may finish a batch before this loop ends.
    db.session.execute(
        update(Issue)
        .where(Issue.id == issue_id)
        .values(batches_queued=Issue.batches_done + batches, progress_at=now)
    )
    db.session.commit()
    queued = sum(1 for _ in range(batches) if enqueue(issue_id))
    if queued < batches:
        log.warning(
            "issue %s: broker refused %d batch task(s); the sweep retries",
            issue_id,
            batches - queued,
        )
    return queued


# ---------------------------------------------------------------- sending one batch


def claim(settings: Settings, issue_id: int, now: datetime) -> list[int]:
    """Take up to HEBDO_SEND_BATCH due deliveries of a sending issue, atomically."""
    return [row.delivery_id for row in claim_rows(settings, issue_id, now)]


_TABLE = Delivery.__table__
_SUBSCRIBERS = Subscriber.__table__
# What sending a delivery needs of it and of its subscriber, in _row's order.
_RECIPIENT_COLUMNS = (
    _TABLE.c.id,
    _TABLE.c.attempts,
    _TABLE.c.uncertain,
    _SUBSCRIBERS.c.id,
    _SUBSCRIBERS.c.email,
    _SUBSCRIBERS.c.locale,
    _SUBSCRIBERS.c.created_at,
    _SUBSCRIBERS.c.status,
    _SUBSCRIBERS.c.categories,
)


def _recipients() -> Any:
    """Deliveries with what sending them needs of their subscriber (see _row)."""
    return select(*_RECIPIENT_COLUMNS).join(
        _SUBSCRIBERS, _SUBSCRIBERS.c.id == _TABLE.c.subscriber_id
    )


def claim_rows(settings: Settings, issue_id: int, now: datetime) -> list[_Row]:
    """Claim a batch and return what sending it needs (the recipients included).

    A due row whose worker was lost while holding it (see MAX_LOST_CLAIMS) is claimed
    alone, before any batch: if it is what kills workers, it kills only its own claim.
    """
    suspect = _claim(settings, issue_id, now, suspects=True, limit=1)
    return suspect or _claim(settings, issue_id, now, suspects=False, limit=settings.send_batch)


def _claim(
    settings: Settings, issue_id: int, now: datetime, *, suspects: bool, limit: int
) -> list[_Row]:
    sending = exists().where(Issue.id == issue_id, Issue.status == IssueStatus.SENDING)
    due = (
        Delivery.issue_id == issue_id,
        Delivery.status == DeliveryStatus.QUEUED,
        Delivery.next_attempt_at <= now,
        # ix_deliveries_suspect holds the first kind (nearly always none), ix_deliveries_queued
        # both.
        Delivery.lost_claims > 0 if suspects else Delivery.lost_claims == 0,
        sending,
    )
    taken = {"status": DeliveryStatus.SENDING, "claimed_at": now, "attempts": _TABLE.c.attempts + 1}
    if db.engine.dialect.name == "postgresql":
        # One statement, one round trip: lock the batch's rows, skipping those another
        # claimer holds (ix_deliveries_queued, partial: queued rows only, gives the id order
        # directly), take them, and return them with their recipients. A constant statement
        # (the ids are never parameters), compiled and prepared once per process.
        started = time.monotonic()
        picked = (
            select(_TABLE.c.id)
            .where(*due)
            .order_by(_TABLE.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .cte("picked")
        )
        found = db.session.execute(
            update(_TABLE)
            .where(_TABLE.c.id == picked.c.id, _SUBSCRIBERS.c.id == _TABLE.c.subscriber_id)
            .values(taken)
            .returning(*_RECIPIENT_COLUMNS)
        ).all()
        db.session.commit()
        if time.monotonic() - started > CLAIM_SLOW_SECONDS:
            _refresh_statistics()
        # RETURNING keeps no order: the batch goes out in id order, as planned.
        return sorted((_row(values, now) for values in found), key=attrgetter("delivery_id"))
    # SQLite has one writer at a time: a single UPDATE … RETURNING is atomic.
    ids = list(
        db.session.execute(
            update(Delivery)
            .values(taken)
            .where(
                Delivery.id.in_(
                    select(Delivery.id)
                    .where(*due)
                    .order_by(Delivery.id)
                    .limit(limit)
                    .scalar_subquery()
                )
            )
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )
    db.session.commit()
    if not ids:
        return []
    found = db.session.execute(
        _recipients().where(Delivery.id.in_(ids)).order_by(Delivery.id)
    ).all()
    return [_row(values, now) for values in found]


_last_analyze = 0.0


def _refresh_statistics() -> None:
    """ANALYZE deliveries when claims get slow, at most twice a minute per process.

    PostgreSQL plans the claim from statistics taken when the send started, when
    every row was queued: it then walks the primary key past every row already sent
    instead of the partial index of queued rows, and each claim costs more than the
    last. Fresh statistics switch it to the index; autovacuum would, a minute later.
    Run in its own transaction, after the claim, and never waiting long for a lock.
    """
    global _last_analyze
    if time.monotonic() - _last_analyze < 30:
        return
    _last_analyze = time.monotonic()
    try:
        db.session.execute(text("SET LOCAL lock_timeout = '1s'"))
        db.session.execute(text("ANALYZE deliveries"))
        db.session.commit()
    except Exception as exc:  # statistics are an optimisation: never fail a batch for them
        db.session.rollback()
        log.info("ANALYZE deliveries skipped: %s", type(exc).__name__)


@dataclass
class _Row:
    delivery_id: int
    attempts: int
    uncertain: bool
    recipient: Recipient
    subscriber_status: str
    # The claim this batch holds: an outcome is written only while the row still carries it.
    claimed_at: datetime
    # The reader's category choice as it is now (None or empty: every category).
    categories: list[str] | None = None


def _row(values: Any, claimed_at: datetime) -> _Row:
    """A claimed row as the claim returned it (its attempts counting this claim)."""
    d_id, attempts, uncertain, s_id, email, locale, created, status, categories = values
    return _Row(
        d_id,
        attempts,
        uncertain,
        Recipient(s_id, email, locale, created),
        status,
        claimed_at,
        categories,
    )


@dataclass
class BatchReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    retried: int = 0
    skipped: int = 0
    released: int = 0
    lost: int = 0
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    bounced_subscribers: list[tuple[int, str]] = field(default_factory=list)
    last_refusal: str = ""
    # Rows given an outcome (one each, ever), and the row whose message is on the wire.
    noted: set[int] = field(default_factory=set)
    in_flight: int | None = None
    # A message went out that the journal could not note: its outcome is written at once.
    unjournaled: bool = False

    def note(self, row: _Row, status: DeliveryStatus, *, counter: str = "", **values: Any) -> None:
        """Count and keep one row's outcome, to be written by the next flush."""
        if row.delivery_id in self.noted:
            return
        self.noted.add(row.delivery_id)
        if self.in_flight == row.delivery_id:
            self.in_flight = None
        name = counter or ("retried" if status == DeliveryStatus.QUEUED else status.value)
        setattr(self, name, getattr(self, name) + 1)
        self.outcomes.append(_outcome(row, status, **values))


def variant_of(choice: Iterable[str] | None, present: frozenset[str]) -> frozenset[str] | None:
    """A reader's category choice as the variant of an issue they get: None for the whole
    issue (no choice, or one that covers every category the issue has), else the chosen
    categories this issue has, empty when it has none of them (nothing to send).

    Normalised so that readers whose choices are equivalent for this issue (another order,
    repeats, categories it does not have) share one rendering. Anything but a list of names
    (a JSON value written by hand) counts as no choice: one odd row must not stop a batch."""
    if not choice or not isinstance(choice, list | tuple):
        return None
    chosen = present.intersection(c for c in choice if isinstance(c, str))
    return None if chosen == present else frozenset(chosen)


class Templates:
    """Rendered issues per variant (issue, locale, categories: see variant_of), kept by a
    worker process between batches: an issue is rendered once per variant its readers
    actually need, not once per reader. Least recently used variants go first when more
    than `size` are in play (still correct, only rendered again)."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._cache: OrderedDict[tuple[int, datetime, str, frozenset[str] | None], MailTemplate] = (
            OrderedDict()
        )
        self._categories: dict[tuple[int, datetime], frozenset[str]] = {}

    def categories(self, issue: Issue) -> frozenset[str]:
        """The categories the issue's articles have (read once per issue and plan)."""
        key = (issue.id, issue.planned_at)
        present = self._categories.get(key)
        if present is None:
            if len(self._categories) >= self.size:
                self._categories.pop(next(iter(self._categories)))
            present = self._categories[key] = frozenset(
                db.session.execute(
                    select(IssueArticle.category).where(IssueArticle.issue_id == issue.id)
                ).scalars()
            )
        return present

    def variant(self, issue: Issue, choice: Iterable[str] | None) -> frozenset[str] | None:
        return variant_of(choice, self.categories(issue))

    def get(
        self,
        settings: Settings,
        issue: Issue,
        locale: str,
        categories: frozenset[str] | None = None,
    ) -> MailTemplate:
        key = (issue.id, issue.planned_at, locale, categories)
        template = self._cache.get(key)
        if template is not None:
            self._cache.move_to_end(key)
            return template
        template = mail_template(settings, issue, locale, categories=categories)
        # One line per rendering: how an operator (and the worker tests) see that renders
        # follow the variants, not the readers.
        log.info(
            "issue %s: rendered the %s digest for %s",
            issue.week,
            locale,
            "every category" if categories is None else ", ".join(sorted(categories)),
        )
        if len(self._cache) >= self.size:
            self._cache.popitem(last=False)
        self._cache[key] = template
        return template


TEMPLATES = Templates()


@dataclass(frozen=True)
class Halt:
    """The rest of the batch waits `delay`; with `pause`, the issue is paused, saying why."""

    delay: timedelta
    pause: str | None = None


def send_batch(
    settings: Settings,
    issue_id: int,
    *,
    transport: Transport,
    clock: Clock,
    rate: SendRate | None = None,
    templates: Templates = TEMPLATES,
    journal: Journal | None = None,
) -> BatchReport:
    """Claim one batch of an issue's deliveries, send them, record every outcome.

    Each message the server accepts is noted in the send journal before the next one
    is sent, and its outcome reaches the database with the batch's next write.
    However it ends (the task's soft time limit, a worker shutting down, a
    database error), it writes the outcomes it has, hands back the rows it never
    tried, and flags the one that was on the wire as uncertain (retried once).
    """
    report = BatchReport()
    rate = rate or Unlimited()
    journal = journal or send_journal(settings)
    noted: BatchJournal | None = None
    started = time.monotonic()
    deadline = min(BATCH_SECONDS, settings.claim_timeout_seconds / 2)
    now = clock()
    rows: list[_Row] = []
    try:
        rows = claim_rows(settings, issue_id, now)
        report.claimed = len(rows)
        if not rows:
            return report
        noted = journal.batch(issue_id)
        _already_sent(journal, issue_id, rows, report)
        issue = get_issue_by_id(issue_id)
        broken = _render_all(settings, issue, rows, templates)
        if broken:
            lifecycle.pause(issue_id, broken)
            return report  # the rows are handed back below, untried
        last_flush = time.monotonic()
        refusals = 0
        ahead = _Ahead()
        for position, row in enumerate(rows):
            if row.delivery_id in report.noted:
                continue  # taken back by the sweep (see _renew_claims)
            now = clock()
            status: str | None = None
            stop = time.monotonic() - started > deadline
            if not stop and time.monotonic() - last_flush > FLUSH_SECONDS:
                _flush(settings, issue_id, report, now, renew=rows[position:], journal=noted)
                last_flush = time.monotonic()
                if row.delivery_id in report.noted:
                    continue  # this very row was taken back by the sweep meanwhile
                status = _issue_status(issue_id)
                stop = status != IssueStatus.SENDING
            if stop:
                if status is None:
                    status = _issue_status(issue_id)
                _hand_back(report, status, rows[position:], now)
                break
            if row.subscriber_status != Status.ACTIVE:
                report.note(row, DeliveryStatus.SKIPPED, error="no longer subscribed")
                continue
            variant = templates.variant(issue, row.categories)
            if variant == frozenset():
                # Never an empty digest: this week has nothing of what the reader chose.
                report.note(row, DeliveryStatus.SKIPPED, error=NOTHING_CHOSEN)
                continue
            wait = rate.reserve()
            if wait > deadline / 2:
                # A slot this far ahead would hold the claims too long: let others take them.
                _release(report, rows[position:], now + timedelta(seconds=wait))
                break
            if wait > 0:
                time.sleep(wait)
            following = rows[position + 1] if position + 1 < len(rows) else None
            halt, refused = _send_one(
                settings,
                issue,
                row,
                transport,
                templates,
                report,
                clock(),
                noted,
                variant,
                ahead.take(row.delivery_id),
                ahead.envelope(settings, issue, following, templates),
                partial(ahead.build, settings, issue, templates, clock),
            )
            if report.unjournaled:
                # Not in the journal: in the database before anything else is sent.
                _flush(settings, issue_id, report, clock(), journal=noted)
                report.unjournaled = False
            refusals = refusals + 1 if refused else 0
            if refusals >= POLICY_BREAKER and halt is None:
                halt = Halt(
                    backoff(1, settings.retry_base_seconds),
                    f"{refusals} recipients in a row refused for a reason on our side "
                    f"(last: {report.last_refusal}); fix the SMTP settings or the sending "
                    "domain, then `hebdo digest resume`",
                )
            if halt is not None:
                if halt.pause:
                    lifecycle.pause(issue_id, halt.pause)
                _release(report, rows[position + 1 :], now + halt.delay)
                break
    finally:
        _close_out(report, rows, clock(), settings.retry_base_seconds)
        try:
            _flush_for_sure(settings, issue_id, report, clock(), noted)
        finally:
            if noted is not None:
                # Outcomes unwritten (the database stayed away): the entries stay for the sweep.
                noted.close(recorded=not report.outcomes)
    _finish_if_done(journal, issue_id, clock())
    return report


def _finish_if_done(journal: Journal, issue_id: int, now: datetime) -> bool:
    """Mark the issue sent once nothing is left to send, and drop its journal: an entry
    left by a worker killed between its batch's write and the entries' removal names a
    row the database already has, and would otherwise wait for its key to expire."""
    if not lifecycle.finish_if_done(issue_id, now):
        return False
    try:
        journal.drop(issue_id)
    except (redis.RedisError, OSError) as exc:  # entries expire anyway
        log.info("issue %s: send journal not dropped (%s)", issue_id, exc)
    return True


def _already_sent(journal: Journal, issue_id: int, rows: list[_Row], report: BatchReport) -> None:
    """Rows flagged uncertain (a lost worker or a cut send had them) that the journal says
    went out: recorded as sent, with what the worker saw, and not sent again."""
    suspects = [row.delivery_id for row in rows if row.uncertain]
    if not suspects or not journal.enabled:
        return
    # Unreadable: the rows go out again, as they would without a journal.
    found = _read_journal(journal, issue_id, suspects) or {}
    for row in rows:
        if entry := found.get(row.delivery_id):
            report.note(
                row,
                DeliveryStatus.SENT,
                # The claim that found it sent was no attempt.
                attempts=row.attempts - 1,
                sent_at=entry.sent_at,
                smtp_response=entry.reply,
                message_id=entry.message_id,
            )


def _read_journal(
    journal: Journal, issue_id: int, delivery_ids: list[int]
) -> dict[int, Entry] | None:
    """The journal's entries for these rows; None when it cannot be read."""
    try:
        return journal.read(issue_id, delivery_ids)
    except (redis.RedisError, OSError) as exc:
        log.warning("issue %s: the send journal cannot be read (%s)", issue_id, exc)
        return None


def _close_out(
    report: BatchReport, rows: list[_Row], now: datetime, retry_base_seconds: int
) -> None:
    """Every claimed row leaves the batch with an outcome: the one on the wire when the
    batch was cut may have gone out (retried once, flagged), the others were never tried."""
    for row in rows:
        if row.delivery_id in report.noted:
            continue
        if row.delivery_id == report.in_flight:
            report.note(
                row,
                DeliveryStatus.QUEUED,
                counter="released",
                uncertain=True,
                error="interrupted while sending (time limit, shutdown or error)",
                next_attempt_at=now + backoff(1, retry_base_seconds),
            )
        else:
            _release(report, [row], now)


def _render_all(
    settings: Settings, issue: Issue, rows: list[_Row], templates: Templates
) -> str | None:
    """Render the issue for every variant of the batch (locale, categories); the reason when
    it cannot be."""
    try:
        variants = {
            (row.recipient.locale, templates.variant(issue, row.categories)) for row in rows
        }
        for locale, categories in sorted(variants, key=lambda v: (v[0], sorted(v[1] or ()))):
            if categories != frozenset():
                templates.get(settings, issue, locale, categories)
    except Exception as exc:  # a broken issue must stop the send, not fail every reader
        log.exception("issue %s cannot be rendered; pausing it", issue.week)
        return f"the issue cannot be rendered ({type(exc).__name__}: {exc}); fix it and resume"
    return None


def _hand_back(report: BatchReport, status: str | None, rows: list[_Row], now: datetime) -> None:
    """The batch stops early (its time is up, or the issue was paused or cancelled under it):
    skip the rest of a cancelled issue, give the rest back otherwise."""
    if status == IssueStatus.CANCELLED:
        for row in rows:
            report.note(row, DeliveryStatus.SKIPPED, error="issue cancelled")
    else:
        _release(report, rows, now)


def get_issue_by_id(issue_id: int) -> Issue:
    issue = db.session.get(Issue, issue_id)
    if issue is None:
        raise DigestError(f"no issue with id {issue_id}")
    return issue


def _issue_status(issue_id: int) -> str | None:
    return db.session.execute(select(Issue.status).where(Issue.id == issue_id)).scalar()


def _outcome(
    row: _Row,
    status: DeliveryStatus,
    *,
    error: str | None = None,
    attempts: int | None = None,
    uncertain: bool | None = None,
    next_attempt_at: datetime | None = None,
    sent_at: datetime | None = None,
    smtp_response: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """One row's parameters for `_RECORD` (None keeps the column as it is, see there)."""
    return {
        "b_id": row.delivery_id,
        "b_claimed": row.claimed_at,
        "b_status": status.value,
        "b_attempts": row.attempts if attempts is None else attempts,
        "b_uncertain": row.uncertain if uncertain is None else uncertain,
        "b_next": next_attempt_at,
        "b_error": error[:512] if error else None,
        "b_response": smtp_response[:512] if smtp_response else None,
        "b_message_id": message_id,
        "b_sent_at": sent_at,
    }


# SQLite: one row's outcome (see _record), the same statement for every row, so a column
# that an outcome does not set is passed as NULL and kept.
_RECORD = (
    update(_TABLE)
    .where(
        _TABLE.c.id == bindparam("b_id"),
        # Still this batch's claim: if the sweep took the row back (a batch slower than the
        # claim timeout), whoever holds it now records its outcome, not us.
        _TABLE.c.status == DeliveryStatus.SENDING.value,
        _TABLE.c.claimed_at == bindparam("b_claimed", type_=UTCDateTime()),
    )
    .values(
        status=bindparam("b_status"),
        claimed_at=None,
        attempts=bindparam("b_attempts"),
        uncertain=bindparam("b_uncertain"),
        next_attempt_at=func.coalesce(
            bindparam("b_next", type_=UTCDateTime()), _TABLE.c.next_attempt_at
        ),
        last_error=func.coalesce(bindparam("b_error", type_=String()), _TABLE.c.last_error),
        smtp_response=func.coalesce(
            bindparam("b_response", type_=String()), _TABLE.c.smtp_response
        ),
        message_id=func.coalesce(bindparam("b_message_id", type_=String()), _TABLE.c.message_id),
        sent_at=func.coalesce(bindparam("b_sent_at", type_=UTCDateTime()), _TABLE.c.sent_at),
    )
)


def _build(
    settings: Settings,
    issue: Issue,
    row: _Row,
    templates: Templates,
    now: datetime,
    variant: frozenset[str] | None,
    envelope: Envelope | None = None,
) -> Outgoing:
    template = templates.get(settings, issue, row.recipient.locale, variant)
    return mail_for(settings, template, row.recipient, now, issue.id, envelope)


class _Ahead:
    """The next reader's copy, prepared while the server reads the current one: its
    envelope first (cheap: the transport announces it behind the current message's
    final dot), then the copy itself (the transport's `meanwhile`). A message's build
    and the server's work on the previous one overlap instead of following each other,
    and a message costs one round trip instead of two. Only a finished build is kept;
    one that fails is dropped, and the row is built again in its turn, where its failure
    is handled as always. The journal keeps its order: a message's text goes only after
    the previous message's entry."""

    __slots__ = ("_envelope", "_row", "_variant", "delivery_id", "mail")

    def __init__(self) -> None:
        self.delivery_id: int | None = None
        self.mail: Outgoing | None = None
        self._row: _Row | None = None
        self._variant: frozenset[str] | None = None
        self._envelope: Envelope | None = None

    def envelope(
        self, settings: Settings, issue: Issue, row: _Row | None, templates: Templates
    ) -> Envelope | None:
        """The envelope `row`'s copy will have, the row kept for `build`; None when it
        will not be sent (the loop's own tests, read ahead)."""
        self._row = None
        if row is None or row.subscriber_status != Status.ACTIVE:
            return None
        variant = templates.variant(issue, row.categories)
        if variant == frozenset():
            return None
        try:
            envelope = envelope_for(settings, row.recipient, issue.id)
        except Exception:  # its own turn says why
            return None
        self._row, self._variant, self._envelope = row, variant, envelope
        return envelope

    def build(self, settings: Settings, issue: Issue, templates: Templates, clock: Clock) -> None:
        """Build the copy of the row `envelope` kept."""
        self.delivery_id, self.mail = None, None
        row = self._row
        if row is None:
            return
        try:
            self.mail = _build(
                settings, issue, row, templates, clock(), self._variant, self._envelope
            )
        except Exception:  # built again in its turn, where a failure is handled
            return
        self.delivery_id = row.delivery_id

    def take(self, delivery_id: int) -> Outgoing | None:
        """The copy built for this delivery, if the last build was for it."""
        mail = self.mail if self.delivery_id == delivery_id else None
        self.delivery_id, self.mail = None, None
        return mail


def _send_one(
    settings: Settings,
    issue: Issue,
    row: _Row,
    transport: Transport,
    templates: Templates,
    report: BatchReport,
    now: datetime,
    journal: BatchJournal,
    variant: frozenset[str] | None,
    built: Outgoing | None = None,
    following: Envelope | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> tuple[Halt | None, bool]:
    """Send one delivery and note its outcome (in the journal too, when it went out).
    `built` is its copy when built ahead; `following` is the next copy's envelope, and
    `meanwhile` runs while the server reads this one (see _Ahead).

    Returns a Halt when the rest of the batch must wait, and whether the server
    refused this recipient for a reason on our side (see PermanentFailure.kind).
    """
    try:
        mail = built or _build(settings, issue, row, templates, now, variant)
    except PermanentFailure as exc:
        report.note(row, DeliveryStatus.FAILED, error=str(exc))
        return None, False
    except Exception as exc:  # a poison subscriber must not stop the others
        log.exception("issue %s: building delivery %s failed", issue.week, row.delivery_id)
        error = f"could not build the message: {type(exc).__name__}: {exc}"
        if row.attempts >= MAX_BUILD_FAILURES:
            report.note(row, DeliveryStatus.FAILED, error=error)
        else:
            report.note(
                row,
                DeliveryStatus.QUEUED,
                error=error,
                next_attempt_at=now + backoff(row.attempts, settings.retry_base_seconds),
            )
        return None, False
    report.in_flight = row.delivery_id
    try:
        reply = transport.send(mail, following=following, meanwhile=meanwhile)
    except PermanentFailure as exc:
        if exc.kind == "mailbox":
            report.note(row, DeliveryStatus.BOUNCED, error=str(exc), smtp_response=str(exc))
            report.bounced_subscribers.append((row.recipient.subscriber_id, str(exc.code)))
            return None, False
        if exc.kind == "message":
            report.note(row, DeliveryStatus.FAILED, error=str(exc), smtp_response=str(exc))
            return None, False
        # Refused for a reason on our side: retry later, as for a temporary failure.
        report.last_refusal = str(exc)[:200]
        return _retry_later(settings, issue, row, exc, report, now), True
    except TransientFailure as exc:
        return _retry_later(settings, issue, row, exc, report, now), False
    if not journal.sent(row.delivery_id, Entry(now, mail.message_id, reply)):
        report.unjournaled = True
    report.note(
        row, DeliveryStatus.SENT, sent_at=now, smtp_response=reply, message_id=mail.message_id
    )
    return None, False


def _retry_later(
    settings: Settings,
    issue: Issue,
    row: _Row,
    exc: DeliveryError,
    report: BatchReport,
    now: datetime,
) -> Halt | None:
    retry_after = exc.retry_after if isinstance(exc, TransientFailure) else None
    uncertain = isinstance(exc, TransientFailure) and exc.uncertain
    # The server is closing or unreachable: not this recipient's doing, so it is not
    # charged an attempt, and the rest of the batch waits too.
    server_wide = exc.code == 421 or exc.stage == "connect"
    attempts = row.attempts - 1 if server_wide else row.attempts
    delay = max(
        timedelta(seconds=retry_after or 0), backoff(max(attempts, 1), settings.retry_base_seconds)
    )
    give_up = (issue.started_at or now) + timedelta(hours=settings.send_give_up_hours)
    if uncertain and row.uncertain:
        report.note(row, DeliveryStatus.FAILED, error=f"lost after DATA twice: {exc}")
    elif now + delay > give_up:
        report.note(row, DeliveryStatus.FAILED, error=f"gave up after {row.attempts} tries: {exc}")
    else:
        report.note(
            row,
            DeliveryStatus.QUEUED,
            error=str(exc),
            attempts=attempts,
            next_attempt_at=now + delay,
            uncertain=row.uncertain or uncertain,
        )
    return Halt(delay) if server_wide else None


def _release(report: BatchReport, rows: list[_Row], when: datetime) -> None:
    """Give claimed rows back, untried: they were not attempted, so the claim is not counted."""
    for row in rows:
        report.note(
            row,
            DeliveryStatus.QUEUED,
            counter="released",
            attempts=row.attempts - 1,
            next_attempt_at=when,
        )


def _flush(
    settings: Settings,
    issue_id: int,
    report: BatchReport,
    now: datetime,
    *,
    done: bool = False,
    renew: list[_Row] | None = None,
    journal: BatchJournal | None = None,
) -> None:
    """Write the outcomes noted so far, counters in the same transaction; renew the claim
    on the rows still to send, so the sweep never takes back a batch that is alive; then
    let the journal drop what the database now has."""
    if not report.outcomes and not done and not renew:
        return
    journaled = [o["b_id"] for o in report.outcomes if o["b_status"] == DeliveryStatus.SENT.value]
    written = _record(report.outcomes) if report.outcomes else Counter[str]()
    for subscriber_id, code in report.bounced_subscribers:
        _bounce_subscriber(settings, subscriber_id, code, issue_id, now)
    if renew:
        _renew_claims(report, [r for r in renew if r.delivery_id not in report.noted], now)
    db.session.execute(
        update(Issue)
        .where(Issue.id == issue_id)
        .values(
            sent_count=Issue.sent_count + written["sent"],
            failed_count=Issue.failed_count + written["failed"],
            bounced_count=Issue.bounced_count + written["bounced"],
            batches_done=Issue.batches_done + (1 if done else 0),
            progress_at=now,
        )
    )
    db.session.commit()
    report.outcomes = []
    report.bounced_subscribers = []
    if journal is not None:
        journal.recorded(journaled)


def _renew_claims(report: BatchReport, rows: list[_Row], now: datetime) -> None:
    if not rows:
        return
    renewed = set(
        db.session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_([r.delivery_id for r in rows]),
                Delivery.status == DeliveryStatus.SENDING,
                Delivery.claimed_at == rows[0].claimed_at,
            )
            .values(claimed_at=now)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )
    for row in rows:
        if row.delivery_id in renewed:
            row.claimed_at = now
        else:
            # Taken back by the sweep meanwhile: someone else sends it now, not this batch.
            report.noted.add(row.delivery_id)
            report.lost += 1


# PostgreSQL: the whole batch in one statement (a constant one, prepared once; 3× cheaper
# than 100 pipelined UPDATEs), its outcomes passed as one JSON document: encoding it is one
# call into the json module's C encoder, where ten arrays were dumped element by element by
# the driver's Python code (a twentieth of a worker's CPU during a send).
_RECORD_JSON = text(
    """
    UPDATE deliveries AS d SET
        status = o.b_status,
        claimed_at = NULL,
        attempts = o.b_attempts,
        uncertain = o.b_uncertain,
        next_attempt_at = COALESCE(o.b_next, d.next_attempt_at),
        last_error = COALESCE(o.b_error, d.last_error),
        smtp_response = COALESCE(o.b_response, d.smtp_response),
        message_id = COALESCE(o.b_message_id, d.message_id),
        sent_at = COALESCE(o.b_sent_at, d.sent_at)
    FROM json_to_recordset(CAST(:outcomes AS json)) AS o(
        b_id integer, b_claimed timestamptz, b_status text, b_attempts integer,
        b_uncertain boolean, b_next timestamptz, b_error text, b_response text,
        b_message_id text, b_sent_at timestamptz
    )
    WHERE d.id = o.b_id AND d.status = 'sending' AND d.claimed_at = o.b_claimed
    RETURNING o.b_status
    """
)


def _json_time(value: object) -> str:
    """A timestamp for _RECORD_JSON, to the microsecond (a claim is compared for equality),
    aware as UTCDateTime wants every time written."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.isoformat()
    raise TypeError(f"not an aware datetime: {value!r}")


def _record(outcomes: list[dict[str, Any]]) -> Counter[str]:
    """Write a batch's outcomes, only for rows still under this batch's claim, a NULL
    keeping a column as it is: `_RECORD_JSON` on PostgreSQL, `_RECORD` elsewhere.
    Returns the statuses actually written (the issue's counters count those only)."""
    if db.engine.dialect.name != "postgresql":
        written: Counter[str] = Counter()
        for outcome in outcomes:  # SQLite runs in process: one statement per row is cheap
            if rowcount(db.session.execute(_RECORD, outcome)):
                written[outcome["b_status"]] += 1
        return written
    document = json.dumps(outcomes, default=_json_time, separators=(",", ":"))
    return Counter(db.session.execute(_RECORD_JSON, {"outcomes": document}).scalars())


def _flush_for_sure(
    settings: Settings,
    issue_id: int,
    report: BatchReport,
    now: datetime,
    journal: BatchJournal | None = None,
) -> None:
    """The batch's last write, retried for up to a quarter of the claim timeout (a database
    failover): losing it would leave these outcomes to the journal and the sweep."""
    give_up = time.monotonic() + max(settings.claim_timeout_seconds / 4, 5)
    pause = 0.5
    while True:
        try:
            _flush(settings, issue_id, report, now, done=True, journal=journal)
            return
        except Exception:
            try:
                db.session.rollback()
            except Exception:  # the connection itself is broken: start a new session
                db.session.close()
            if time.monotonic() + pause > give_up:
                log.exception(
                    "issue %s: outcomes of deliveries %s could not be written; "
                    "the sweep takes them back (those the journal names as sent are not "
                    "sent again)",
                    issue_id,
                    [o["b_id"] for o in report.outcomes],
                )
                raise
            time.sleep(pause)
            pause = min(pause * 2, 8)


def _bounce_subscriber(
    settings: Settings, subscriber_id: int, code: str, issue_id: int, now: datetime
) -> None:
    """A 5xx on RCPT: the address does not exist; never mail it again."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None or sub.status != Status.ACTIVE:
        return
    mark_bounced(settings, sub, now, detail={"code": code, "issue_id": issue_id})


# ---------------------------------------------------------------- sweep


def _recover_sent(journal: Journal, issue_id: int, abandoned: Any) -> bool:
    """Record as sent the abandoned rows the journal names (their worker died before its
    next write); False when the journal cannot be read (nothing is taken back then)."""
    if not journal.enabled:
        return True
    ids = list(db.session.execute(select(Delivery.id).where(abandoned)).scalars())
    if not ids:
        return True
    found = _read_journal(journal, issue_id, ids)
    if found is None:
        db.session.rollback()
        return False
    recovered = 0
    for delivery_id, entry in found.items():
        recovered += rowcount(
            db.session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.SENDING)
                .values(
                    status=DeliveryStatus.SENT,
                    claimed_at=None,
                    sent_at=entry.sent_at,
                    message_id=entry.message_id,
                    smtp_response=entry.reply[:512],
                )
                .execution_options(synchronize_session=False)
            )
        )
    if recovered:
        db.session.execute(
            update(Issue)
            .where(Issue.id == issue_id)
            .values(sent_count=Issue.sent_count + recovered)
        )
    db.session.commit()
    if recovered:
        log.warning(
            "issue %s: %d deliveries of a lost worker had gone out (send journal): "
            "recorded as sent, not sent again",
            issue_id,
            recovered,
        )
    try:
        journal.forget(issue_id, found)
    except (redis.RedisError, OSError) as exc:  # entries expire anyway
        log.info("issue %s: journal entries not dropped (%s)", issue_id, exc)
    return True


def sweep(settings: Settings, now: datetime, enqueue: Enqueue) -> int:
    """Keep every issue in flight moving: take back claims abandoned by a lost worker
    (sending and paused issues requeue them, cancelled ones skip them), re-dispatch due
    rows whose tasks are gone or done, and mark finished issues sent. Returns tasks queued."""
    stale = now - timedelta(seconds=settings.claim_timeout_seconds)
    queued = 0
    journal = send_journal(settings)
    open_rows = exists().where(Delivery.issue_id == Issue.id, Delivery.status.in_(lifecycle.OPEN))
    in_flight = db.session.execute(
        select(Issue.id, Issue.status).where(
            or_(
                Issue.status.in_((IssueStatus.SENDING, IssueStatus.PAUSED)),
                and_(Issue.status == IssueStatus.CANCELLED, open_rows),
            )
        )
    ).all()
    for issue_id, status in in_flight:
        abandoned = and_(
            Delivery.issue_id == issue_id,
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.claimed_at < stale,
        )
        if not _recover_sent(journal, issue_id, abandoned):
            continue  # the journal is away: the rows wait for it rather than go out twice
        if status == IssueStatus.CANCELLED:
            db.session.execute(
                update(Delivery)
                .where(
                    Delivery.issue_id == issue_id,
                    or_(Delivery.status == DeliveryStatus.QUEUED, abandoned),
                )
                .values(
                    status=DeliveryStatus.SKIPPED, claimed_at=None, last_error="issue cancelled"
                )
            )
            db.session.commit()
            continue
        given_up = db.session.execute(
            update(Delivery)
            .where(abandoned, Delivery.lost_claims >= MAX_LOST_CLAIMS - 1)
            .values(
                status=DeliveryStatus.FAILED,
                claimed_at=None,
                lost_claims=Delivery.lost_claims + 1,
                last_error=(
                    f"quarantined: its worker was lost {MAX_LOST_CLAIMS} times while sending it "
                    "(the last times alone: a crash building or sending this very message, "
                    "or workers killed); see the worker logs"
                ),
            )
        )
        requeued = db.session.execute(
            update(Delivery)
            .where(abandoned)
            .values(
                status=DeliveryStatus.QUEUED,
                claimed_at=None,
                next_attempt_at=now,
                # May have gone out before the worker died: one more try at most.
                uncertain=True,
                lost_claims=Delivery.lost_claims + 1,
                last_error="claim expired: the worker was lost mid-batch",
            )
        )
        # Deliveries first, then the issue: the order a batch's flush takes its locks in.
        if rowcount(given_up):
            db.session.execute(
                update(Issue)
                .where(Issue.id == issue_id)
                .values(failed_count=Issue.failed_count + rowcount(given_up))
            )
        db.session.commit()
        if rowcount(requeued):
            log.warning(
                "issue %s: %d deliveries abandoned by a lost worker, requeued",
                issue_id,
                rowcount(requeued),
            )
        if status != IssueStatus.SENDING or _finish_if_done(journal, issue_id, now):
            continue
        issue = get_issue_by_id(issue_id)
        outstanding = issue.batches_queued - issue.batches_done
        stalled = issue.progress_at is None or issue.progress_at < stale
        if outstanding <= 0 or stalled:
            queued += dispatch(settings, issue_id, now, enqueue)
    return queued
