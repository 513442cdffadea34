"""Sending an issue through a real SMTP server on loopback: batches, retries, bounces,
duplicates, pause/resume/cancel, abandoned claims, and the global send rate.

Batches run in the test process here (the worker tests run them in Celery workers);
the clock is passed in, so backoff and claim expiry are checked without waiting.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from flask import Flask
from sqlalchemy import select, update

from service.digest import delivery, lifecycle, progress
from service.digest.planning import get_issue, plan_issue
from service.digest.rendering import Recipient, mail_for, mail_template
from service.digest.send_rate import FileRate, RedisRate, send_rate
from service.extensions import db
from service.mail.message import Outgoing, build_message
from service.mail.smtp import SMTPTransport
from service.mail.transport import open_transport
from service.models import AuditEvent, Delivery, Status, Subscriber
from service.subscribers.lifecycle import unsubscribe
from service.subscribers.suppressions import is_suppressed
from service.subscribers.tokens import Purpose, read_token
from tests.support.data import add_article, add_readers, add_subscribers
from tests.support.sending import NOW, WEEK, Sender
from tests.support.settings import BROKER_URL
from tests.support.smtp import SMTPSink, free_port


def begin(app: Flask, subscribers: int, *, article: bool = False) -> Sender:
    """`subscribers` active readers (and the week's article), the issue started."""
    if article:
        add_article(app, 1, NOW - timedelta(days=1))
    add_subscribers(app, subscribers)
    sender = Sender(app)
    sender.start()
    return sender


@pytest.fixture
def batch_app(make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str]) -> Flask:
    app = make_app({**smtp_env, "HEBDO_SEND_BATCH": "40"})
    add_article(app, 1, NOW - timedelta(days=1))
    return app


def test_every_active_subscriber_gets_the_issue_once_in_batches(
    batch_app: Flask, smtp_server: SMTPSink
) -> None:
    add_subscribers(batch_app, 100)
    add_subscribers(batch_app, 5, status="pending", start=100)
    add_subscribers(batch_app, 5, status="unsubscribed", start=105)
    sender = Sender(batch_app)
    assert sender.start() == 100
    assert len(sender.queue) == 3  # 40 + 40 + 20
    sender.queue.append(sender.queue[0])  # a duplicated task message
    reports = sender.run()
    assert [r.sent for r in reports] == [40, 40, 20, 0]
    assert len(smtp_server.messages) == 100
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(
        f"reader{n}@exemple.fr" for n in range(100)
    )
    assert smtp_server.sessions == 1  # one connection, reused for every message
    issue = sender.issue()
    assert issue.status == "sent" and issue.sent_count == 100 and issue.finished_at is not None
    # Starting again, planning again, sweeping: nothing more goes out.
    with batch_app.app_context():
        assert delivery.start_send(sender.settings, issue.id, NOW) == -1
        assert plan_issue(sender.settings, WEEK, NOW).changed is False
    sender.sweep(NOW + timedelta(hours=1))
    sender.run(NOW + timedelta(hours=1))
    assert len(smtp_server.messages) == 100
    rows = sender.deliveries()
    message_ids = {m.message["Message-ID"] for m in smtp_server.messages}
    assert {r.message_id for r in rows.values()} == message_ids
    assert all(r.status == "sent" and r.smtp_response.startswith("250") for r in rows.values())


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_greylisting_is_retried_after_the_servers_delay_then_delivered(
    batch_app: Flask, smtp_server: SMTPSink, pipelining: bool
) -> None:
    smtp_server.pipelining = pipelining
    add_subscribers(batch_app, 3)
    smtp_server.rcpt_sequences["reader1@exemple.fr"] = [
        "451 4.7.1 Greylisted, try again in 300 seconds",
        "452 4.2.2 Mailbox full",
    ]
    sender = Sender(batch_app)
    sender.start()
    report = sender.run()[0]
    assert (report.sent, report.retried) == (2, 1)
    row = sender.deliveries()["reader1@exemple.fr"]
    assert row.status == "queued" and row.next_attempt_at == NOW + timedelta(seconds=300)
    assert "Greylisted" in (row.last_error or "")
    assert sender.issue().status == "sending"
    # Not before the server's 300 s: the sweep finds nothing due.
    assert sender.sweep(NOW + timedelta(seconds=299)) == 0
    assert sender.sweep(NOW + timedelta(seconds=300)) == 1
    sender.run(NOW + timedelta(seconds=300))  # 452: backoff of 2 minutes (second attempt)
    row = sender.deliveries()["reader1@exemple.fr"]
    assert row.attempts == 2 and row.next_attempt_at == NOW + timedelta(seconds=420)
    sender.sweep(NOW + timedelta(seconds=420))
    sender.run(NOW + timedelta(seconds=420))
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages).count("reader1@exemple.fr") == 1
    assert sender.issue().status == "sent" and sender.issue().sent_count == 3


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_550_bounces_the_subscriber_for_good_and_is_never_retried(
    batch_app: Flask, smtp_server: SMTPSink, pipelining: bool
) -> None:
    smtp_server.pipelining = pipelining
    add_subscribers(batch_app, 3)
    smtp_server.rcpt_replies["reader2@exemple.fr"] = "550 5.1.1 No such user"
    sender = Sender(batch_app)
    sender.start()
    sender.run()
    row = sender.deliveries()["reader2@exemple.fr"]
    assert row.status == "bounced" and "5.1.1" in (row.last_error or "")
    issue = sender.issue()
    assert issue.status == "sent" and (issue.sent_count, issue.bounced_count) == (2, 1)
    with batch_app.app_context():
        sub = db.session.execute(
            select(Subscriber).where(Subscriber.email == "reader2@exemple.fr")
        ).scalar_one()
        assert sub.status == Status.BOUNCED
        assert is_suppressed(sender.settings, "reader2@exemple.fr")
        events = db.session.execute(select(AuditEvent.action, AuditEvent.detail)).all()
        assert [(a, d["code"]) for a, d in events] == [("bounce", "550")]
    sender.sweep(NOW + timedelta(days=1))
    sender.run(NOW + timedelta(days=1))
    assert len(smtp_server.messages) == 2


