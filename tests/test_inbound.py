"""What comes back: bounces, auto-replies, mailto unsubscriptions and replies to mails hebdo
really sent through a loopback SMTP server, what each changes, the record of it, and undo.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from service.admin.audit import Actor
from service.extensions import db
from service.inbound.bounces import Undo, undo_bounce
from service.inbound.reading import NotMail
from service.inbound.receive import purge_raw
from service.models import AuditEvent, InboundMessage, Issue, Status
from service.subscribers.bulk import Action, act
from service.subscribers.bulk import Outcome as BulkOutcome
from service.subscribers.suppressions import is_suppressed
from tests.support.data import add_article, add_subscribers, metric_value
from tests.support.inbound import BOUNCES, DESK, READER, dsn, reply, take
from tests.support.mail import subscriber
from tests.support.sending import NOW, WEEK, Sender
from tests.support.smtp import Received, SMTPSink


def status(app: Flask, email: str) -> str:
    return subscriber(app, email).status


def suppressed(app: Flask, email: str) -> bool:
    with app.app_context():
        return is_suppressed(app.config["SETTINGS"], email)


def issue_counts(app: Flask, week: str = WEEK) -> tuple[int, int, int]:
    with app.app_context():
        issue = db.session.execute(select(Issue).where(Issue.week == week)).scalar_one()
        return issue.hard_bounce_count, issue.soft_bounce_count, issue.mailto_unsubscribe_count


def row(app: Flask, inbound_id: int) -> InboundMessage:
    with app.app_context():
        found = db.session.get(InboundMessage, inbound_id)
        assert found is not None
        db.session.expunge(found)
        return found


def test_a_hard_bounce_to_the_verp_address_bounces_that_reader_once(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    mail = sent[READER]
    bounce = dsn(mail.mail_from, READER, returned=mail.data)
    before = inbound_app.test_client().get("/metrics").get_data(as_text=True)
    first = take(inbound_app, bounce, recipients=[mail.mail_from], envelope_from="")
    assert (first.kind, first.verdict, first.issue) == ("bounce", "bounced", WEEK)
    assert first.subscriber_id == subscriber(inbound_app, READER).id
    assert status(inbound_app, READER) == Status.BOUNCED and suppressed(inbound_app, READER)
    # Only that reader: the others are still mailed.
    assert status(inbound_app, "reader0@exemple.fr") == Status.ACTIVE
    assert issue_counts(inbound_app) == (1, 0, 0)
    record = row(inbound_app, first.id)
    assert record.rule == "dsn 5.1.1"
    assert record.evidence is not None
    assert record.evidence["matched"] == "VERP token"
    assert record.evidence["failure"]["status"] == "5.1.1"
    assert "Recipient address rejected" in record.evidence["failure"]["diagnostic"]
    # Evidence and subject hold no address; the raw message is kept for a person.
    assert READER not in str(record.evidence) and record.raw == bounce
    with inbound_app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "bounce")
        ).scalar_one()
        assert event.before_status == "active" and event.detail is not None
        assert event.detail["rule"] == "dsn 5.1.1" and event.detail["issue"] == WEEK
    after = inbound_app.test_client().get("/metrics").get_data(as_text=True)
    labels = {"kind": "bounce", "verdict": "bounced"}
    name = "hebdo_inbound_messages_total"
    assert metric_value(after, name, **labels) - metric_value(before, name, **labels) == 1

    # The MTA delivers the same bytes again (it lost our answer): the first verdict, no change.
    again = take(inbound_app, bounce, recipients=[mail.mail_from], envelope_from="")
    assert again.replay and again.id == first.id and again.verdict == "bounced"
    # Another relay's DSN about the same delivery: recorded, changes nothing more.
    other = take(inbound_app, bounce.replace(b"mx.example.org", b"mx2.example.org"))
    assert other.verdict == "duplicate" and issue_counts(inbound_app) == (1, 0, 0)


def test_the_next_issue_skips_a_bounced_reader(
    inbound_app: Flask, sent: dict[str, Received], smtp_server: SMTPSink
) -> None:
    mail = sent[READER]
    take(inbound_app, dsn(mail.mail_from, READER))
    later = NOW + timedelta(days=7)
    add_article(inbound_app, 2, later - timedelta(days=1))
    sender = Sender(inbound_app, week="2026-W49")
    assert sender.start(later) == 2
    sender.run(later)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.wait_for(2)) == [
        "reader0@exemple.fr",
        "reader2@exemple.fr",
    ]


def test_forged_bounces_change_nobody_and_are_kept_for_a_person(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    mail = sent[READER]
    token = mail.mail_from.split("+", 1)[1].split("@")[0]
    wrong = mail.mail_from.replace(token, token[:-4] + ("aaaa" if token[-4:] != "aaaa" else "bbbb"))
    # A VERP address whose signature does not hold.
    forged = take(inbound_app, dsn(wrong, READER), recipients=[wrong])
    assert forged.verdict == "unattributed" and not forged.acted
    assert "signature" in forged.rule
    # The bare bounce address and a Final-Recipient alone: anybody can write that.
    bare = take(inbound_app, dsn(BOUNCES, READER), recipients=[BOUNCES])
    assert bare.verdict == "unattributed"
    assert "no returned Message-ID" in bare.rule
    # The returned headers of another reader's mail: its Message-ID is no delivery to READER.
    other = sent["reader2@exemple.fr"]
    borrowed = take(inbound_app, dsn(BOUNCES, READER, returned=other.data), recipients=[BOUNCES])
    assert borrowed.verdict == "unattributed"
    assert status(inbound_app, READER) == Status.ACTIVE and not suppressed(inbound_app, READER)
    assert status(inbound_app, "reader2@exemple.fr") == Status.ACTIVE
    assert issue_counts(inbound_app) == (0, 0, 0)


def test_without_verp_the_returned_message_id_of_a_delivery_to_that_reader_counts(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    mail = sent[READER]
    # A relay that rewrote the envelope sender: the DSN comes to the bare address, with the
    # returned mail's headers.
    found = take(inbound_app, dsn(BOUNCES, READER, returned=mail.data), recipients=[BOUNCES])
    assert found.verdict == "bounced" and found.issue == WEEK
    assert row(inbound_app, found.id).evidence["matched"] == "returned Message-ID of a delivery"
    assert status(inbound_app, READER) == Status.BOUNCED


@pytest.mark.parametrize(
    ("status_code", "action", "diagnostic"),
    [
        (
            "5.2.2",
            "failed",
            "smtp; 552 5.2.2 The email account that you tried to reach is over quota",
        ),
        ("4.4.1", "failed", "connect to mail.example.org[192.0.2.1]:25: Connection timed out"),
        ("4.2.0", "delayed", "smtp; 451 4.2.0 Greylisted, try again in 5 minutes"),
        ("5.0.0", "failed", "smtp; 550 Mailbox full, quota exceeded"),
        ("5.7.1", "failed", "smtp; 550 5.7.1 Message rejected due to local policy"),
    ],
)
def test_temporary_and_quota_failures_are_soft_bounces(
    inbound_app: Flask, sent: dict[str, Received], status_code: str, action: str, diagnostic: str
) -> None:
    mail = sent[READER]
    got = take(
        inbound_app,
        dsn(mail.mail_from, READER, status=status_code, action=action, diagnostic=diagnostic),
    )
    assert got.verdict == "soft_bounce"
    assert status(inbound_app, READER) == Status.ACTIVE and not suppressed(inbound_app, READER)
    assert issue_counts(inbound_app) == (0, 1, 0)
    # A second DSN about the same delivery (a delay warning, then the final failure) is
    # counted once: the limit is about distinct issues.
    take(inbound_app, dsn(mail.mail_from, READER, status="4.4.7", action="failed"))
    assert issue_counts(inbound_app) == (0, 1, 0)


def test_soft_bounces_in_three_issues_in_a_row_bounce_the_reader(
    inbound_app: Flask, sent: dict[str, Received], smtp_server: SMTPSink
) -> None:
    quota = {"status": "5.2.2", "diagnostic": "smtp; 552 5.2.2 Mailbox full"}
    take(inbound_app, dsn(sent[READER].mail_from, READER, **quota))
    for number, week in ((2, "2026-W49"), (3, "2026-W50")):
        later = NOW + timedelta(days=7 * (number - 1))
        add_article(inbound_app, number, later - timedelta(days=1))
        sender = Sender(inbound_app, week=week)
        sender.start(later)
        sender.run(later)
        mails = {m.rcpt_tos[0]: m for m in smtp_server.wait_for(3)}
        smtp_server.messages.clear()
        got = take(inbound_app, dsn(mails[READER].mail_from, READER, **quota))
        if number == 2:
            assert got.verdict == "soft_bounce" and status(inbound_app, READER) == Status.ACTIVE
    assert got.verdict == "bounced" and got.rule == "3 soft bounces in a row"
    assert status(inbound_app, READER) == Status.BOUNCED and suppressed(inbound_app, READER)
    assert issue_counts(inbound_app, "2026-W50") == (1, 1, 0)


def test_a_delivery_without_a_bounce_in_between_starts_the_soft_count_again(
    inbound_app: Flask, sent: dict[str, Received], smtp_server: SMTPSink
) -> None:
    quota = {"status": "4.2.2", "action": "failed", "diagnostic": "smtp; 452 4.2.2 Over quota"}
    take(inbound_app, dsn(sent[READER].mail_from, READER, **quota))
    for number, week in ((2, "2026-W49"), (3, "2026-W50"), (4, "2026-W51")):
        later = NOW + timedelta(days=7 * (number - 1))
        add_article(inbound_app, number, later - timedelta(days=1))
        sender = Sender(inbound_app, week=week)
        sender.start(later)
        sender.run(later)
        mails = {m.rcpt_tos[0]: m for m in smtp_server.wait_for(3)}
        smtp_server.messages.clear()
        if week != "2026-W49":  # W49 reached the mailbox: no bounce
            take(inbound_app, dsn(mails[READER].mail_from, READER, **quota))
    assert status(inbound_app, READER) == Status.ACTIVE


def test_an_admin_can_undo_a_bounce(inbound_app: Flask, sent: dict[str, Received]) -> None:
    mail = sent[READER]
    got = take(inbound_app, dsn(mail.mail_from, READER))
    settings = inbound_app.config["SETTINGS"]
    with inbound_app.app_context():
        assert undo_bounce(settings, got.id, by=Actor("admin:alice"), now=NOW) == Undo.DONE
        assert undo_bounce(settings, got.id, by=Actor("admin:alice"), now=NOW) == Undo.ALREADY
        events = db.session.execute(
            select(AuditEvent.action, AuditEvent.actor, AuditEvent.after_status).order_by(
                AuditEvent.id
            )
        ).all()
    assert events[-1] == ("bounce.undo", "admin:alice", "active")
    assert status(inbound_app, READER) == Status.ACTIVE and not suppressed(inbound_app, READER)
    assert issue_counts(inbound_app) == (0, 0, 0)
    assert row(inbound_app, got.id).verdict == "undone"
    # A soft bounce or an auto-reply is nothing to undo.
    soft = take(
        inbound_app,
        dsn(
            sent["reader0@exemple.fr"].mail_from,
            "reader0@exemple.fr",
            status="4.2.2",
            action="delayed",
        ),
    )
    with inbound_app.app_context():
        assert undo_bounce(settings, soft.id, by=Actor("admin:alice"), now=NOW) == Undo.REFUSED
        assert undo_bounce(settings, 10**6, by=Actor("admin:alice"), now=NOW) == Undo.UNKNOWN


def test_auto_replies_change_nothing_and_are_counted(
    inbound_app: Flask, sent: dict[str, Received], smtp_server: SMTPSink
) -> None:
    mail = sent[READER]
    cases = [
        reply(READER, mail.mail_from, "Réponse automatique : Hebdo", Auto_Submitted="auto-replied"),
        reply(READER, "news@news.example.fr", "Je suis absente", X_Autoreply="yes"),
        reply(READER, "news@news.example.fr", "Hebdo", Precedence="auto_reply"),
        reply(READER, "news@news.example.fr", "Absent du bureau jusqu'au 4 janvier"),
        reply(READER, "news@news.example.fr", "Out of Office: Hebdo"),
        reply(READER, "news@news.example.fr", "Please confirm your message", X_Boxbe_Challenge="1"),
    ]
    for raw in cases:
        got = take(inbound_app, raw)
        assert (got.kind, got.verdict) == ("auto_reply", "auto_reply"), raw[:200]
        assert got.subscriber_id == subscriber(inbound_app, READER).id
    assert status(inbound_app, READER) == Status.ACTIVE
    assert smtp_server.messages == []  # none forwarded


def test_a_readers_reply_is_forwarded_to_the_newsroom_as_an_attachment(
    inbound_app: Flask, sent: dict[str, Received], smtp_server: SMTPSink
) -> None:
    # "vacances" in a reply to a digest about holidays: a reply, not an auto-reply.
    raw = reply(
        READER,
        "news@news.example.fr",
        "Re: Hebdo : vos idées de vacances",
        "Bonjour,\r\nMerci pour l'article sur les vacances.\r\nÉlise",
    )
    got = take(inbound_app, raw)
    assert (got.kind, got.verdict) == ("reply", "forwarded")
    forwarded = smtp_server.wait_for(1)[0]
    assert forwarded.rcpt_tos == [DESK]
    head = forwarded.data.split(b"\r\n\r\n", 1)[0].decode()
    # hebdo's words in the headers, the reader's only as a validated Reply-To.
    assert "vacances" not in head and f"Reply-To: {READER}" in head
    assert "Auto-Submitted: auto-generated" in head
    message = forwarded.message
    attached = [p for p in message.iter_attachments() if p.get_content_type() == "message/rfc822"]
    assert attached and "Élise" in attached[0].get_payload()[0].get_content()
    # A reply to that forward coming back here is not forwarded again.
    loop = take(inbound_app, forwarded.data)
    assert loop.verdict == "auto_reply"


def test_without_a_newsroom_address_a_reply_is_kept_for_a_person(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    app = make_app({**smtp_env, "HEBDO_BOUNCE_ADDRESS": BOUNCES})
    add_subscribers(app, 1)
    got = take(app, reply("reader0@exemple.fr", "news@news.example.fr", "Re: Hebdo", "Bravo"))
    assert (got.kind, got.verdict, got.acted) == ("reply", "kept", False)
    assert got.subscriber_id == subscriber(app, "reader0@exemple.fr").id
    assert smtp_server.messages == []


def test_a_mail_to_the_readers_unsubscribe_address_unsubscribes_them(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    mail = sent[READER]
    header = " ".join(str(mail.message["List-Unsubscribe"]).split())
    mailto = header.split("<mailto:", 1)[1].split("?", 1)[0]
    got = take(inbound_app, reply(READER, mailto, "unsubscribe", ""), recipients=[mailto])
    assert (got.kind, got.verdict) == ("unsubscribe", "unsubscribed")
    sub = subscriber(inbound_app, READER)
    assert sub.status == Status.UNSUBSCRIBED and sub.unsubscribe_channel == "mailto"
    assert issue_counts(inbound_app) == (0, 0, 1)
    assert take(inbound_app, reply(READER, mailto, "unsubscribe", "again")).verdict == "duplicate"
    # Another reader's token with one character changed, or the bare address: nobody.
    forged = mailto[:-20] + ("a" if mailto[-20] != "a" else "b") + mailto[-19:]
    other = take(inbound_app, reply("reader2@exemple.fr", forged, "unsubscribe", "x"))
    bare = take(inbound_app, reply("reader2@exemple.fr", "unsubscribe@news.example.fr", "stop"))
    assert other.verdict == bare.verdict == "kept"
    assert status(inbound_app, "reader2@exemple.fr") == Status.ACTIVE


@pytest.mark.parametrize(
    "raw",
    [b"", b"   \r\n", b"\x00\x01\x02 binary junk \xff" * 10, b"hello, this is not a mail\r\n"],
)
def test_what_is_no_mail_is_refused(inbound_app: Flask, raw: bytes) -> None:
    with pytest.raises(NotMail):
        take(inbound_app, raw)
    with inbound_app.app_context():
        assert db.session.execute(select(InboundMessage)).first() is None


def test_raw_messages_go_after_thirty_days_and_with_an_erasure(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    old = take(
        inbound_app,
        reply("reader0@exemple.fr", "news@news.example.fr", "Re: Hebdo"),
        now=NOW - timedelta(days=31),
    )
    new = take(inbound_app, reply(READER, "news@news.example.fr", "Re: Hebdo", "Merci"))
    with inbound_app.app_context():
        assert purge_raw(NOW) == 1
        db.session.commit()
    assert row(inbound_app, old.id).raw is None and row(inbound_app, new.id).raw is not None
    # Erasing READER drops what their mails said; the record of what was done stays.
    sub_id = subscriber(inbound_app, READER).id
    with inbound_app.app_context():
        outcome = act(
            inbound_app.config["SETTINGS"], Action.ERASE, sub_id, by=Actor("cli:x"), now=NOW
        )
        assert outcome == BulkOutcome.DONE
    kept = row(inbound_app, new.id)
    assert kept.raw is None and kept.subject is None and kept.subscriber_id is None
    assert kept.verdict == "forwarded"
