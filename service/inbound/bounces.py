"""Bounces: a mail server's word that one of our mails was not delivered.

**Reading.** A delivery status notification (RFC 3464, `multipart/report;
report-type=delivery-status`) is read here, field by field: each recipient's Action,
Status and Diagnostic-Code are the evidence a person checks, and Mailman's `flufl.bounce`
returns addresses only. Mails in the older, non-standard forms (Exim's "Mail delivery
failed" with X-Failed-Recipients, qmail's "Hi. This is the qmail-send program", old
Postfix, Exchange, Yahoo, Lotus…) go to `flufl.bounce`'s detectors, in its order; the
status and diagnostic then come from the lines of the text that name the address. The
heuristic detectors run only on a mail that looks like a bounce (the null envelope sender,
From MAILER-DAEMON or postmaster, X-Failed-Recipients, a bounce's subject), so a reader's
reply quoting "user unknown" is never taken for one.

**Hard or soft.** A permanent failure (5.x.x, or Action `failed` without a status) makes
the reader `bounced` and suppresses the address, except where the address is not at
fault: a full mailbox (5.2.2, or the diagnostic says quota/full), a message too large
(5.2.3, 5.3.4) and a policy refusal (5.7.x: our mail or our reputation was refused, not
the address). Those, every 4.x.x and Action `delayed` are soft: counted on the delivery;
HEBDO_SOFT_BOUNCE_LIMIT of them on the reader's last deliveries in a row (distinct issues,
no delivery without a bounce in between) make the reader bounced too.

**Whom.** Anybody can mail the bounce address, so a bounce changes somebody only when it
names a delivery in a way nobody else can: the signed VERP token of the address it was sent
to (inbound.verp), or else the returned mail's Message-ID (random, known only to the
recipient's mailbox) being that of a delivery to the very address that failed. A
Final-Recipient alone changes nobody: the bounce is recorded as unattributed, for a person.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.message import Message
from typing import Any

from flufl.bounce import _scan as flufl_scan
from sqlalchemy import delete, select, update

from service.admin.audit import Actor, audit
from service.config import Settings
from service.extensions import db, rowcount
from service.inbound.reading import Mail, bodies, text
from service.inbound.verp import BounceTarget, read_bounce_address
from service.mail.errors import mask_addresses
from service.models import (
    Delivery,
    DeliveryStatus,
    InboundMessage,
    InboundVerdict,
    Issue,
    Status,
    Subscriber,
    Suppression,
)
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.suppressions import suppress, suppression_hashes

log = logging.getLogger(__name__)

HARD = "hard"
SOFT = "soft"
# Not the address's fault: a full mailbox, a message too large.
_SOFT_STATUSES = frozenset({"5.2.2", "5.2.3", "5.3.4"})
_QUOTA = re.compile(
    r"quota|mailbox (?:is )?full|storage space|insufficient (?:system )?storage|"
    r"mailbox size limit|bo[iî]te (?:aux lettres |de r[ée]ception )?(?:est )?pleine|"
    r"espace de stockage",
    re.IGNORECASE,
)
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?<![\d.#-])([45])\d\d(?=[ -])")
_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]{3,250}>)", re.IGNORECASE | re.MULTILINE)
_ANGLED = re.compile(r"<([^<>\s]+)>")
_DAEMONS = frozenset({"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster", "mdaemon"})
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|notification|has failed)|"
    r"returned mail|mail delivery failed|failure notice|delivery problem|"
    r"non remis|non distribu|non d[ée]livr|[ée]chec de (?:la )?(?:remise|distribution)|"
    r"unzustellbar|message not delivered",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce says was not delivered."""

    recipient: str | None  # lower-cased, as the bounce wrote it
    severity: str  # HARD or SOFT
    status: str | None  # the enhanced status code, 5.1.1
    action: str  # the DSN's Action (failed, delayed), or "failed"/"delayed" from a detector
    diagnostic: str  # what the server said, addresses masked


@dataclass(frozen=True)
class Bounce:
    """What a bounce says: which detector read it, the failures, the returned Message-ID."""

    detector: str  # "dsn", or flufl.bounce's detector (flufl:exim, flufl:qmail…)
    failures: tuple[Failure, ...]
    message_id: str | None = None  # of the returned mail, with its angle brackets
    # A DSN that reports no failure (Action delivered, relayed, expanded).
    notice: bool = False