def test_unsubscribed_before_their_turn_are_skipped(
    batch_app: Flask, smtp_server: SMTPSink
) -> None:
    ids = add_subscribers(batch_app, 3)
    sender = Sender(batch_app)
    sender.start()
    with batch_app.app_context():
        unsubscribe(ids[0], channel="one-click", now=NOW, ip=None, actor="subscriber")
    sender.run()
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "reader1@exemple.fr",
        "reader2@exemple.fr",
    ]
    assert sender.deliveries()["reader0@exemple.fr"].status == "skipped"
    assert sender.issue().status == "sent"


def test_each_copy_built_ahead_goes_to_its_own_reader_whatever_happens_around_it(
    batch_app: Flask, smtp_server: SMTPSink
) -> None:
    """A reader's copy is built while the server reads the previous one: around a reader
    skipped, a recipient refused and an address that cannot be built, every message still
    carries its own reader's address, links and Message-ID."""
    ids = add_readers(batch_app, [f"reader{n}@exemple.fr" for n in range(6)])
    ids |= add_readers(batch_app, ["sp ace@exemple.fr"])  # no copy can be built for it
    ids |= add_readers(batch_app, [f"reader{n}@exemple.fr" for n in range(6, 12)])
    smtp_server.rcpt_sequences["reader8@exemple.fr"] = ["550 5.1.1 No such user"]
    sender = Sender(batch_app)
    sender.start()
    with batch_app.app_context():
        unsubscribe(
            ids["reader3@exemple.fr"], channel="one-click", now=NOW, ip=None, actor="subscriber"
        )
    sender.run()

    rows = sender.deliveries()
    assert {email: row.status for email, row in rows.items()} == {
        **{email: "sent" for email in ids},
        "reader3@exemple.fr": "skipped",
        "reader8@exemple.fr": "bounced",
        "sp ace@exemple.fr": "failed",
    }
    delivered = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    assert sorted(delivered) == sorted(e for e, r in rows.items() if r.status == "sent")
    for email, received in delivered.items():
        message = received.message
        assert message["To"] == email
        assert message["Message-ID"] == rows[email].message_id
        https = message["List-Unsubscribe"].split(",")[0].strip(" <>")
        token = https.rsplit("/", 1)[1]
        with batch_app.app_context():
            payload = read_token(sender.settings, Purpose.UNSUBSCRIBE, token)
        assert payload[0] == ids[email]
        assert f"/unsubscribe/{token}" in received.part("plain")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_the_next_message_is_announced_behind_the_final_dot_when_the_server_pipelines(
    batch_app: Flask, smtp_server: SMTPSink, pipelining: bool
) -> None:
    """One round trip a message: when the server answers a message, the next one's MAIL,
    RCPT and DATA have already arrived behind its final dot (never after the last one, and
    never to a server without PIPELINING)."""
    smtp_server.pipelining = pipelining
    smtp_server.data_delay = 0.05  # the server takes its time: the announce is there
    add_subscribers(batch_app, 5)
    sender = Sender(batch_app)
    sender.start()
    assert sender.run()[0].sent == 5
    assert smtp_server.next_waiting == [pipelining] * 4 + [False]
    assert smtp_server.sessions == 1 and smtp_server.duplicates() == 0
    assert sorted(smtp_server.per_recipient()) == [f"reader{n}@exemple.fr" for n in range(5)]


