"""The corpus (tests/corpus/inbound/: bounces of Postfix, Sendmail, Exim, qmail, Exchange and
Office 365, Gmail, Yahoo, Domino; ARF reports; mailto unsubscribes; auto-replies in French
and English; replies; garbage), each message filled in for a real delivery of issue
2026-W48 and sent through each of the three ways in: the MTA pipe (`hebdo inbound
ingest`), the webhook (POST /api/v1/inbound) and the SMTP listener (`hebdo inbound
serve`'s handler on a loopback port). Each must get the verdict its manifest names, and
change the reader accordingly, the same way whichever way it came.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from flask import Flask
from flufl.bounce._detectors.dsn import DSN
from sqlalchemy import select

from service.cli.inbound import InboundHandler
from service.extensions import db
from service.inbound.reading import MAX_BYTES
from service.models import Delivery, InboundMessage, Status
from service.subscribers.suppressions import is_suppressed
from tests.support.admin import api_token
from tests.support.inbound import CORPUS, DESK, READER, Entry, corpus, fill
from tests.support.mail import subscriber
from tests.support.smtp import Received, SMTPSink, free_port

# 43 messages x 3 ways in, a sent issue each (about 2 minutes): the full suite's, on both
# backends; the fast lane keeps tests/test_inbound.py.
pytestmark = pytest.mark.slow

ENTRIES = corpus()
WAYS = ("pipe", "webhook", "smtp")
# What each verdict leaves the reader as (they start active).
AFTER = {
    "bounced": Status.BOUNCED,
    "complained": Status.COMPLAINED,
    "unsubscribed": Status.UNSUBSCRIBED,
}


def forged_verp(mail: Received) -> str:
    local, _, domain = mail.mail_from.rpartition("@")
    mac = local[-16:]
    return f"{local[:-16]}{'a' * 16 if mac != 'a' * 16 else 'b' * 16}@{domain}"


class _Listener(Controller):
    """`hebdo inbound serve`'s protocol and handler, on a loopback port of this process."""

    def __init__(self, app: Flask) -> None:
        super().__init__(InboundHandler(app, "smtp"), hostname="127.0.0.1", port=free_port())

    def factory(self) -> SMTP:
        return SMTP(self.handler, data_size_limit=MAX_BYTES, enable_SMTPUTF8=True)


@pytest.fixture
def listener(inbound_app: Flask) -> Iterator[_Listener]:
    server = _Listener(inbound_app)
    server.start()
    yield server
    server.stop()


def _through(
    way: str, app: Flask, raw: bytes, recipient: str, sender: str, port: int | None
) -> tuple[str, str] | None:
    """Send one mail the given way; (kind, verdict), or None when it was refused as no mail."""
    if way == "pipe":
        args = ["inbound", "ingest", "--sender", sender, "--recipient", recipient]
        result = app.test_cli_runner().invoke(args=args, input=raw)
        if result.exit_code == 65:
            return None
        assert result.exit_code == 0, result.output
    elif way == "webhook":
        headers = {**api_token(app, "feedback", "relay"), "Content-Type": "message/rfc822"}
        answer = app.test_client().post(
            "/api/v1/inbound",
            query_string={"sender": sender, "recipient": recipient},
            data=raw,
            headers=headers,
        )
        if answer.status_code == 422:
            assert answer.get_json()["error"] == "not_mail"
            return None
        assert answer.status_code == 200, answer.get_data(as_text=True)
    else:
        assert port is not None
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo("mx.example.org")
            smtp.mail(f"<{sender}>")
            assert smtp.rcpt(recipient)[0] == 250
            code, text = smtp.data(raw)
            if code == 550:
                assert b"Not a mail" in text
                return None
            assert code == 250, text
    with app.app_context():
        row = db.session.execute(
            select(InboundMessage).order_by(InboundMessage.id.desc()).limit(1)
        ).scalar_one()
        return row.kind, row.verdict


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.file.removesuffix(".eml") for e in ENTRIES])
def test_each_message_gets_its_verdict_whichever_way_it_comes(
    inbound_app: Flask,
    sent: dict[str, Received],
    listener: _Listener,
    smtp_server: SMTPSink,
    entry: Entry,
    way: str,
) -> None:
    mail = sent[READER]
    raw, recipient, sender = fill(inbound_app, entry, mail, forged_verp=forged_verp(mail))
    got = _through(way, inbound_app, raw, recipient, sender, listener.port)
    if entry.verdict == "not_mail":
        assert got is None
        return
    # The manifest's replies are "kept" (nothing to forward to); this app has HEBDO_REPLY_TO.
    expected = "forwarded" if (entry.kind, entry.verdict) == ("reply", "kept") else entry.verdict
    assert got == (entry.kind, expected), entry.what
    if expected == "forwarded":
        assert smtp_server.wait_for(1)[0].rcpt_tos == [DESK]
    reader = subscriber(inbound_app, READER)
    assert reader.status == AFTER.get(entry.verdict, Status.ACTIVE), entry.what
    settings = inbound_app.config["SETTINGS"]
    with inbound_app.app_context():
        assert is_suppressed(settings, READER) == (entry.verdict in ("bounced", "complained"))
        soft = db.session.execute(
            select(Delivery.soft_bounced_at).where(Delivery.subscriber_id == reader.id)
        ).scalar_one()
        assert (soft is not None) == (entry.verdict == "soft_bounce"), entry.what
        row = db.session.execute(
            select(InboundMessage).order_by(InboundMessage.id.desc()).limit(1)
        ).scalar_one()
        if entry.status and entry.kind == "bounce" and entry.verdict != "unattributed":
            assert entry.status in row.rule, (row.rule, entry.what)
        # Nobody else changed.
        for other in ("reader0@exemple.fr", "reader2@exemple.fr"):
            assert subscriber(inbound_app, other).status == Status.ACTIVE


def test_the_corpus_covers_every_form_the_issue_names() -> None:
    kinds = {(e.kind, e.verdict) for e in ENTRIES}
    for needed in [
        ("bounce", "bounced"),
        ("bounce", "soft_bounce"),
        ("bounce", "unattributed"),
        ("complaint", "complained"),
        ("unsubscribe", "unsubscribed"),
        ("auto_reply", "auto_reply"),
        ("reply", "kept"),
        ("garbage", "not_mail"),
    ]:
        assert needed in kinds, needed
    assert len(ENTRIES) >= 25
    for entry in ENTRIES:
        assert (CORPUS / entry.file).stat().st_size < 20_000


def test_why_dsns_are_not_left_to_flufl_bounce() -> None:
    """The measurement docs/inbound.md cites: flufl.bounce's DSN detector files a full
    mailbox (5.2.2) as a permanent failure, and returns no status or diagnostic."""
    quota = next(e for e in ENTRIES if e.kind == "bounce" and e.status == "5.2.2")
    raw = (CORPUS / quota.file).read_bytes().replace(b"{{EMAIL}}", b"reader1@exemple.fr")
    temporary, permanent = DSN().process(message_from_bytes(raw))
    assert permanent == {b"reader1@exemple.fr"} and not temporary