def looks_like_bounce(mail: Mail) -> str | None:
    """Why this mail may be a bounce (so the heuristic detectors may read it), or None."""
    if mail.headers("X-Failed-Recipients"):
        return "X-Failed-Recipients header"
    sender = mail.from_address or ""
    if sender.partition("@")[0] in _DAEMONS:
        return "From " + sender.partition("@")[0]
    if mail.envelope_from == "":
        return "null envelope sender"
    if _BOUNCE_SUBJECT.search(mail.subject):
        return "bounce subject"
    return None


def severity(status: str | None, action: str, diagnostic: str) -> str | None:
    """HARD, SOFT, or None when the recipient did not fail (delivered, relayed…)."""
    action = action.lower()
    if status:
        if status[0] == "2":
            return None
        if status[0] == "4" or status in _SOFT_STATUSES or status.startswith("5.7."):
            return SOFT
        return SOFT if _QUOTA.search(diagnostic) else HARD
    if action.startswith("delayed"):
        return SOFT
    if action.startswith(("failed", "error")):
        return SOFT if _QUOTA.search(diagnostic) else HARD
    return None


def _status(*texts: str) -> str | None:
    """The most specific enhanced status code in these texts (5.0.0 only when no other)."""
    found = [".".join(m.groups()) for t in texts for m in _ENHANCED.finditer(t or "")]
    specific = [s for s in found if not s.endswith(".0.0")]
    if specific or found:
        return (specific or found)[0]
    for t in texts:
        if m := _SMTP_CODE.search(t or ""):
            return f"{m.group(1)}.0.0"
    return None


def _address(value: str) -> str | None:
    """The address of a Final-Recipient / Original-Recipient (`rfc822; user@x`)."""
    value = text(value, 400)
    if ";" in value:
        value = value.split(";", 1)[1]
    found = _ANGLED.findall(value)
    value = (found[-1] if found else value).strip().lower()
    return value if "@" in value else None


def parse_bounce(mail: Mail) -> Bounce | None:
    """The bounce this mail is, or None. A DSN is read whether or not it looks like a
    bounce otherwise; the heuristic detectors only when `looks_like_bounce`."""
    dsn = _read_dsn(mail)
    if dsn is not None:
        return dsn
    if looks_like_bounce(mail) is None:
        return None
    return _detect(mail)


def _delivery_status_blocks(message: Message) -> list[Message] | None:
    """The field blocks of the first message/delivery-status part, or None without one."""
    if message.get_content_type() != "multipart/report":
        return None
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            return [b for b in payload if isinstance(b, Message)]
        blocks = []
        for chunk in re.split(r"\r?\n\s*\r?\n", str(payload or "")):
            if chunk.strip():
                blocks.append(message_from_bytes(chunk.strip().encode("utf-8", "replace")))
        return blocks
    return None


def _read_dsn(mail: Mail) -> Bounce | None:
    blocks = _delivery_status_blocks(mail.message)
    if blocks is None:
        return None
    failures = []
    reported = 0
    for block in blocks:
        final = _address(str(block.get("Original-Recipient") or block.get("Final-Recipient") or ""))
        action = text(block.get("Action"), 40).lower()
        if not action and not final:
            continue  # the per-message block (Reporting-MTA, Arrival-Date)
        reported += 1
        diagnostic = text(block.get("Diagnostic-Code"), 1000)
        diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic[:12] else diagnostic
        status = _status(text(block.get("Status"), 40))
        if status is None or status.endswith(".0.0"):
            status = _status(diagnostic) or status
        kind = severity(status, action, diagnostic)
        if kind is None:
            continue
        failures.append(
            Failure(final, kind, status, action or "failed", mask_addresses(diagnostic)[:300])
        )
    return Bounce(
        "dsn",
        tuple(failures),
        _returned_message_id(mail),
        notice=reported > 0 and not failures,
    )


