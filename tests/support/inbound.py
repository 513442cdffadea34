"""Mail that comes back to hebdo, built around the bytes a loopback SMTP server really
received from it: delivery status notifications as an MTA writes them, replies, and
the corpus of real-world-shaped messages in tests/corpus/inbound/ with its placeholders
filled for one delivery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from flask import Flask

from service.extensions import db
from service.inbound.receive import Received, receive
from service.inbound.verp import unsubscribe_address
from service.models import Subscriber
from tests.support.smtp import Received as Sent

BOUNCES = "bounces@news.example.fr"
DESK = "redaction@news.example.fr"
# The reader whose mail comes back in most tests (`sent` holds reader0..2).
READER = "reader1@exemple.fr"
CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "inbound"


def dsn(
    to: str,
    recipient: str,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <{r}>: Recipient address rejected: User unknown",
    returned: bytes | None = None,
    headers_only: bool = True,
) -> bytes:
    """An RFC 3464 report, as Postfix writes one: to the envelope sender `to`, about
    `recipient`, with the returned mail's headers (or the whole of it)."""
    lines = [
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)",
        f"To: {to}",
        "Subject: Undelivered Mail Returned to Sender",
        "Date: Mon, 23 Nov 2026 08:00:05 +0000",
        "Message-ID: <20261123080005.1A2B3C@mx.example.org>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"',
        "",
        "--dsn",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "This is the mail system at host mx.example.org.",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
        "--dsn",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; mx.example.org",
        "Arrival-Date: Mon, 23 Nov 2026 08:00:01 +0000",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        f"Original-Recipient: rfc822;{recipient}",
        f"Action: {action}",
        f"Status: {status}",
        "Remote-MTA: dns; mail.example.org",
        f"Diagnostic-Code: {diagnostic.format(r=recipient)}",
        "",
    ]
    if returned is not None:
        kind = "text/rfc822-headers" if headers_only else "message/rfc822"
        body = returned.split(b"\r\n\r\n", 1)[0] + b"\r\n" if headers_only else returned
        lines += ["--dsn", f"Content-Type: {kind}", "", ""]
        return "\r\n".join(lines).encode() + body + b"\r\n--dsn--\r\n"
    return "\r\n".join([*lines, "--dsn--", ""]).encode()


def reply(sender: str, to: str, subject: str, body: str = "Merci !", **headers: str) -> bytes:
    """A mail written by a person (or a responder, with `headers`)."""
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 23 Nov 2026 09:00:00 +0100\r\nMessage-ID: <r{abs(hash(body))}@exemple.fr>\r\n"
        f"{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    ).encode()


def take(app: Flask, raw: bytes, **kwargs: Any) -> Received:
    """`receive` in an app context, now, through the settings' transport for forwards."""
    from service.mail.transport import open_transport

    settings = app.config["SETTINGS"]

    def forward(outgoing: Any) -> object:
        with open_transport(settings) as transport:
            return transport.send(outgoing)

    with app.app_context():
        return receive(
            settings,
            raw,
            source=kwargs.pop("source", "cli"),
            now=kwargs.pop("now", datetime.now(UTC)),
            forward=kwargs.pop("forward", forward),
            **kwargs,
        )


@dataclass(frozen=True)
class Entry:
    """One message of the corpus and what it must become."""

    file: str
    what: str
    recipient: str
    sender: str
    kind: str
    verdict: str
    status: str | None


def corpus() -> list[Entry]:
    entries = json.loads((CORPUS / "manifest.json").read_text())
    return [
        Entry(
            e["file"],
            e["what"],
            e["recipient"],
            e["sender"],
            e["kind"],
            e["verdict"],
            e.get("status"),
        )
        for e in entries
    ]


def fill(app: Flask, entry: Entry, sent: Sent, *, forged_verp: str) -> tuple[bytes, str, str]:
    """The corpus message for the delivery `sent` (placeholders filled), with its envelope
    recipient and sender."""
    settings = app.config["SETTINGS"]
    message = message_from_bytes(sent.data, policy=policy.default)
    email = sent.rcpt_tos[0]
    with app.app_context():
        sub = db.session.query(Subscriber).filter_by(email=email).one()
        mailto = unsubscribe_address(settings, sub.id, sub.created_at)
    unsubscribe_url = str(message["List-Unsubscribe"]).split("<", 1)[1].split(">", 1)[0]
    values = {
        "EMAIL": email,
        "VERP": sent.mail_from,
        "MESSAGE_ID": str(message["Message-ID"]),
        "UNSUBSCRIBE_ADDRESS": mailto,
        "UNSUBSCRIBE_URL": unsubscribe_url,
        "LIST_ID": settings.list_id,
        "FROM": settings.mail_from_address,
        "DOMAIN": settings.mail_domain,
        "FORGED_VERP": forged_verp,
        "BOUNCE_BASE": settings.bounce_address,
    }
    raw = (CORPUS / entry.file).read_bytes()
    for key, value in values.items():
        raw = raw.replace(("{{" + key + "}}").encode(), value.encode())
    recipient = values.get(entry.recipient, entry.recipient)
    sender = values.get(entry.sender, entry.sender)
    return raw, recipient, sender