def test_a_message_refused_or_cut_after_its_dot_leaves_the_announced_one_undelivered(
    batch_app: Flask, smtp_server: SMTPSink
) -> None:
    """reader1's text is refused after its dot, and the server hangs up on reader3's
    unanswered: the message announced behind each is not delivered on that connection
    (hanging up mid-DATA leaves nothing), but sent whole on a new one, once."""
    add_subscribers(batch_app, 6)
    smtp_server.data_replies["reader1@exemple.fr"] = ["554 5.6.0 Message content rejected"]
    smtp_server.drop_after_data["reader3@exemple.fr"] = 1
    sender = Sender(batch_app)
    sender.start()
    sender.run()
    rows = sender.deliveries()
    assert rows["reader1@exemple.fr"].status == "failed"
    assert "content rejected" in (rows["reader1@exemple.fr"].last_error or "")
    # Cut after the dot: maybe delivered (it was), so retried once, flagged uncertain.
    assert rows["reader3@exemple.fr"].status == "queued" and rows["reader3@exemple.fr"].uncertain
    assert smtp_server.per_recipient() == {f"reader{n}@exemple.fr": 1 for n in (0, 2, 3, 4, 5)}
    for received in smtp_server.messages:
        assert received.message["To"] == received.rcpt_tos[0]
        assert received.part("plain").strip()  # whole messages only


def test_pause_resume_and_cancel(batch_app: Flask, smtp_server: SMTPSink) -> None:
    sender = begin(batch_app, 100)
    issue_id = sender.issue().id
    first = sender.queue.pop(0)
    sender.queue, waiting = [first], sender.queue
    sender.run()
    with batch_app.app_context():
        assert lifecycle.pause(issue_id)
        assert not lifecycle.pause(issue_id)
    sender.queue = waiting
    assert [r.claimed for r in sender.run()] == [0, 0]  # paused: queued tasks claim nothing
    assert len(smtp_server.messages) == 40
    with batch_app.app_context():
        assert lifecycle.resume(issue_id)
        delivery.dispatch(sender.settings, issue_id, NOW, sender.enqueue)
    sender.queue = sender.queue[:1]
    sender.run()
    assert len(smtp_server.messages) == 80
    with batch_app.app_context():
        assert lifecycle.cancel(issue_id, NOW)
    sender.sweep(NOW + timedelta(hours=1))
    sender.run(NOW + timedelta(hours=1))
    assert len(smtp_server.messages) == 80
    statuses = [r.status for r in sender.deliveries().values()]
    assert statuses.count("sent") == 80 and statuses.count("skipped") == 20
    assert sender.issue().status == "cancelled"