def _returned_message_id(mail: Mail) -> str | None:
    """The Message-ID of the mail a bounce returns: from its message/rfc822 or
    text/rfc822-headers part, else from a `Message-ID:` line in its text (Exim, qmail and
    old Postfix quote the returned mail as text)."""
    for part in mail.message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                for key, value in inner[0].raw_items():
                    if key.lower() == "message-id" and (found := _ANGLED.search(str(value))):
                        return f"<{found.group(1)}>"
    found = _MESSAGE_ID.search(bodies(mail.message))
    return found.group(1) if found else None


def _detect(mail: Mail) -> Bounce | None:
    """flufl.bounce's detectors, in its order, the first that finds anything."""
    legacy = message_from_bytes(mail.raw)  # flufl.bounce reads compat32 messages
    body = bodies(mail.message)
    for detector in flufl_scan._DETECTORS:
        try:
            temporary, permanent = detector().process(legacy)
        except Exception as exc:  # a detector that chokes on this mail: the next may read it
            log.info("bounce detector %s failed: %s", detector.__name__, type(exc).__name__)
            continue
        if not (temporary or permanent):
            continue
        failures = []
        for address, kind in [(a, HARD) for a in permanent] + [(a, SOFT) for a in temporary]:
            recipient = address.decode("ascii", "replace").strip().lower()
            context = _context(body, recipient)
            status = _status(context)
            action = "failed" if kind == HARD else "delayed"
            found = severity(status, action, context) if status else None
            if kind == HARD and found is None:
                found = SOFT if _QUOTA.search(context) else HARD
            failures.append(
                Failure(
                    recipient or None,
                    found or kind,
                    status,
                    action,
                    mask_addresses(" ".join(context.split()))[:300],
                )
            )
        return Bounce(
            f"flufl:{detector.__name__.lower()}", tuple(failures), _returned_message_id(mail)
        )
    return None


def _context(body: str, address: str) -> str:
    """The lines of a bounce's text about one address: the first line naming it and the
    four after (Exim and qmail put the server's answer there)."""
    lines = body.splitlines()
    for index, line in enumerate(lines):
        if address and address in line.lower():
            return "\n".join(lines[index : index + 5])[:1000]
    return ""


# ---------------------------------------------------------------- acting on a bounce


@dataclass
class Decision:
    """What was made of a mail: the verdict, the rule that decided and its evidence, and
    whom it was about. Changes it made are in the session, committed with its record."""

    kind: str
    verdict: InboundVerdict
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)
    subscriber_id: int | None = None
    issue_id: int | None = None
    # Set when a reader stopped receiving mail (for the unsubscribes counter after commit).
    stopped: str | None = None


class RetryLater(RuntimeError):
    """The reader kept changing while the bounce was recorded: deliver the mail again."""


def _failure_evidence(failure: Failure) -> dict[str, Any]:
    return {
        "severity": failure.severity,
        "status": failure.status,
        "action": failure.action,
        "diagnostic": failure.diagnostic,
        "recipient": mask_addresses(failure.recipient or ""),
    }


def attribute(
    settings: Settings, mail: Mail, bounce: Bounce
) -> tuple[BounceTarget | None, Failure | None, dict[str, Any]]:
    """The delivery or confirmation a bounce is about and its failure, with how it was
    matched; (None, None, why) when nothing ties it to one."""
    worst = sorted(bounce.failures, key=lambda f: f.severity != HARD)
    for address in mail.recipients:
        target = read_bounce_address(settings, address)
        if target is not None:
            return target, worst[0], {"matched": "VERP token"}
    why = "no valid VERP token"
    if any(_verp_shaped(settings, a) for a in mail.recipients):
        why = "a VERP token whose signature does not hold"
    if bounce.message_id:
        for failure in worst:
            found = _delivery_by_message_id(failure.recipient, bounce.message_id)
            if found is not None:
                return found, failure, {"matched": "returned Message-ID of a delivery"}
        why += "; the returned Message-ID is no delivery to the failed recipient"
    else:
        why += "; no returned Message-ID"
    return None, None, {"matched": None, "why": why}


def _verp_shaped(settings: Settings, address: str) -> bool:
    if not settings.bounce_address:
        return False
    local, _, domain = settings.bounce_address.lower().rpartition("@")
    return address.startswith(f"{local}+") and address.endswith(f"@{domain}")


