"""What readers' mailboxes send back that is no bounce: auto-replies, mailto
unsubscriptions, and replies written by a person.

**Auto-replies** (out of office, vacation, challenge-response) change nothing and are only
counted: the markers of RFC 3834 and of the common responders (Auto-Submitted other than
`no`, X-Autoreply, X-Autorespond, Precedence auto_reply or junk, the challenge-response
services' headers), else a subject that says so in French or English. A subject counts
only when it starts with the responder's words ("Réponse automatique :", "Absent du
bureau", "Out of Office:", "En congés"…) or holds one that no reader writes by hand
("réponse automatique", "out of office"): a reader's "Re: Hebdo : vos idées de vacances"
is a reply.

**A mailto unsubscription** is a mail to the reader's own `unsubscribe+<token>@` address
(inbound.verp) whose signature holds: that reader is unsubscribed, channel `mailto`, at
once. Mail to the bare unsubscribe address (the shared one of mails sent before the
per-reader address) names nobody but by its From, which anybody can write: it is kept for
a person.

**A reply** goes to HEBDO_REPLY_TO when it is set, as an attachment of a mail hebdo writes
(its own From, a fixed subject: no reader's text in a header), else it is kept for a person.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select, update

from service.config import Settings
from service.extensions import db
from service.inbound.bounces import Decision
from service.inbound.reading import Mail
from service.inbound.verp import unsubscribe_signed, unsubscribe_subscriber_id
from service.models import Delivery, DeliveryStatus, InboundVerdict, Issue, Subscriber
from service.subscribers.lifecycle import unsubscribe

# Headers set by the challenge-response services and by mail hebdo forwarded itself.
_CHALLENGE_HEADERS = (
    "X-Challenge",
    "X-Challenge-Response",
    "X-Boxbe-Challenge",
    "X-Spamarrest-Challenge",
    "X-Spam-Arrest",
    "X-Mailbox-Challenge",
    "X-Bluebottle-Request",
    "X-Cr-Hashedpuzzle",
)
FORWARD_MARK = "X-Hebdo-Forwarded"
_REPLY_PREFIX = re.compile(r"^(?:\s*(?:re|aw|tr|fwd?|réf)\s*:\s*)+", re.IGNORECASE)
# Words a responder starts its subject with.
_START = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response|answer)|autoreply|out of (?:the )?office|"
    r"away|on vacation|vacation|holiday|ooo\b|i am away|i'm away|absent|absence|"
    r"en cong[ée]s?|en vacances|r[ée]ponse automatique|r[ée]ponse auto\b|r[ée]pondeur|"
    r"message automatique|indisponible|hors du bureau|"
    r"please confirm your (?:message|e-?mail)|verify your (?:message|e-?mail)|"
    r"veuillez confirmer votre (?:message|e-?mail)|confirmation (?:required|requise))",
    re.IGNORECASE,
)
# Words no reader writes in a reply by hand, wherever they are.
_ANYWHERE = re.compile(
    r"out of (?:the )?office|automatic reply|auto-?reply|auto-?response|"
    r"r[ée]ponse automatique|message d'absence|absent du bureau|"
    r"challenge[- ]response|spam ?arrest|boxbe",
    re.IGNORECASE,
)


def auto_reply_rule(mail: Mail) -> str | None:
    """The marker that shows a mail was written by a program, or None."""
    submitted = mail.header("Auto-Submitted").lower()
    if submitted and not submitted.startswith("no"):
        return f"Auto-Submitted: {submitted.split(';')[0][:40]}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", FORWARD_MARK):
        if mail.headers(name):
            return f"{name} header"
    precedence = mail.header("Precedence").lower()
    if precedence in ("auto_reply", "auto-reply", "junk"):
        return f"Precedence: {precedence}"
    for name in _CHALLENGE_HEADERS:
        if mail.headers(name):
            return f"{name} header (challenge-response)"
    subject = mail.subject
    if _START.match(_REPLY_PREFIX.sub("", subject)):
        return "subject of an auto-reply"
    if _ANYWHERE.search(subject):
        return "subject of an auto-reply"
    return None


def unsubscribe_target(settings: Settings, mail: Mail) -> tuple[Subscriber | None, str] | None:
    """The reader a mail to an unsubscribe address is from, with the rule; None when the mail
    went to no unsubscribe address. (None, rule) when the address names nobody valid."""
    local, _, domain = settings.unsubscribe_mailto.lower().rpartition("@")
    to_base = False
    for address in mail.recipients:
        subscriber_id = unsubscribe_subscriber_id(settings, address)
        if subscriber_id is None:
            to_base = (
                to_base
                or address == f"{local}@{domain}"
                or (address.startswith(f"{local}+") and address.endswith(f"@{domain}"))
            )
            continue
        sub = db.session.get(Subscriber, subscriber_id)
        if sub is not None and unsubscribe_signed(settings, address, sub.id, sub.created_at):
            return sub, "unsubscribe address token"
        to_base = True
    if to_base:
        return None, "unsubscribe address without a valid token"
    return None


def act_on_unsubscribe(sub: Subscriber, *, rule: str, now: datetime) -> Decision:
    """Unsubscribe the reader (channel mailto), counted on the last issue sent to them."""
    subscriber_id = sub.id
    before = sub.status
    last_issue = db.session.execute(
        select(Delivery.issue_id)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status == DeliveryStatus.SENT)
        .order_by(Delivery.issue_id.desc())
        .limit(1)
    ).scalar_one_or_none()
    changed = unsubscribe(subscriber_id, channel="mailto", now=now)  # commits
    decision = Decision(
        "unsubscribe",
        InboundVerdict.UNSUBSCRIBED if changed else InboundVerdict.DUPLICATE,
        rule,
        {"before": before},
        subscriber_id=subscriber_id,
        issue_id=last_issue,
    )
    if changed and last_issue is not None:
        db.session.execute(
            update(Issue)
            .where(Issue.id == last_issue)
            .values(mailto_unsubscribe_count=Issue.mailto_unsubscribe_count + 1)
        )
    return decision