def test_a_claim_abandoned_by_a_dead_worker_is_requeued_alone_then_quarantined(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    app = make_app({**smtp_env, "HEBDO_CLAIM_TIMEOUT_SECONDS": "60", "HEBDO_SEND_BATCH": "10"})
    sender = begin(app, 5, article=True)
    with app.app_context():
        issue_id = sender.issue().id
        # A worker claims the batch, then dies before sending anything.
        assert len(delivery.claim(sender.settings, issue_id, NOW)) == 5
    sender.queue.clear()
    assert sender.sweep(NOW + timedelta(seconds=30)) == 0  # still within its claim
    # Taken back: each row is now a suspect, claimed alone, so one task each.
    assert sender.sweep(NOW + timedelta(seconds=61)) == 5
    rows = sender.deliveries().values()
    assert all(r.status == "queued" and r.lost_claims == 1 and r.uncertain for r in rows)
    # The first row is what kills workers: each time it is claimed (alone), its worker dies.
    when = NOW + timedelta(seconds=61)
    for _ in range(2):
        with app.app_context():
            taken = delivery.claim(sender.settings, issue_id, when)
        assert taken == [sender.deliveries()["reader0@exemple.fr"].id]
        when += timedelta(seconds=61)
        sender.sweep(when)
    poison = sender.deliveries()["reader0@exemple.fr"]
    assert poison.status == "failed" and poison.lost_claims == delivery.MAX_LOST_CLAIMS
    assert "quarantined" in (poison.last_error or "")
    # Nobody else was held back by it: the other four go out, the issue is closed.
    sender.run(when)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        f"reader{n}@exemple.fr" for n in range(1, 5)
    ]
    issue = sender.issue()
    assert issue.status == "sent" and issue.failed_count == 1 and issue.sent_count == 4


def test_a_connection_lost_after_the_dot_is_retried_once_and_flagged(
    batch_app: Flask, smtp_server: SMTPSink
) -> None:
    add_subscribers(batch_app, 3)
    smtp_server.drop_after_data["reader0@exemple.fr"] = 1
    smtp_server.drop_after_data["reader1@exemple.fr"] = 2
    sender = Sender(batch_app)
    sender.start()
    sender.run()
    rows = sender.deliveries()
    assert rows["reader0@exemple.fr"].uncertain and rows["reader0@exemple.fr"].status == "queued"
    assert rows["reader2@exemple.fr"].status == "sent"  # the batch reconnected and went on
    for minutes in (1, 10):
        sender.sweep(NOW + timedelta(minutes=minutes))
        sender.run(NOW + timedelta(minutes=minutes))
    rows = sender.deliveries()
    assert rows["reader0@exemple.fr"].status == "sent" and rows["reader0@exemple.fr"].uncertain
    assert rows["reader1@exemple.fr"].status == "failed"
    assert "lost after DATA twice" in (rows["reader1@exemple.fr"].last_error or "")
    received = [m.rcpt_tos[0] for m in smtp_server.messages]
    # Each uncertain address received at most one extra copy: the bounded price of a lost reply.
    assert received.count("reader0@exemple.fr") == 2 and received.count("reader1@exemple.fr") == 2
    assert sender.issue().status == "sent"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_421_stops_the_batch_and_its_rest_waits_without_losing_an_attempt(
    batch_app: Flask, smtp_server: SMTPSink, pipelining: bool
) -> None:
    smtp_server.pipelining = pipelining
    add_subscribers(batch_app, 5)
    smtp_server.rcpt_sequences["reader1@exemple.fr"] = [
        "421 4.7.0 Too many messages, try again in 30 seconds"
    ]
    sender = Sender(batch_app)
    sender.start()
    report = sender.run()[0]
    assert (report.sent, report.retried, report.released) == (1, 1, 3)
    rows = sender.deliveries()
    waiting = [rows[f"reader{n}@exemple.fr"] for n in (2, 3, 4)]
    # 30 s from the server, but backoff's first minute wins.
    assert all(r.status == "queued" and r.attempts == 0 for r in waiting)
    assert all(r.next_attempt_at == NOW + timedelta(minutes=1) for r in waiting)
    sender.sweep(NOW + timedelta(minutes=1))
    sender.run(NOW + timedelta(minutes=1))
    assert len(smtp_server.messages) == 5 and sender.issue().status == "sent"