def _delivery_by_message_id(recipient: str | None, message_id: str) -> BounceTarget | None:
    if not recipient:
        return None
    try:
        email = normalise_email(recipient)
    except InvalidEmail:
        return None
    row = db.session.execute(
        select(Delivery.issue_id, Delivery.subscriber_id)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Subscriber.email == email, Delivery.message_id == message_id)
        .limit(1)
    ).first()
    return BounceTarget("delivery", row[1], issue_id=row[0]) if row else None


def act_on_bounce(
    settings: Settings, mail: Mail, bounce: Bounce, *, source: str, now: datetime
) -> Decision:
    """Attribute a bounce and apply it (uncommitted): hard → bounced, soft → counted."""
    evidence: dict[str, Any] = {
        "detector": bounce.detector,
        "failures": [_failure_evidence(f) for f in bounce.failures[:10]],
    }
    if bounce.notice:
        return Decision("notice", InboundVerdict.AUTO_REPLY, "dsn: no failure", evidence)
    if not bounce.failures:
        return Decision("bounce", InboundVerdict.KEPT, f"{bounce.detector}: no recipient", evidence)
    target, failure, matched = attribute(settings, mail, bounce)
    evidence |= matched
    if target is None or failure is None:
        return Decision("bounce", InboundVerdict.UNATTRIBUTED, matched["why"][:100], evidence)
    evidence["failure"] = _failure_evidence(failure)
    sub = db.session.get(Subscriber, target.subscriber_id)
    issue = db.session.get(Issue, target.issue_id) if target.issue_id is not None else None
    if sub is None:
        return Decision(
            "bounce", InboundVerdict.UNATTRIBUTED, "the subscriber no longer exists", evidence
        )
    rule = f"{bounce.detector} {failure.status or failure.action}"
    return apply_failure(
        settings, failure, sub, issue, rule=rule, evidence=evidence, source=source, now=now
    )


def apply_failure(
    settings: Settings,
    failure: Failure,
    sub: Subscriber,
    issue: Issue | None,
    *,
    rule: str,
    evidence: dict[str, Any],
    source: str,
    now: datetime,
) -> Decision:
    """A failure attributed to a reader (and the issue, when it was a delivery), applied
    uncommitted: hard → bounced, soft → counted. For a bounce mail and a provider's event."""
    decision = Decision(
        "bounce",
        InboundVerdict.SOFT_BOUNCE,
        rule,
        evidence,
        subscriber_id=sub.id,
        issue_id=issue.id if issue else None,
    )
    if failure.severity == SOFT:
        return _soft(settings, decision, sub, issue, source=source, now=now)
    return _hard(settings, decision, sub, issue, source=source, now=now, rule=rule)


def _hard(
    settings: Settings,
    decision: Decision,
    sub: Subscriber,
    issue: Issue | None,
    *,
    source: str,
    now: datetime,
    rule: str,
) -> Decision:
    """Bounced and suppressed, once: one conditional UPDATE, so copies of a bounce handled
    at once (several processes, SQLite included) change the reader once."""
    decision.rule = rule
    for _attempt in range(3):
        before = sub.status
        if before == Status.BOUNCED:
            decision.verdict = InboundVerdict.DUPLICATE
            decision.evidence["already"] = "bounced"
            return decision
        if before not in (Status.ACTIVE, Status.PENDING):
            # Unsubscribed or complained: mailed no more already, nothing to change.
            decision.verdict = InboundVerdict.DUPLICATE
            decision.evidence["already"] = before
            return decision
        changed = db.session.execute(
            update(Subscriber)
            .where(Subscriber.id == sub.id, Subscriber.status == before)
            .values(status=Status.BOUNCED, confirm_due_at=None, confirm_claimed_at=None)
            .execution_options(synchronize_session=False)
        )
        if rowcount(changed) == 1:
            break
        db.session.refresh(sub)
    else:
        raise RetryLater("the subscriber kept changing while the bounce was recorded")
    db.session.refresh(sub)
    suppress(settings, sub.email, "bounce", now)
    if issue is not None:
        db.session.execute(
            update(Issue)
            .where(Issue.id == issue.id)
            .values(hard_bounce_count=Issue.hard_bounce_count + 1)
        )
    detail = {"source": source, "rule": rule, **({"issue": issue.week} if issue else {})}
    audit("bounce", sub, actor="system", now=now, before=before, detail=detail)
    decision.verdict = InboundVerdict.BOUNCED
    decision.evidence["before"] = before
    decision.stopped = "bounce"
    return decision


