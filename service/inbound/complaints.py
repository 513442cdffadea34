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
used (`Original-Rcpt-To`, then the reported mail's `To`), and only with the reported
mail's `Message-ID` being that of a delivery to that address: the feedback address takes
mail from anybody, and the same mailbox receives reports about the domain's other mail;
neither may unsubscribe anybody here. The issue comes from the reported `Message-ID`,
matched against that subscriber's deliveries (an indexed lookup by subscriber); when a relay
rewrote it, the last issue delivered to them is counted.
"""

from __future__ import annotations

import base64
import enum
import quopri
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update

from service.admin.audit import audit
from service.config import Settings
from service.extensions import db, rowcount
from service.inbound import reading
from service.mail.errors import mask_addresses
from service.models import Delivery, DeliveryStatus, Issue, Status, Subscriber
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.lifecycle import subscriber_for_unsubscribe
from service.subscribers.suppressions import suppress
from service.subscribers.tokens import BadToken
from service.telemetry.metrics import COMPLAINTS, UNSUBSCRIBES

# An ARF report carries the reported mail, often whole: a digest with its HTML is ~100 KB.
# The limit of every way in, as its parts and nesting are (inbound.reading).
MAX_REPORT_BYTES = reading.MAX_BYTES

# RFC 5965 feedback types that mean "I did not want this mail". `not-spam` (RFC 6430) and
# `auth-failure` (RFC 6591, an authentication report) are not complaints.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

_UNSUBSCRIBE_PATH = re.compile(r"/unsubscribe/([A-Za-z0-9_.-]{1,512})")
_ANGLED = re.compile(r"<([^<>]*)>")


class NotAReport(ValueError):
    """The message is not an ARF feedback report hebdo can read; the message says why."""


class RetryLater(RuntimeError):
    """The report could not be recorded now (the subscriber kept changing): send it again."""


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
    unsubscribe_tokens: tuple[str, ...]
    message_id: str | None
    to: str | None


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: str
    subscriber_id: int | None = None
    week: str | None = None


def _text(value: object, limit: int) -> str:
    """A header value as one bounded line (folding, CR/LF and NUL gone)."""
    return " ".join(str(value or "").replace("\x00", " ").split())[:limit]


def _fields(part: Message, received: bytes | None) -> Message:
    """The header fields a `message/feedback-report`, `message/rfc822` or
    `text/rfc822-headers` part holds.

    Python's parser reads a message/* part as a message without undoing its transfer
    encoding (RFC 2046 forbids one, some generators use base64 or quoted-printable all the
    same): such a part is decoded from `received`, its bytes as they came. A text part is
    decoded by the parser. A field block that starts with a blank line is read past it.
    """
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    payload = part.get_payload()
    if isinstance(payload, list):
        if encoding in ("base64", "quoted-printable") and received is not None:
            body = received.replace(b"\r\n", b"\n").partition(b"\n\n")[2]
            return _parse_fields(
                base64.b64decode(b"".join(body.split()))
                if encoding == "base64"
                else quopri.decodestring(body)
            )
        inner = payload[0] if payload and isinstance(payload[0], Message) else Message()
        if len(inner) == 0 and isinstance(inner.get_payload(), str):
            return _parse_fields(str(inner.get_payload()).encode("utf-8", "replace"))
        return inner
    raw_text = part.get_payload(decode=True)
    return _parse_fields(raw_text if isinstance(raw_text, bytes) else b"")


def _received_parts(raw: bytes, boundary: str | None) -> list[bytes]:
    """The parts of a multipart body as they came (headers and body), split at the boundary
    lines (RFC 2046: `--boundary` at the start of a line; the last one ends with `--`)."""
    if not boundary:
        return []
    line = re.compile(rb"^--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*\r?$", re.M)
    marks = list(line.finditer(raw))
    # Each part runs from the line after one boundary line to the line ending before the next.
    return [raw[start.end() + 1 : end.start()] for start, end in pairwise(marks)]


def _parse_fields(raw: bytes) -> Message:
    return BytesHeaderParser(policy=policy.default).parsebytes(raw.lstrip(b"\r\n"))


def parse_report(raw: bytes) -> Report:
    """Read an ARF report (RFC 5965). Raises NotAReport with the reason when it is not one."""
    try:
        # Bounded as every mail from outside is: size, MIME parts, nesting.
        message = reading.parse(raw)
    except reading.NotMail as exc:
        raise NotAReport(str(exc)) from None
    try:
        return _read(message, raw)
    except NotAReport:
        raise
    except Exception as exc:
        # Python's email package raises all sorts on broken input (IndexError on
        # `Message-ID: <`, TypeError, binascii.Error…): mail to a feedback address is
        # anybody's, so whatever it cannot read is refused like any non-report.
        raise NotAReport(f"unreadable ({type(exc).__name__})") from None


def _read(message: Message, raw: bytes) -> Report:
    assert isinstance(message, EmailMessage)
    if message.get_content_type() != "multipart/report":
        raise NotAReport(f"Content-Type is {message.get_content_type()}, not multipart/report")
    report_type = str(message.get_param("report-type", "") or "").lower()
    if report_type != "feedback-report":
        raise NotAReport(f"report-type is {report_type or 'missing'}, not feedback-report")
    fields: Message | None = None
    original: Message | None = None
    received = _received_parts(raw, message.get_boundary())
    for index, part in enumerate(message.iter_parts()):
        kind = part.get_content_type()
        as_received = received[index] if index < len(received) else None
        if kind == "message/feedback-report" and fields is None:
            fields = _fields(part, as_received)
        elif kind in ("message/rfc822", "text/rfc822-headers") and original is None:
            original = _fields(part, as_received)
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
        list_id=_angled(_first(original, "List-Id")),
        # Every List-Unsubscribe: a relay may add its own next to ours.
        unsubscribe_tokens=tuple(
            token
            for header in _raw(original, "List-Unsubscribe")
            for token in _unsubscribe_tokens(header)
        )[:4],
        message_id=_angled(_first(original, "Message-ID")),
        to=_address(_first(original, "To")),
    )


def _raw(message: Message, name: str) -> list[str]:
    """Every value of a header as it was written: the reported mail's headers are matched
    as text, and Python's structured parsing of a broken Message-ID or To would change them."""
    wanted = name.lower()
    return [str(value) for key, value in message.raw_items() if key.lower() == wanted]


def _first(message: Message, name: str) -> str | None:
    values = _raw(message, name)
    return values[0] if values else None


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


def _unsubscribe_tokens(value: object) -> list[str]:
    """The tokens of the http(s) `/unsubscribe/<token>` links in a List-Unsubscribe header."""
    tokens = []
    for url in _ANGLED.findall(_text(value, 2000)):
        parts = urlsplit(url.strip())
        if parts.scheme in ("https", "http") and (match := _UNSUBSCRIBE_PATH.search(parts.path)):
            tokens.append(match.group(1))
    return tokens


Found = tuple[Subscriber, tuple[int, str] | None]


def _find_subscriber(settings: Settings, report: Report) -> Found | Outcome:
    """The subscriber a report is about and the issue reported; or the outcome saying why
    there is none."""
    erased = False
    for token in report.unsubscribe_tokens:
        try:
            sub = subscriber_for_unsubscribe(settings, token)
        except BadToken:
            continue  # not our link (a relay's, another sender's), or a key rotated out
        if sub is None:
            erased = True
            continue
        # A Message-ID hebdo wrote that matches no delivery is another of its mails (a
        # confirmation): no issue. Another domain's means a relay rewrote it.
        ours = (report.message_id or "").endswith(f"@{settings.mail_domain}")
        return sub, _issue_of(sub.id, report.message_id, exact=ours)
    if erased:
        return Outcome(Result.UNKNOWN, "the subscriber no longer exists (erased)")
    if report.list_id != settings.list_id:
        return Outcome(
            Result.IGNORED,
            "not about this list's mail (no valid unsubscribe link, another List-Id)",
        )
    # An address alone proves nothing: anybody can mail the feedback address a report naming
    # anybody. It counts with the Message-ID of a delivery to that very address, which is
    # random and known only to its mailbox.
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
        if sub is not None and (issue := _issue_of(sub.id, report.message_id, exact=True)):
            return sub, issue
    return Outcome(
        Result.UNKNOWN,
        "no subscriber matches (no valid unsubscribe link; the address is redacted or unknown, "
        "or the Message-ID is not one hebdo sent it)",
    )


def _issue_of(subscriber_id: int, message_id: str | None, *, exact: bool) -> tuple[int, str] | None:
    """The issue whose delivery to this subscriber had this Message-ID. Unless `exact`, else
    the last issue delivered to them (a relay that rewrites Message-IDs, as Amazon SES does,
    must not leave every complaint uncounted); None for a reader never sent an issue."""
    query = (
        select(Issue.id, Issue.week)
        .join(Delivery, Delivery.issue_id == Issue.id)
        .where(Delivery.subscriber_id == subscriber_id)
    )
    if message_id:
        row = db.session.execute(
            query.where(Delivery.message_id == f"<{message_id}>").limit(1)
        ).first()
        if row or exact:
            return (row[0], row[1]) if row else None
    if exact:
        return None
    row = db.session.execute(
        query.where(Delivery.status == DeliveryStatus.SENT)
        .order_by(Delivery.sent_at.desc())
        .limit(1)
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
    found = _find_subscriber(settings, report)
    if isinstance(found, Outcome):
        db.session.rollback()
        COMPLAINTS.labels(result=found.result).inc()
        return found
    sub, issue = found
    detail = {
        "source": source,
        "feedback_type": report.feedback_type,
        "reporter": mask_addresses(report.reporter),
    }
    outcome = mark_complained(settings, sub.id, issue, actor=actor, now=now, detail=detail)
    COMPLAINTS.labels(result=outcome.result).inc()
    return outcome


def mark_complained(
    settings: Settings,
    subscriber_id: int,
    issue: tuple[int, str] | None,
    *,
    actor: str,
    now: datetime,
    detail: dict[str, Any],
) -> Outcome:
    """Mark a subscriber complained and suppress them, once, counted against `issue` (id,
    week); committed. For a feedback report and a provider's complaint event alike."""
    week = issue[1] if issue else None
    for _attempt in range(3):
        sub = db.session.get(Subscriber, subscriber_id, populate_existing=True)
        if sub is None:
            db.session.rollback()
            return Outcome(Result.UNKNOWN, "the subscriber no longer exists (erased)")
        before = sub.status
        if before == Status.COMPLAINED:
            db.session.rollback()
            return Outcome(Result.DUPLICATE, "already complained", subscriber_id, week)
        if _mark_complained(subscriber_id, before, now):
            break
        # Another report (or anything else) changed the status since it was read.
        db.session.rollback()
    else:
        raise RetryLater("the subscriber kept changing while the complaint was recorded")
    db.session.refresh(sub)
    suppress(settings, sub.email, "complaint", now)
    if issue:
        db.session.execute(
            update(Issue)
            .where(Issue.id == issue[0])
            .values(complaint_count=Issue.complaint_count + 1)
        )
    audit(
        "complaint",
        sub,
        actor=actor,
        now=now,
        before=before,
        detail={**detail, **({"issue": week} if week else {})},
    )
    db.session.commit()
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