def test_a_batch_honours_the_send_rate(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    app = make_app({**smtp_env, "HEBDO_SEND_RATE": "20"})
    sender = begin(app, 10, article=True)
    issue_id = sender.issue().id
    started = time.monotonic()
    with app.app_context(), open_transport(sender.settings) as transport:
        delivery.send_batch(
            sender.settings,
            issue_id,
            transport=transport,
            clock=lambda: NOW,
            rate=send_rate(sender.settings),
        )
    arrivals = [m.at for m in smtp_server.wait_for(10)]
    # 10 messages at 20/s: the tenth slot is 9 intervals of 50 ms after the first, which is
    # no earlier than the start. (Between the first and the last arrival it can be less: a
    # slow first message, on a loaded machine, lets the next ones go the moment it is done.)
    assert arrivals[-1] - started >= 0.45 - 0.02


def test_the_send_rate_is_one_schedule_shared_by_every_limiter(tmp_path: Path) -> None:
    limiters = [FileRate(tmp_path / "rate", 10.0) for _ in range(3)]
    if BROKER_URL.startswith("redis"):
        limiters += [RedisRate(BROKER_URL, 10.0) for _ in range(2)]
        limiters[-1].client.delete("hebdo:send-rate:next-slot")
    for group in (limiters[:3], limiters[3:]):
        if not group:
            continue
        waits = [group[n % len(group)].reserve() for n in range(20)]
        # Twenty messages at 10/s: the last one waits about 1.9 s, whichever limiter took it.
        assert waits[0] < 0.05
        assert all(b > a for a, b in itertools.pairwise(waits))
        assert 1.7 < waits[-1] <= 1.9


def test_without_redis_each_process_paces_itself_and_does_not_retry_every_message() -> None:
    limiter = RedisRate(f"redis://127.0.0.1:{free_port()}/0", 10.0, processes=2)
    started = time.monotonic()
    waits = [limiter.reserve() for _ in range(5)]
    # One failed connection (refused at once on loopback), then local pacing at 10/s ÷ 2.
    assert time.monotonic() - started < 1.5
    assert waits[0] < 0.05 and 0.7 < waits[-1] <= 0.8


def test_dkim_signature_covers_the_list_headers_and_verifies(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str], tmp_path: Path
) -> None:
    key = tmp_path / "dkim.pem"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            str(key),
        ],
        check=True,
        capture_output=True,
    )
    public = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    app = make_app({**env, "HEBDO_DKIM_KEY_FILE": str(key), "HEBDO_DKIM_SELECTOR": "hebdo2026"})
    add_article(app, 1, NOW - timedelta(days=1))
    with app.app_context():
        s = app.config["SETTINGS"]
        plan_issue(s, WEEK, NOW)
        issue = get_issue(WEEK)
        assert issue is not None
        mail = mail_for(
            s, mail_template(s, issue, "fr"), Recipient(1, "a@exemple.fr", "fr", NOW), NOW
        )
        confirm = build_message(
            s,
            to="b@exemple.fr",
            subject="Confirmez",
            text="t",
            html="<p>h</p>",
            unsubscribe_url="https://hebdo.example.fr/unsubscribe/x",
        )

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"hebdo2026._domainkey.news.example.fr."
        return record

    for data in (mail.data, confirm.data):
        assert data.startswith(b"DKIM-Signature: ")
        signed = data.split(b"\r\n\r\n", 1)[0].split(b"h=", 1)[1].split(b";", 1)[0]
        names = set(signed.replace(b"\r\n", b"").replace(b" ", b"").lower().split(b":"))
        assert {
            b"from",
            b"subject",
            b"date",
            b"message-id",
            b"list-unsubscribe",
            b"list-unsubscribe-post",
        } <= names
        assert dkim.verify(data, dnsfunc=dns)
        assert not dkim.verify(data.replace(b"/unsubscribe/", b"/unsubscribX/", 1), dnsfunc=dns)
        # Oversigned: each of these is listed once more than it occurs (Reply-To, absent,
        # once), so a header added on the way, even one hebdo never wrote, breaks the
        # signature.
        listed = signed.replace(b"\r\n", b"").replace(b" ", b"").lower().split(b":")
        for name in (b"from", b"to", b"subject", b"list-id", b"list-unsubscribe"):
            assert listed.count(name) == 2, name
        assert listed.count(b"reply-to") == 1
        head, sep, body = data.partition(b"\r\n\r\n")
        for added in (b"From: Bank <ceo@bank.example>", b"Reply-To: attacker@evil.example"):
            assert not dkim.verify(head + b"\r\n" + added + sep + body, dnsfunc=dns), added

    # With HEBDO_REPLY_TO, every mail says where replies go, and Reply-To is signed twice.
    replying = make_app(
        {
            **env,
            "HEBDO_DKIM_KEY_FILE": str(key),
            "HEBDO_DKIM_SELECTOR": "hebdo2026",
            "HEBDO_REPLY_TO": "redaction@news.example.fr",
        }
    )
    with replying.app_context():
        answered = build_message(
            replying.config["SETTINGS"],
            to="c@exemple.fr",
            subject="Confirmez",
            text="t",
            html="<p>h</p>",
            unsubscribe_url="https://hebdo.example.fr/unsubscribe/x",
        )
    assert b"\r\nReply-To: redaction@news.example.fr\r\n" in answered.data
    signed = answered.data.split(b"h=", 1)[1].split(b";", 1)[0]
    assert (
        signed.replace(b"\r\n", b"").replace(b" ", b"").lower().split(b":").count(b"reply-to") == 2
    )
    assert dkim.verify(answered.data, dnsfunc=dns)


