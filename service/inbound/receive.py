"""The one way in for every mail that comes back, and the record of what was made of it.

`receive` reads a mail (inbound.reading), decides what it is and acts, in this order:
1. an ARF feedback report → the reader complained (inbound.complaints);
2. a bounce: a DSN, or a non-standard bounce form (inbound.bounces) → bounced, soft
   bounce, or unattributed when nothing ties it to a delivery of ours;
3. an auto-reply (inbound.replies) → nothing changes, counted;
4. a mail to a reader's unsubscribe address → unsubscribed, channel `mailto`;
5. anything else that looks like a bounce → kept for a person;
6. a person's reply → forwarded to HEBDO_REPLY_TO, else kept for a person.
Bounces come before auto-replies because MTAs mark their bounces `Auto-Submitted` too.

Every mail gets one `InboundMessage` row: the verdict, the rule that decided it and its
evidence (status code, diagnostic, which header matched; addresses masked), whom and which
issue it was about, and the raw message for RAW_KEEP_DAYS. The same bytes received again
the same way (an MTA retrying after a lost answer, a maildir read twice) are a replay: the
first verdict is answered, nothing is done twice.

Every face (the `hebdo inbound ingest` pipe and maildir reader, `POST /api/v1/inbound`,
the `hebdo inbound serve` SMTP/LMTP listener) calls `receive` and answers from its
`Received`: `acted` says whether the mail has served its purpose (a maildir removes it) or
is for a person (a maildir keeps it in its kept folder).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from service.config import Settings
from service.extensions import db
from service.i18n import LOCALES
from service.inbound import bounces, complaints
from service.inbound.bounces import Decision, act_on_bounce, looks_like_bounce, parse_bounce
from service.inbound.reading import Mail, NotMail, read_mail
from service.inbound.replies import (
    act_on_unsubscribe,
    auto_reply_rule,
    unsubscribe_target,
)
from service.inbound.verp import read_bounce_address
from service.mail.errors import PermanentFailure, TransientFailure, mask_addresses
from service.mail.message import Outgoing, forward_message
from service.models import InboundMessage, InboundVerdict, Issue, Subscriber
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.telemetry.metrics import INBOUND, UNSUBSCRIBES

__all__ = ["NotMail", "Received", "RetryLater", "receive"]

log = logging.getLogger(__name__)

# How long the raw message stays for a person to read (housekeeping drops it after).
RAW_KEEP_DAYS = 30
# Verdicts after which a mail has served its purpose; the others are for a person.
ACTED = frozenset(
    {
        InboundVerdict.BOUNCED,
        InboundVerdict.SOFT_BOUNCE,
        InboundVerdict.COMPLAINED,
        InboundVerdict.UNSUBSCRIBED,
        InboundVerdict.DUPLICATE,
        InboundVerdict.AUTO_REPLY,
        InboundVerdict.FORWARDED,
        InboundVerdict.UNDONE,
    }
)
# What the ARF reader's results become.
_COMPLAINT_VERDICTS = {
    complaints.Result.COMPLAINED: InboundVerdict.COMPLAINED,
    complaints.Result.DUPLICATE: InboundVerdict.DUPLICATE,
    complaints.Result.UNKNOWN: InboundVerdict.UNATTRIBUTED,
    complaints.Result.IGNORED: InboundVerdict.KEPT,
}

Forward = Callable[[Outgoing], object]


class RetryLater(RuntimeError):
    """Nothing was recorded; deliver the mail again later (the reader kept changing, the
    reply could not be forwarded now)."""


@dataclass(frozen=True)
class Received:
    id: int
    kind: str
    verdict: str
    rule: str
    subscriber_id: int | None = None
    issue: str | None = None  # the issue's week
    replay: bool = False

    @property
    def acted(self) -> bool:
        return self.verdict in ACTED


def receive(
    settings: Settings,
    raw: bytes,
    *,
    source: str,
    now: datetime,
    envelope_from: str | None = None,
    recipients: tuple[str, ...] | list[str] = (),
    forward: Forward | None = None,
) -> Received:
    """Read, classify, act on and record one mail. Raises NotMail for bytes that are no
    mail, RetryLater (and SQLAlchemyError) when it must come again."""
    mail = read_mail(raw, envelope_from=envelope_from, envelope_recipients=recipients)
    external_id = f"sha256:{mail.digest}"
    before = earlier(source, external_id)
    if before is not None:
        return before
    try:
        decision = decide(settings, mail, source=source, now=now, forward=forward)
    except Exception:
        db.session.rollback()
        raise
    return _record(mail, decision, source=source, external_id=external_id, now=now)


def decide(
    settings: Settings, mail: Mail, *, source: str, now: datetime, forward: Forward | None
) -> Decision:
    """What the mail is, acted on (see the module's docstring for the order)."""
    message = mail.message
    if (
        message.get_content_type() == "multipart/report"
        and str(message.get_param("report-type", "") or "").lower() == "feedback-report"
    ):
        return _complaint(settings, mail, source=source, now=now)
    bounce = parse_bounce(mail)
    if bounce is not None and (bounce.failures or bounce.notice):
        try:
            return act_on_bounce(settings, mail, bounce, source=source, now=now)
        except bounces.RetryLater as exc:
            raise RetryLater(str(exc)) from None
    rule = auto_reply_rule(mail)
    if rule is not None:
        return _about_reader(
            settings, mail, Decision("auto_reply", InboundVerdict.AUTO_REPLY, rule)
        )
    target = unsubscribe_target(settings, mail)
    if target is not None:
        sub, rule = target
        if sub is None:
            return Decision("unsubscribe", InboundVerdict.KEPT, rule)
        return act_on_unsubscribe(sub, rule=rule, now=now)
    if bounce is not None or (why := looks_like_bounce(mail)) is not None:
        detector = bounce.detector if bounce is not None else "no detector"
        return Decision(
            "bounce",
            InboundVerdict.KEPT,
            f"looks like a bounce ({why if bounce is None else detector}); no failed recipient",
        )
    return _reply(settings, mail, now=now, forward=forward)


def _complaint(settings: Settings, mail: Mail, *, source: str, now: datetime) -> Decision:
    try:
        report = complaints.parse_report(mail.raw)
    except complaints.NotAReport as exc:
        return Decision("complaint", InboundVerdict.KEPT, f"unreadable report: {exc}"[:100])
    try:
        outcome = complaints.record_complaint(
            settings, report, source=source, actor="system", now=now
        )
    except complaints.RetryLater as exc:
        raise RetryLater(str(exc)) from None
    issue_id = None
    if outcome.week:
        issue_id = db.session.execute(
            select(Issue.id).where(Issue.week == outcome.week)
        ).scalar_one_or_none()
    return Decision(
        "complaint",
        _COMPLAINT_VERDICTS[outcome.result],
        f"arf {report.feedback_type}",
        {"reason": outcome.reason, "reporter": mask_addresses(report.reporter)},
        subscriber_id=outcome.subscriber_id,
        issue_id=issue_id,
    )


def receive_report(
    settings: Settings, raw: bytes, *, source: str, actor: str, now: datetime
) -> complaints.Outcome:
    """An ARF report through the complaints-only ways in (`hebdo complaints ingest`,
    POST /api/v1/complaints), recorded like any mail that came back. Raises NotAReport."""
    outcome = complaints.ingest(settings, raw, source=source, actor=actor, now=now)
    issue_id = None
    if outcome.week:
        issue_id = db.session.execute(
            select(Issue.id).where(Issue.week == outcome.week)
        ).scalar_one_or_none()
    decision = Decision(
        "complaint",
        _COMPLAINT_VERDICTS[outcome.result],
        "arf",
        {"reason": outcome.reason},
        subscriber_id=outcome.subscriber_id,
        issue_id=issue_id,
    )
    try:
        subject: str | None = read_mail(raw).subject
    except NotMail:
        subject = None
    record(decision, source=source, external_id=None, now=now, subject=subject, raw=raw)
    return outcome


def _about_reader(settings: Settings, mail: Mail, decision: Decision) -> Decision:
    """Whom a mail that changes nothing is about, for the admin page and for erasure: the
    VERP address it went to, else the subscriber its From names (which anybody can write,
    so it is shown, never acted on)."""
    for address in mail.recipients:
        target = read_bounce_address(settings, address)
        if target is not None:
            decision.subscriber_id, decision.issue_id = target.subscriber_id, target.issue_id
            if db.session.get(Subscriber, target.subscriber_id) is None:
                decision.subscriber_id = None
            if target.issue_id is not None and db.session.get(Issue, target.issue_id) is None:
                decision.issue_id = None
            decision.evidence["matched"] = "VERP token"
            return decision
    sender = mail.from_address
    if sender:
        try:
            email = normalise_email(sender)
        except InvalidEmail:
            return decision
        found = db.session.execute(
            select(Subscriber.id).where(Subscriber.email == email)
        ).scalar_one_or_none()
        if found is not None:
            decision.subscriber_id = found
            decision.evidence["matched"] = "From address"
    return decision


def _reply(settings: Settings, mail: Mail, *, now: datetime, forward: Forward | None) -> Decision:
    """A person's reply: forwarded to HEBDO_REPLY_TO, else kept."""
    decision = _about_reader(
        settings, mail, Decision("reply", InboundVerdict.KEPT, "a reply; HEBDO_REPLY_TO unset")
    )
    if not settings.reply_to or forward is None:
        return decision
    if settings.reply_to.lower() == (mail.from_address or ""):
        decision.rule = "a reply from HEBDO_REPLY_TO itself: not sent back to it"
        return decision
    with force_locale(LOCALES[0]):
        subject = _("Reply from a reader of %(site)s", site=settings.site_name)
        note = _(
            "A reader answered a mail of %(site)s. Their mail is attached, as it came; "
            "answer it to write back to them.",
            site=settings.site_name,
        )
    outgoing = forward_message(
        settings,
        to=settings.reply_to,
        subject=subject,
        note=note,
        original=mail.raw,
        reply_to=mail.from_address,
        now=now,
    )
    try:
        forward(outgoing)
    except TransientFailure as exc:
        raise RetryLater(f"the reply could not be forwarded now: {exc}") from None
    except PermanentFailure as exc:
        decision.rule = f"a reply; forwarding refused ({exc.code or 'no code'})"
        decision.evidence["forward_error"] = mask_addresses(str(exc))[:300]
        return decision
    decision.verdict = InboundVerdict.FORWARDED
    decision.rule = "a reply, forwarded to HEBDO_REPLY_TO"
    return decision


def earlier(source: str, external_id: str) -> Received | None:
    """What was made of this event or these bytes when they came this way before."""
    row = db.session.execute(
        select(InboundMessage).where(
            InboundMessage.source == source, InboundMessage.external_id == external_id
        )
    ).scalar_one_or_none()
    return _answer(row, replay=True) if row is not None else None


def _answer(row: InboundMessage, *, replay: bool = False) -> Received:
    week = None
    if row.issue_id is not None:
        week = db.session.execute(
            select(Issue.week).where(Issue.id == row.issue_id)
        ).scalar_one_or_none()
    return Received(
        id=row.id,
        kind=row.kind,
        verdict=row.verdict,
        rule=row.rule,
        subscriber_id=row.subscriber_id,
        issue=week,
        replay=replay,
    )


def record(
    decision: Decision,
    *,
    source: str,
    external_id: str | None,
    now: datetime,
    subject: str | None = None,
    raw: bytes | None = None,
) -> Received:
    """Write the decision's row and commit it with whatever the decision changed; the same
    event recorded at once by another process makes this one a replay of it."""
    row = InboundMessage(
        received_at=now,
        source=source[:32],
        external_id=external_id,
        kind=decision.kind,
        verdict=decision.verdict,
        rule=decision.rule[:100],
        evidence=decision.evidence or None,
        subscriber_id=decision.subscriber_id,
        issue_id=decision.issue_id,
        subject=mask_addresses(subject)[:200] if subject else None,
        raw=raw,
    )
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        before = earlier(source, external_id) if external_id else None
        if before is None:
            raise
        return before
    INBOUND.labels(kind=decision.kind, verdict=decision.verdict).inc()
    if decision.stopped:
        UNSUBSCRIBES.labels(channel=decision.stopped).inc()
    return _answer(row)


def _record(
    mail: Mail, decision: Decision, *, source: str, external_id: str, now: datetime
) -> Received:
    return record(
        decision,
        source=source,
        external_id=external_id,
        now=now,
        subject=mail.subject,
        raw=mail.raw,
    )


# ---------------------------------------------------------------- the ledger, read back


@dataclass(frozen=True)
class InboundFilters:
    verdict: str = ""
    kind: str = ""
    subscriber_id: int | None = None


def inbound_page(
    filters: InboundFilters, before: int | None, size: int
) -> tuple[list[InboundMessage], int | None]:
    """A page of what came back, newest first, and the `before` of the next page."""
    query = select(InboundMessage).order_by(InboundMessage.id.desc()).limit(size + 1)
    if filters.verdict:
        query = query.where(InboundMessage.verdict == filters.verdict)
    if filters.kind:
        query = query.where(InboundMessage.kind == filters.kind)
    if filters.subscriber_id is not None:
        query = query.where(InboundMessage.subscriber_id == filters.subscriber_id)
    if before:
        query = query.where(InboundMessage.id < before)
    rows = list(db.session.execute(query).scalars())
    return rows[:size], (rows[size - 1].id if len(rows) > size else None)


def verdict_counts(since: datetime) -> dict[tuple[str, str], int]:
    """How many mails of each kind got each verdict since a moment."""
    rows = db.session.execute(
        select(InboundMessage.kind, InboundMessage.verdict, func.count())
        .where(InboundMessage.received_at >= since)
        .group_by(InboundMessage.kind, InboundMessage.verdict)
    ).all()
    return {(kind, verdict): int(n) for kind, verdict, n in rows}


def purge_raw(now: datetime) -> int:
    """Drop the raw messages older than RAW_KEEP_DAYS (the rows stay, as the record)."""
    result = db.session.execute(
        update(InboundMessage)
        .where(
            InboundMessage.received_at < now - timedelta(days=RAW_KEEP_DAYS),
            InboundMessage.raw.is_not(None),
        )
        .values(raw=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def readable(row: InboundMessage, limit: int = 200_000) -> str | None:
    """The raw message as text for a page (undecodable bytes shown as replacement marks)."""
    if row.raw is None:
        return None
    return row.raw[:limit].decode("utf-8", "replace")


def summary(row: InboundMessage) -> dict[str, Any]:
    """The row as the admin page and API show it."""
    return {
        "id": row.id,
        "received_at": row.received_at,
        "source": row.source,
        "kind": row.kind,
        "verdict": row.verdict,
        "rule": row.rule,
        "evidence": row.evidence or {},
        "subscriber_id": row.subscriber_id,
        "issue_id": row.issue_id,
        "subject": row.subject,
        "raw_kept": row.raw is not None,
        "undone_at": row.undone_at,
        "undone_by": row.undone_by,
    }
