"""Feedback-loop complaints: a reader marked one of our mails as spam.

Mailbox providers that run a feedback loop (Microsoft's JMRP, Yahoo's CFL, Fastmail,
Zoho, most cable and telecom providers) send the sender an ARF report (RFC 5965): a
`multipart/report; report-type=feedback-report` mail whose parts are a note for people,
a `message/feedback-report` block of fields (`Feedback-Type: abuse`...) and the reported
mail itself, whole (`message/rfc822`) or its headers only (`text/rfc822-headers`).

A complaint must stop every mail to that reader at once, and it counts: the share of
recipients who complain is what Gmail, Yahoo and Outlook judge a list by (Gmail asks bulk
senders to stay under 0.1 % and never reach 0.3 %). So each complaint marks the
subscriber `complained`, suppresses the address, writes an audit event, and is counted
against the issue it was about (`issues.complaint_count`), from which /metrics serves
each recent issue's complaint rate.

Which subscriber: providers redact the reader's address (Yahoo, and JMRP on request),
so we do not rely on it. Every mail hebdo sends carries a signed one-click unsubscribe
link in `List-Unsubscribe`, which names the subscriber and which nobody can forge; that
is read first. Only when it is missing (a report with stripped headers) is the address
used (`Original-Rcpt-To`, then the reported mail's `To`), and only when the reported
mail carries our `List-Id`: the same feedback mailbox receives reports about the
domain's other mail, and a complaint about those must not unsubscribe anybody here.
The issue comes from the reported `Message-ID`, matched against that subscriber's
deliveries (an indexed lookup by subscriber).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update

from .audit_log import audit
from .config import Settings
from .extensions import db, rowcount
from .mailer import mask_addresses
from .metrics import COMPLAINTS, UNSUBSCRIBES
from .models import Delivery, Issue, Status, Subscriber
from .subscriptions import InvalidEmail, normalise_email, subscriber_for_unsubscribe, suppress
from .tokens import BadToken

# An ARF report carries the reported mail, often whole: a digest with its HTML is ~100 KB.
MAX_REPORT_BYTES = 2 * 1024 * 1024

# RFC 5965 feedback types that mean "I did not want this mail". `not-spam` (RFC 6430) and
# `auth-failure` (RFC 6591, an authentication report) are not complaints.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

_UNSUBSCRIBE_PATH = re.compile(r"/unsubscribe/([A-Za-z0-9_.-]{1,512})")
_ANGLED = re.compile(r"<([^<>]*)>")


class NotAReport(ValueError):
    """The message is not an ARF feedback report hebdo can read; the message says why."""


class Result(enum.StrEnum):
    COMPLAINED = "complained"  # a subscriber was marked complained and suppressed
    DUPLICATE = "duplicate"  # that subscriber had already complained: nothing changed
    UNKNOWN = "unknown"  # about our list, but no subscriber matches (erased, redacted)
    IGNORED = "ignored"  # not a complaint (not-spam...), or about another mail stream


@dataclass(frozen=True)
class Report:
    """What hebdo reads from one ARF report. No field is trusted as an address to store."""

    feedback_type: str
    # Who reported (User-Agent, else Reporting-MTA): for the audit log and people.
    reporter: str
    # Original-Rcpt-To, when the provider did not redact it.
    recipient: str | None
    # From the reported mail (message/rfc822 or text/rfc822-headers).
    list_id: str | None
    unsubscribe_token: str | None
    message_id: str | None
    to: str | None


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str
    subscriber_id: int | None = None
    week: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result.value,
            "reason": self.reason,
            "subscriber_id": self.subscriber_id,
            "issue": self.week,
        }


def _text(value: object, limit: int) -> str:
    """A header value as one bounded line (folding, CR/LF and NUL gone)."""
    return " ".join(str(value or "").replace("\x00", " ").split())[:limit]


def _header_fields(part: Message) -> Message:
    """The field block of a `message/feedback-report` or `text/rfc822-headers` part.

    Python's parser gives a message/* part as a list of one message; a text part, or a
    message/* part some generator encoded anyway, as bytes to parse as headers.
    """
    if part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        raw = str(part.get_payload()).encode("utf-8", "replace")
    return BytesHeaderParser(policy=policy.default).parsebytes(raw)


def parse_report(raw: bytes) -> Report:
    """Read an ARF report (RFC 5965). Raises NotAReport with the reason when it is not one."""
    if len(raw) > MAX_REPORT_BYTES:
        raise NotAReport(f"larger than {MAX_REPORT_BYTES} bytes")
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    if message.get_content_type() != "multipart/report":
        raise NotAReport(f"Content-Type is {message.get_content_type()}, not multipart/report")
    report_type = str(message.get_param("report-type", "") or "").lower()
    if report_type != "feedback-report":
        raise NotAReport(f"report-type is {report_type or 'missing'}, not feedback-report")
    fields: Message | None = None
    original: Message | None = None
    for part in message.iter_parts():
        kind = part.get_content_type()
        if kind == "message/feedback-report" and fields is None:
            fields = _header_fields(part)
        elif kind in ("message/rfc822", "text/rfc822-headers") and original is None:
            original = _header_fields(part)
    if fields is None:
        raise NotAReport("no message/feedback-report part")
    feedback_type = _text(fields.get("Feedback-Type"), 32).lower()
    if not feedback_type:
        raise NotAReport("the feedback report has no Feedback-Type")
    if original is None:
        raise NotAReport("the report does not include the reported mail or its headers")
    return Report(
        feedback_type=feedback_type,
        reporter=_text(fields.get("User-Agent") or fields.get("Reporting-MTA"), 100),
        recipient=_address(fields.get("Original-Rcpt-To")),
        list_id=_angled(original.get("List-Id")),
        unsubscribe_token=_unsubscribe_token(original.get("List-Unsubscribe")),
        message_id=_angled(original.get("Message-ID")),
        to=_address(original.get("To")),
    )


def _angled(value: object) -> str | None:
    """`<x>` (the last one when a header holds text around it), or the bare value."""
    text = _text(value, 1000)
    if not text:
        return None
    found = _ANGLED.findall(text)
    return (found[-1] if found else text)[:255] or None


def _address(value: object) -> str | None:
    """The address of an Original-Rcpt-To (`rfc822;user@x`) or To header, or None."""
    text = _text(value, 400)
    if not text:
        return None
    text = text.split(";", 1)[1] if text.lower().startswith("rfc822;") else text
    found = _ANGLED.findall(text)
    return (found[-1] if found else text).strip() or None


def _unsubscribe_token(value: object) -> str | None:
    """The token of our https one-click link in a List-Unsubscribe header."""
    for url in _ANGLED.findall(_text(value, 2000)):
        parts = urlsplit(url.strip())
        if parts.scheme != "https" and parts.scheme != "http":
            continue
        match = _UNSUBSCRIBE_PATH.search(parts.path)
        if match:
            return match.group(1)
    return None


def _find_subscriber(settings: Settings, report: Report) -> Subscriber | Outcome:
    """The subscriber a report is about, or the outcome saying why there is none."""
    ours = report.list_id == settings.list_id
    if report.unsubscribe_token:
        try:
            sub = subscriber_for_unsubscribe(settings, report.unsubscribe_token)
        except BadToken:
            sub = None  # not our link (another sender's), or a key rotated out
        else:
            if sub is None:
                return Outcome(Result.UNKNOWN, "the subscriber no longer exists (erased)")
            return sub
    if not ours:
        return Outcome(
            Result.IGNORED,
            "not about this list's mail (no valid unsubscribe link, another List-Id)",
        )
    for candidate in (report.recipient, report.to):
        if not candidate:
            continue
        try:
            email = normalise_email(candidate)
        except InvalidEmail:
            continue  # redacted ("xxxxxxx"), or no address at all
        sub = db.session.execute(
            select(Subscriber).where(Subscriber.email == email)
        ).scalar_one_or_none()
        if sub is not None:
            return sub
    return Outcome(
        Result.UNKNOWN, "no subscriber matches (the recipient's address is redacted or unknown)"
    )


def _issue_of(subscriber_id: int, message_id: str | None) -> tuple[int, str] | None:
    """The issue whose delivery to this subscriber had this Message-ID (None: a confirmation
    mail, or a mail sent before message ids were kept)."""
    if not message_id:
        return None
    row = db.session.execute(
        select(Issue.id, Issue.week)
        .join(Delivery, Delivery.issue_id == Issue.id)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.message_id == f"<{message_id}>")
    ).first()
    return (row[0], row[1]) if row else None


def record_complaint(
    settings: Settings, report: Report, *, source: str, actor: str, now: datetime
) -> Outcome:
    """Act on one report: mark the subscriber complained and suppress them, once.

    `source` says how the report came (`api`, `cli`) and goes to the audit event with the
    feedback type, the reporter and the issue; never an address.
    """
    if report.feedback_type not in COMPLAINT_TYPES:
        outcome = Outcome(Result.IGNORED, f"feedback type {report.feedback_type} is no complaint")
        COMPLAINTS.labels(result=outcome.result).inc()
        return outcome
    for _attempt in range(3):
        sub = _find_subscriber(settings, report)
        if isinstance(sub, Outcome):
            db.session.rollback()
            COMPLAINTS.labels(result=sub.result).inc()
            return sub
        subscriber_id, before = sub.id, sub.status
        issue = _issue_of(subscriber_id, report.message_id)
        week = issue[1] if issue else None
        if before == Status.COMPLAINED:
            db.session.rollback()
            COMPLAINTS.labels(result=Result.DUPLICATE).inc()
            return Outcome(Result.DUPLICATE, "already complained", subscriber_id, week)
        if _mark_complained(subscriber_id, before, now):
            break
        # Another report (or anything else) changed the status since it was read.
        db.session.rollback()
    else:
        raise RuntimeError("could not record the complaint: the subscriber kept changing")
    suppress(settings, sub.email, "complaint", now)
    if issue:
        db.session.execute(
            update(Issue)
            .where(Issue.id == issue[0])
            .values(complaint_count=Issue.complaint_count + 1)
        )
    detail = {
        "source": source,
        "feedback_type": report.feedback_type,
        "reporter": mask_addresses(report.reporter),
        **({"issue": week} if week else {}),
    }
    audit("complaint", sub, actor=actor, now=now, before=before, detail=detail)
    db.session.commit()
    COMPLAINTS.labels(result=Result.COMPLAINED).inc()
    if before in (Status.ACTIVE, Status.PENDING):
        UNSUBSCRIBES.labels(channel="complaint").inc()
    return Outcome(Result.COMPLAINED, "marked complained and suppressed", subscriber_id, week)


def _mark_complained(subscriber_id: int, before: str, now: datetime) -> bool:
    """Complained, if the status is still `before`: one conditional UPDATE, so copies of a
    report handled at once (several web processes, SQLite included) count once."""
    values: dict[str, Any] = {
        "status": Status.COMPLAINED,
        "confirm_due_at": None,
        "confirm_claimed_at": None,
    }
    if before in (Status.ACTIVE, Status.PENDING):
        values |= {"unsubscribed_at": now, "unsubscribe_channel": "complaint"}
    changed = db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id, Subscriber.status == before)
        .values(**values)
    )
    return rowcount(changed) == 1


def ingest(settings: Settings, raw: bytes, *, source: str, actor: str, now: datetime) -> Outcome:
    """Parse and record one report. Raises NotAReport (counted as `invalid`)."""
    try:
        report = parse_report(raw)
    except NotAReport:
        COMPLAINTS.labels(result="invalid").inc()
        raise
    return record_complaint(settings, report, source=source, actor=actor, now=now)