def test_a_batch_cut_by_the_time_limit_hands_back_what_it_never_tried(
    batch_app: Flask, smtp_server: SMTPSink
) -> None:
    sender = begin(batch_app, 6)
    settings = sender.settings

    class TimeLimited(SMTPTransport):
        """The real transport, with Celery's soft time limit striking during the third send."""

        calls = 0

        def send(self, mail: Outgoing, **options: Any) -> str:
            TimeLimited.calls += 1
            if TimeLimited.calls == 3:
                raise SoftTimeLimitExceeded()
            return super().send(mail, **options)

    issue_id = sender.issue().id
    with (
        batch_app.app_context(),
        TimeLimited(settings) as transport,
        pytest.raises(SoftTimeLimitExceeded),
    ):
        delivery.send_batch(settings, issue_id, transport=transport, clock=lambda: NOW)
    rows = [sender.deliveries()[f"reader{n}@exemple.fr"] for n in range(6)]
    assert [r.status for r in rows] == ["sent"] * 2 + ["queued"] * 4
    # The row in flight may have gone out: retried once at most, a minute later.
    assert rows[2].uncertain and rows[2].attempts == 1
    assert rows[2].next_attempt_at == NOW + timedelta(minutes=1)
    assert [r.attempts for r in rows[3:]] == [0, 0, 0]  # never tried, claim not counted
    assert sender.issue().sent_count == 2
    # The rest goes out with the next batch, the row that was in flight a minute later.
    sender.run(NOW)
    sender.sweep(NOW + timedelta(hours=1))
    sender.run(NOW + timedelta(hours=1))
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        f"reader{n}@exemple.fr" for n in range(6)
    ]
    assert sender.issue().status == "sent"


@pytest.mark.parametrize(
    ("where", "reply"),
    [
        ("rcpt", "554 5.7.1 <reader0@exemple.fr>: Relay access denied"),
        ("rcpt", "550 Sender blocked for poor reputation"),
        ("mail", "553 5.7.1 Sender address rejected: not owned by user"),
    ],
)
def test_a_relay_refusing_us_pauses_the_issue_and_blames_no_reader(
    batch_app: Flask, smtp_server: SMTPSink, where: str, reply: str
) -> None:
    ids = add_subscribers(batch_app, 12)
    if where == "mail":
        smtp_server.mail_reply = reply
    else:
        for n in range(12):
            smtp_server.rcpt_replies[f"reader{n}@exemple.fr"] = reply
    sender = Sender(batch_app)
    sender.start()
    report = sender.run()[0]
    assert report.bounced == 0 and report.sent == 0
    assert report.retried == delivery.POLICY_BREAKER
    issue = sender.issue()
    assert issue.status == "paused" and "refused for a reason on our side" in (issue.note or "")
    rows = sender.deliveries().values()
    assert all(r.status == "queued" for r in rows)
    with batch_app.app_context():
        statuses = db.session.execute(
            select(Subscriber.status).where(Subscriber.id.in_(ids))
        ).scalars()
        assert set(statuses) == {"active"}
        assert not is_suppressed(sender.settings, "reader0@exemple.fr")
    # Fixed on our side, resumed: everyone gets it once.
    smtp_server.mail_reply = None
    smtp_server.rcpt_replies.clear()
    later = NOW + timedelta(minutes=5)
    with batch_app.app_context():
        assert lifecycle.resume(issue.id)
        delivery.dispatch(sender.settings, issue.id, later, sender.enqueue)
    sender.run(later)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(
        f"reader{n}@exemple.fr" for n in range(12)
    )
    assert sender.issue().status == "sent"


