"""What a reader does with the mails hebdo sent: the confirmation sweep that sends them,
the links in them, a subscriber's row; and feedback-loop reports about them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import Flask
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from service.extensions import db
from service.mail.transport import open_transport
from service.models import Subscriber
from service.subscribers.confirmations import send_due_confirmations
from service.subscribers.tokens import Purpose
from tests.support.settings import BASE_URL, SECRET
from tests.support.smtp import Received


def arf(
    original: bytes,
    *,
    feedback_type: str = "abuse",
    rcpt: str | None = None,
    headers_only: bool = False,
    redact: str | None = None,
) -> bytes:
    """An RFC 5965 report about `original`, as a provider's feedback loop writes one.
    `redact`: the reader's address, replaced everywhere (Yahoo and JMRP do that)."""
    if redact:
        original = original.replace(redact.encode(), b"redacted@example.invalid")
    fields = [
        f"Feedback-Type: {feedback_type}",
        "User-Agent: Microsoft JMRP/1.0",
        "Version: 1",
        "Original-Mail-From: <newsletter@news.example.fr>",
        "Arrival-Date: Mon, 23 Nov 2026 08:12:00 +0000",
        "Source-IP: 192.0.2.25",
        "Reported-Domain: news.example.fr",
        *([f"Original-Rcpt-To: {rcpt}"] if rcpt else []),
    ]
    if headers_only:
        kind, body = "text/rfc822-headers", original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    else:
        kind, body = "message/rfc822", original
    head = "\r\n".join(
        [
            "From: <staff@fbl.example.net>",
            "To: <fbl@news.example.fr>",
            "Subject: complaint about message from 192.0.2.25",
            "Date: Mon, 23 Nov 2026 09:00:00 +0000",
            "Message-ID: <report-1@fbl.example.net>",
            "MIME-Version: 1.0",
            'Content-Type: multipart/report; report-type=feedback-report; boundary="arf"',
            "",
            "--arf",
            'Content-Type: text/plain; charset="us-ascii"',
            "",
            "This is an email abuse report for a message received from 192.0.2.25.",
            "",
            "--arf",
            "Content-Type: message/feedback-report",
            "",
            *fields,
            "",
            "--arf",
            f"Content-Type: {kind}",
            "",
            "",
        ]
    ).encode()
    return head + body + b"\r\n--arf--\r\n"


def sweep(app: Flask, now: datetime | None = None) -> int:
    """What the worker's sweep task does, in-process."""
    settings = app.config["SETTINGS"]
    with app.app_context(), open_transport(settings) as transport:
        return send_due_confirmations(
            transport=transport, settings=settings, now=now or datetime.now(UTC)
        )


def subscriber(app: Flask, email: str) -> Subscriber:
    with app.app_context():
        sub = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
        db.session.expunge(sub)
        return sub


def link(mail: Received, path: str) -> str:
    """Path of the first `path` link in the text part, checked to be absolute on the base URL."""
    match = re.search(rf"{re.escape(BASE_URL)}(/{path}/[A-Za-z0-9._-]+)", mail.part("plain"))
    assert match, mail.part("plain")
    return match.group(1)


def list_unsubscribe_path(mail: Received) -> str:
    header = mail.message["List-Unsubscribe"]
    url = re.search(r"<(https://[^>]+)>", str(header))
    assert url
    assert url.group(1).startswith(BASE_URL + "/unsubscribe/")
    return urlsplit(url.group(1)).path


def old_token(purpose: Purpose, payload: list[object], age_seconds: int, key: str = SECRET) -> str:
    serializer = URLSafeTimedSerializer(key, salt=purpose.value)

    class Signer(serializer.signer):  # type: ignore[name-defined,misc]
        def get_timestamp(self) -> int:
            return int(datetime.now(UTC).timestamp()) - age_seconds

    serializer.signer = Signer
    return serializer.dumps(payload)