def _soft(
    settings: Settings,
    decision: Decision,
    sub: Subscriber,
    issue: Issue | None,
    *,
    source: str,
    now: datetime,
) -> Decision:
    """Counted once per delivery; the limit in a row makes the reader bounced."""
    if issue is None:
        decision.evidence["counted"] = False  # a confirmation mail: nothing to count on
        return decision
    changed = db.session.execute(
        update(Delivery)
        .where(
            Delivery.issue_id == issue.id,
            Delivery.subscriber_id == sub.id,
            Delivery.soft_bounced_at.is_(None),
        )
        .values(soft_bounced_at=now)
        .execution_options(synchronize_session=False)
    )
    counted = rowcount(changed) == 1
    decision.evidence["counted"] = counted
    if counted:
        db.session.execute(
            update(Issue)
            .where(Issue.id == issue.id)
            .values(soft_bounce_count=Issue.soft_bounce_count + 1)
        )
    limit = settings.soft_bounce_limit
    last = db.session.execute(
        select(Delivery.soft_bounced_at)
        .where(Delivery.subscriber_id == sub.id, Delivery.status == DeliveryStatus.SENT)
        .order_by(Delivery.issue_id.desc())
        .limit(limit)
    ).scalars()
    streak = [at for at in last]
    decision.evidence["streak"] = sum(at is not None for at in streak)
    if len(streak) == limit and all(at is not None for at in streak):
        rule = f"{limit} soft bounces in a row"
        return _hard(settings, decision, sub, issue, source=source, now=now, rule=rule)
    return decision


# ---------------------------------------------------------------- undo


class Undo(enum.StrEnum):
    DONE = "done"
    ALREADY = "already"  # undone before
    REFUSED = "refused"  # not a bounce, or the reader's status changed since
    UNKNOWN = "unknown"


def undo_bounce(settings: Settings, inbound_id: int, *, by: Actor, now: datetime) -> Undo:
    """Take a bounce back: the reader is mailed again (back to the status before it),
    the address leaves the suppression list, the soft-bounce streak starts again; audited."""
    row = db.session.get(InboundMessage, inbound_id)
    if row is None:
        return Undo.UNKNOWN
    if row.verdict == InboundVerdict.UNDONE:
        return Undo.ALREADY
    if row.verdict != InboundVerdict.BOUNCED or row.subscriber_id is None:
        return Undo.REFUSED
    sub = db.session.get(Subscriber, row.subscriber_id)
    if sub is None or sub.status != Status.BOUNCED:
        return Undo.REFUSED
    back = str((row.evidence or {}).get("before") or Status.ACTIVE)
    if back not in (Status.ACTIVE, Status.PENDING):
        back = Status.ACTIVE
    changed = db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == sub.id, Subscriber.status == Status.BOUNCED)
        .values(status=back)
        .execution_options(synchronize_session=False)
    )
    if rowcount(changed) != 1:
        db.session.rollback()
        return Undo.REFUSED
    db.session.refresh(sub)
    db.session.execute(
        delete(Suppression).where(
            Suppression.email_hash.in_(suppression_hashes(settings, sub.email)),
            Suppression.reason == "bounce",
        )
    )
    db.session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == sub.id, Delivery.soft_bounced_at.is_not(None))
        .values(soft_bounced_at=None)
        .execution_options(synchronize_session=False)
    )
    if row.issue_id is not None:
        db.session.execute(
            update(Issue)
            .where(Issue.id == row.issue_id, Issue.hard_bounce_count > 0)
            .values(hard_bounce_count=Issue.hard_bounce_count - 1)
        )
    row.verdict = InboundVerdict.UNDONE
    row.undone_at = now
    row.undone_by = by.name[:80]
    audit(
        "bounce.undo",
        sub,
        actor=by.name,
        now=now,
        before=Status.BOUNCED,
        ip=by.ip,
        detail={"inbound": row.id, "rule": row.rule},
    )
    db.session.commit()
    return Undo.DONE