def test_cancelling_under_a_running_batch_skips_the_rest_and_closes_the_issue(
    batch_app: Flask, smtp_server: SMTPSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = begin(batch_app, 10)
    issue_id = sender.issue().id
    # The batch looks at the issue's status at every message instead of every 2 s.
    monkeypatch.setattr(delivery, "FLUSH_SECONDS", -1.0)

    class CancelledMidway(SMTPTransport):
        def send(self, mail: Outgoing, **options: Any) -> str:
            reply = super().send(mail, **options)
            if mail.envelope.recipient == "reader2@exemple.fr":
                lifecycle.cancel(issue_id, NOW)  # an editor, from another process
            return reply

    with batch_app.app_context(), CancelledMidway(sender.settings) as transport:
        delivery.send_batch(sender.settings, issue_id, transport=transport, clock=lambda: NOW)
    assert len(smtp_server.messages) == 3
    statuses = [r.status for r in sender.deliveries().values()]
    assert statuses.count("sent") == 3 and statuses.count("skipped") == 7
    with batch_app.app_context():
        state = progress.progress(WEEK, NOW)
    assert state.status == "cancelled" and state.percent == 100.0


def test_rows_of_a_cancelled_issue_left_by_a_dead_worker_are_closed_by_the_sweep(
    batch_app: Flask, smtp_server: SMTPSink
) -> None:
    sender = begin(batch_app, 50)
    with batch_app.app_context():
        issue_id = sender.issue().id
        assert len(delivery.claim(sender.settings, issue_id, NOW)) == 40  # then dies
        assert lifecycle.cancel(issue_id, NOW)
    sender.sweep(NOW + timedelta(hours=1))
    statuses = [r.status for r in sender.deliveries().values()]
    assert statuses.count("skipped") == 50
    assert smtp_server.messages == []


def test_a_batch_whose_rows_were_taken_back_writes_nothing_and_counts_nothing(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    app = make_app({**smtp_env, "HEBDO_CLAIM_TIMEOUT_SECONDS": "60"})
    sender = begin(app, 3, article=True)
    sender.queue.clear()
    with app.app_context():
        issue_id = sender.issue().id
        slow = delivery.claim_rows(sender.settings, issue_id, NOW)  # batch A, then stuck
    sender.sweep(NOW + timedelta(seconds=61))  # takes A's rows back; batch B sends them
    sender.run(NOW + timedelta(seconds=61))
    assert sender.issue().status == "sent" and sender.issue().sent_count == 3
    # Batch A wakes up and records what it believes it sent: not written, not counted.
    report = delivery.BatchReport()
    for row in slow:
        report.note(row, delivery.DeliveryStatus.SENT, sent_at=NOW, smtp_response="250 late")
    with app.app_context():
        delivery._flush(sender.settings, issue_id, report, NOW + timedelta(seconds=90), done=True)
    assert sender.issue().sent_count == 3
    assert {r.smtp_response for r in sender.deliveries().values()} != {"250 late"}


def test_a_slow_but_live_batch_renews_its_claims_so_the_sweep_leaves_them(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app({**smtp_env, "HEBDO_CLAIM_TIMEOUT_SECONDS": "60"})
    sender = begin(app, 8, article=True)
    issue_id = sender.issue().id
    monkeypatch.setattr(delivery, "FLUSH_SECONDS", -1.0)  # write and renew at every row
    ticks = iter(range(10_000))

    def clock() -> datetime:
        return NOW + timedelta(seconds=5 * next(ticks))  # time runs fast for this batch

    class SweptMidway(SMTPTransport):
        def send(self, mail: Outgoing, **options: Any) -> str:
            reply = super().send(mail, **options)
            if mail.envelope.recipient == "reader5@exemple.fr":
                # Long after the batch claimed its rows: a sweep elsewhere looks for stale ones.
                delivery.sweep(sender.settings, clock(), sender.enqueue)
            return reply

    with app.app_context(), SweptMidway(sender.settings) as transport:
        delivery.send_batch(sender.settings, issue_id, transport=transport, clock=clock)
    received = [m.rcpt_tos[0] for m in smtp_server.messages]
    assert sorted(received) == sorted(f"reader{n}@exemple.fr" for n in range(8))
    assert all("claim expired" not in (r.last_error or "") for r in sender.deliveries().values())
    assert sender.issue().status == "sent"


def test_rows_taken_back_under_a_batch_are_left_to_their_new_holder_and_no_copy_strays(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While reader2's message is on the wire, reader3's copy is built ahead; then the
    sweep (another process) takes reader3 and reader4 back. The batch leaves them, sends
    the rest, each to its own reader, and the next batch sends those two: once each."""
    app = make_app(smtp_env)
    sender = begin(app, 8, article=True)
    issue_id = sender.issue().id
    monkeypatch.setattr(delivery, "FLUSH_SECONDS", -1.0)  # renew the claims at every row
    with app.app_context():
        ids = {
            row.email: row.id for row in db.session.execute(select(Subscriber.email, Subscriber.id))
        }
        taken = [sender.deliveries()[f"reader{n}@exemple.fr"].id for n in (3, 4)]

    class TakenBackMidway(SMTPTransport):
        def send(self, mail: Outgoing, **options: Any) -> str:
            reply = super().send(mail, **options)
            if mail.envelope.recipient == "reader2@exemple.fr":
                with db.engine.begin() as other:  # as the sweep does, in its own transaction
                    other.execute(
                        update(Delivery)
                        .where(Delivery.id.in_(taken))
                        .values(status="queued", claimed_at=None)
                    )
            return reply

    with app.app_context(), TakenBackMidway(sender.settings) as transport:
        report = delivery.send_batch(
            sender.settings, issue_id, transport=transport, clock=lambda: NOW
        )
    assert report.sent == 6 and report.lost == 2
    first = [m.rcpt_tos[0] for m in smtp_server.messages]
    assert sorted(first) == sorted(f"reader{n}@exemple.fr" for n in (0, 1, 2, 5, 6, 7))
    sender.queue = [issue_id]
    sender.run()
    rows = sender.deliveries()
    assert smtp_server.duplicates() == 0
    assert len(smtp_server.messages) == 8 and sender.issue().status == "sent"
    for received in smtp_server.messages:
        email = received.rcpt_tos[0]
        message = received.message
        assert message["To"] == email and message["Message-ID"] == rows[email].message_id
        token = message["List-Unsubscribe"].split(",")[0].strip(" <>").rsplit("/", 1)[1]
        with app.app_context():
            assert read_token(sender.settings, Purpose.UNSUBSCRIBE, token)[0] == ids[email]


def test_a_rate_slot_far_ahead_hands_the_rows_back_instead_of_holding_them(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    # One message every 20 s, claims of 60 s: waiting for the second slot would hold the
    # batch's claims for a third of their life, so the rest goes back to the queue.
    app = make_app({**smtp_env, "HEBDO_SEND_RATE": "0.05", "HEBDO_CLAIM_TIMEOUT_SECONDS": "60"})
    sender = begin(app, 4, article=True)
    started = time.monotonic()
    with app.app_context(), open_transport(sender.settings) as transport:
        report = delivery.send_batch(
            sender.settings,
            sender.issue().id,
            transport=transport,
            clock=lambda: NOW,
            rate=send_rate(sender.settings),
        )
    assert time.monotonic() - started < 10
    assert (report.sent, report.released) == (1, 3)
    waiting = [r for r in sender.deliveries().values() if r.status == "queued"]
    assert len(waiting) == 3 and all(r.attempts == 0 for r in waiting)
    assert all(r.next_attempt_at > NOW + timedelta(seconds=15) for r in waiting)


def test_equivalent_category_choices_share_one_variant_and_odd_values_stop_nothing() -> None:
    present = frozenset({"IA", "Startups", "International"})
    both = frozenset({"IA", "Startups"})
    # Another order, a repeat, a category this issue lacks: the same rendering.
    assert delivery.variant_of(["Startups", "IA", "IA"], present) == both
    assert delivery.variant_of(["IA", "Startups", "Sport"], present) == both
    # Every category the issue has, or no choice at all: the whole issue.
    for whole in (["International", "Startups", "IA", "Sport"], [], None):
        assert delivery.variant_of(whole, present) is None
    # Nothing of theirs this week: the empty variant, which is never sent.
    assert delivery.variant_of(["Sport"], present) == frozenset()
    # A value written by hand into the JSON column neither crashes a batch nor narrows.
    assert delivery.variant_of("IA", present) is None
    assert delivery.variant_of([["IA"], 3], present) == frozenset()  # type: ignore[list-item]
