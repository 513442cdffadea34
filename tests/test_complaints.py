"""Feedback-loop complaints: ARF reports about mails hebdo really sent, through the webhook,
the command (standard input, files, a maildir), and what they change.

Each report wraps the bytes the loopback SMTP server received, as a mailbox provider's
feedback loop would: whole or headers only, with the reader's address redacted or not.
"""

from __future__ import annotations

import base64
import mailbox
import quopri
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from service.digest import delivery
from service.digest.planning import get_issue, plan_issue
from service.extensions import db
from service.inbound.complaints import NotAReport, parse_report
from service.mail.transport import open_transport
from service.models import AuditEvent, Issue, Status, Subscriber
from service.subscribers.suppressions import is_suppressed
from tests.support.admin import api_token
from tests.support.data import add_article, add_subscribers, metric_value
from tests.support.mail import arf, link, list_unsubscribe_path, subscriber, sweep
from tests.support.sending import NOW, WEEK, Sender
from tests.support.smtp import Received, SMTPSink

JSON_SIGNUP = "/api/v1/subscriptions"


@pytest.fixture
def sent(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> tuple[Flask, dict[str, bytes]]:
    """Issue 2026-W48 sent to three active readers: the app and each reader's mail bytes."""
    app = make_app(smtp_env)
    add_article(app, 1, NOW - timedelta(days=1))
    add_subscribers(app, 3)
    sender = Sender(app)
    assert sender.start() == 3
    sender.run()
    assert sender.issue().status == "sent"
    return app, {m.rcpt_tos[0]: m.data for m in smtp_server.messages}


LATER = NOW + timedelta(days=7)
NEXT_WEEK = "2026-W49"


def send_next_week(app: Flask) -> int:
    """Plan and send issue 2026-W49, a week after the fixture's, in this process as workers
    would; return its recipients."""
    add_article(app, 2, LATER - timedelta(days=1))
    settings = app.config["SETTINGS"]
    queue: list[int] = []
    with app.app_context():
        plan_issue(settings, NEXT_WEEK, LATER)
        issue = get_issue(NEXT_WEEK)
        assert issue is not None
        recipients = delivery.start_send(settings, issue.id, LATER)
        delivery.dispatch(settings, issue.id, LATER, lambda i: bool(queue.append(i)) or True)
        with open_transport(settings) as transport:
            for issue_id in queue:
                delivery.send_batch(settings, issue_id, transport=transport, clock=lambda: LATER)
    return recipients


def feedback_headers(app: Flask) -> dict[str, str]:
    return {**api_token(app, "feedback", "relay"), "Content-Type": "message/rfc822"}


def suppressed(app: Flask, email: str) -> bool:
    with app.app_context():
        return is_suppressed(app.config["SETTINGS"], email)


def complaint_count(app: Flask) -> int:
    with app.app_context():
        return db.session.execute(
            select(Issue.complaint_count).where(Issue.week == WEEK)
        ).scalar_one()


def test_a_complaint_suppresses_the_reader_once_and_counts_against_its_issue(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    app, mails = sent
    client = app.test_client()
    headers = feedback_headers(app)
    before = client.get("/metrics").get_data(as_text=True)
    report = arf(mails["reader1@exemple.fr"], redact="reader1@exemple.fr")

    answer = client.post("/api/v1/complaints", data=report, headers=headers)

    reader = subscriber(app, "reader1@exemple.fr")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {
        "result": "complained",
        "reason": "marked complained and suppressed",
        "subscriber_id": reader.id,
        "issue": WEEK,
    }
    assert reader.status == Status.COMPLAINED and reader.unsubscribe_channel == "complaint"
    assert suppressed(app, "reader1@exemple.fr")
    assert not suppressed(app, "reader0@exemple.fr")
    assert subscriber(app, "reader0@exemple.fr").status == Status.ACTIVE
    assert complaint_count(app) == 1
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "complaint")
        ).scalar_one()
        assert (event.subscriber_id, event.actor) == (reader.id, "token:relay")
        assert (event.before_status, event.after_status) == ("active", "complained")
        assert event.detail == {
            "source": "api",
            "feedback_type": "abuse",
            "reporter": "Microsoft JMRP/1.0",
            "issue": WEEK,
        }

    # The provider sends it again (or the reader clicks twice): nothing counts twice.
    again = client.post("/api/v1/complaints", data=report, headers=headers)
    assert again.status_code == 200 and again.get_json()["result"] == "duplicate"
    assert complaint_count(app) == 1

    after = client.get("/metrics").get_data(as_text=True)

    def grew(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    # The admin API and area show the issue's complaints.
    shown = client.get(f"/api/v1/admin/issues/{WEEK}", headers=api_token(app, name="reader"))
    assert shown.get_json()["complaints"] == 1
    listed = client.get("/api/v1/admin/issues", headers=api_token(app, name="lister"))
    assert [i["complaints"] for i in listed.get_json()["items"] if i["week"] == WEEK] == [1]

    assert grew("hebdo_complaint_reports_total", result="complained") == 1
    assert grew("hebdo_complaint_reports_total", result="duplicate") == 1
    assert grew("hebdo_unsubscribes_total", channel="complaint") == 1
    # The complaint-rate alert's two series: 1 complaint for 3 sent.
    assert metric_value(after, "hebdo_issue_complaints", week=WEEK) == 1
    assert metric_value(after, "hebdo_issue_sent", week=WEEK) == 3
    assert metric_value(after, "hebdo_subscribers", status="complained") == 1


def test_the_next_issue_is_not_sent_to_a_reader_who_complained(
    sent: tuple[Flask, dict[str, bytes]], smtp_server: SMTPSink
) -> None:
    app, mails = sent
    client = app.test_client()
    client.post(
        "/api/v1/complaints", data=arf(mails["reader2@exemple.fr"]), headers=feedback_headers(app)
    )
    smtp_server.messages.clear()
    assert send_next_week(app) == 2
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == [
        "reader0@exemple.fr",
        "reader1@exemple.fr",
    ]


def test_headers_only_from_the_command_on_standard_input(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    """A Postfix alias piping the report to `hebdo complaints ingest`: the headers-only form,
    no Original-Rcpt-To, the address redacted. The signed link still names the reader."""
    app, mails = sent
    report = arf(mails["reader0@exemple.fr"], headers_only=True, redact="reader0@exemple.fr")
    result = app.test_cli_runner().invoke(args=["complaints", "ingest"], input=report)
    reader = subscriber(app, "reader0@exemple.fr")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"stdin: complained (subscriber {reader.id}, issue {WEEK}): "
        "marked complained and suppressed\n"
    )
    assert "reader0" not in result.output
    assert reader.status == Status.COMPLAINED and suppressed(app, "reader0@exemple.fr")
    assert complaint_count(app) == 1


def test_a_complaint_about_a_confirmation_mail_ends_the_sign_up(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    """Somebody signed a stranger up; the stranger marks the confirmation mail as spam."""
    client = smtp_app.test_client()
    client.post(JSON_SIGNUP, json={"email": "victime@exemple.fr"})
    assert sweep(smtp_app) == 1
    confirmation = smtp_server.messages[0]

    answer = client.post(
        "/api/v1/complaints", data=arf(confirmation.data), headers=feedback_headers(smtp_app)
    )

    assert answer.get_json()["result"] == "complained" and answer.get_json()["issue"] is None
    assert subscriber(smtp_app, "victime@exemple.fr").status == Status.COMPLAINED
    # The link in that mail no longer confirms.
    page = client.post(link(confirmation, "confirm"))
    assert page.status_code == 400
    assert subscriber(smtp_app, "victime@exemple.fr").status == Status.COMPLAINED


def test_without_the_link_the_recipient_is_used_only_on_mail_of_this_list(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    app, mails = sent
    client = app.test_client()
    headers = feedback_headers(app)

    def stripped(mail: bytes, list_id: bytes | None = None) -> bytes:
        """The reported mail without its List-Unsubscribe header (a stripping gateway)."""
        head, _, body = mail.partition(b"\r\n\r\n")
        lines = head.replace(b"\r\n ", b" ").split(b"\r\n")
        kept = [line for line in lines if not line.lower().startswith(b"list-unsubscribe:")]
        if list_id is not None:
            kept = [
                b"List-Id: " + list_id if line.startswith(b"List-Id:") else line for line in kept
            ]
        return b"\r\n".join(kept) + b"\r\n\r\n" + body

    other_list = arf(
        stripped(mails["reader0@exemple.fr"], b"<promo.news.example.fr>"),
        rcpt="rfc822;reader0@exemple.fr",
    )
    answer = client.post("/api/v1/complaints", data=other_list, headers=headers)
    assert answer.get_json()["result"] == "ignored"
    assert subscriber(app, "reader0@exemple.fr").status == Status.ACTIVE

    redacted = arf(stripped(mails["reader1@exemple.fr"]), redact="reader1@exemple.fr")
    answer = client.post("/api/v1/complaints", data=redacted, headers=headers)
    assert answer.get_json()["result"] == "unknown"
    assert subscriber(app, "reader1@exemple.fr").status == Status.ACTIVE

    ours = arf(stripped(mails["reader2@exemple.fr"]), rcpt="rfc822; Reader2@Exemple.fr")
    answer = client.post("/api/v1/complaints", data=ours, headers=headers)
    assert answer.get_json()["result"] == "complained"
    assert answer.get_json()["issue"] == WEEK
    assert subscriber(app, "reader2@exemple.fr").status == Status.COMPLAINED
    assert complaint_count(app) == 1


@pytest.mark.parametrize("feedback_type", ["not-spam", "auth-failure"])
def test_reports_that_are_not_complaints_change_nothing(
    sent: tuple[Flask, dict[str, bytes]], feedback_type: str
) -> None:
    app, mails = sent
    report = arf(mails["reader0@exemple.fr"], feedback_type=feedback_type)
    answer = app.test_client().post(
        "/api/v1/complaints", data=report, headers=feedback_headers(app)
    )
    assert answer.status_code == 200
    assert answer.get_json()["result"] == "ignored"
    assert feedback_type in answer.get_json()["reason"]
    assert subscriber(app, "reader0@exemple.fr").status == Status.ACTIVE
    assert not suppressed(app, "reader0@exemple.fr") and complaint_count(app) == 0


def test_a_complaint_about_an_erased_reader_stores_nothing(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    app, mails = sent
    client = app.test_client()
    reader = subscriber(app, "reader1@exemple.fr")
    erased = client.delete(f"/api/v1/admin/subscribers/{reader.id}", headers=api_token(app))
    assert erased.status_code == 204

    answer = client.post(
        "/api/v1/complaints", data=arf(mails["reader1@exemple.fr"]), headers=feedback_headers(app)
    )

    assert answer.get_json()["result"] == "unknown"
    assert "erased" in answer.get_json()["reason"]
    with app.app_context():
        assert db.session.get(Subscriber, reader.id) is None
        assert (
            db.session.execute(select(AuditEvent).where(AuditEvent.action == "complaint")).first()
            is None
        )
    # Still suppressed, by the erasure.
    assert suppressed(app, "reader1@exemple.fr")


def test_concurrent_copies_of_one_report_count_once(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    app, mails = sent
    headers = feedback_headers(app)
    report = arf(mails["reader0@exemple.fr"])
    results: list[str] = []
    start = threading.Barrier(4)

    def post() -> None:
        client = app.test_client()
        start.wait()
        answer = client.post("/api/v1/complaints", data=report, headers=headers)
        results.append(answer.get_json()["result"])

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == ["complained", "duplicate", "duplicate", "duplicate"]
    assert complaint_count(app) == 1


# ------------------------------------------------------------------ bad input, refusals


PLAIN_MAIL = (
    b"From: <someone@example.net>\r\nTo: <fbl@news.example.fr>\r\nSubject: hello\r\n"
    b"Content-Type: text/plain\r\n\r\nNot a report.\r\n"
)


def _without(report: bytes, text: bytes) -> bytes:
    return report.replace(text, b"")


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda r: PLAIN_MAIL, "Content-Type is text/plain, not multipart/report"),
        (
            lambda r: r.replace(b"report-type=feedback-report", b"report-type=delivery-status"),
            "report-type is delivery-status, not feedback-report",
        ),
        (
            lambda r: r.replace(b"message/feedback-report", b"text/plain"),
            "no message/feedback-report part",
        ),
        (
            lambda r: _without(r, b"Feedback-Type: abuse"),
            "the feedback report has no Feedback-Type",
        ),
        (
            lambda r: r.replace(b"Content-Type: message/rfc822", b"Content-Type: text/plain"),
            "the report does not include the reported mail or its headers",
        ),
    ],
    ids=["plain-mail", "delivery-status", "no-feedback-part", "no-type", "no-original"],
)
def test_what_is_not_a_feedback_report_is_refused_with_the_reason(
    sent: tuple[Flask, dict[str, bytes]], mangle: Callable[[bytes], bytes], reason: str
) -> None:
    app, mails = sent
    raw = mangle(arf(mails["reader0@exemple.fr"]))
    with pytest.raises(NotAReport, match=reason):
        parse_report(raw)
    answer = app.test_client().post("/api/v1/complaints", data=raw, headers=feedback_headers(app))
    assert answer.status_code == 422
    assert answer.get_json() == {"error": "not_a_report", "message": reason}
    result = app.test_cli_runner().invoke(args=["complaints", "ingest"], input=raw)
    assert result.exit_code == 65 and reason in result.output
    assert subscriber(app, "reader0@exemple.fr").status == Status.ACTIVE


def test_the_webhook_wants_a_feedback_token_and_a_mail(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    app, mails = sent
    client = app.test_client()
    report = arf(mails["reader0@exemple.fr"])
    rfc822 = {"Content-Type": "message/rfc822"}

    assert client.post("/api/v1/complaints", data=report, headers=rfc822).status_code == 401
    publisher = {**api_token(app, "publisher"), **rfc822}
    assert client.post("/api/v1/complaints", data=report, headers=publisher).status_code == 403
    as_text = {**api_token(app, "feedback", "text"), "Content-Type": "text/plain"}
    refused = client.post("/api/v1/complaints", data=report, headers=as_text)
    assert refused.status_code == 415
    too_big = client.post(
        "/api/v1/complaints", data=report + b"x" * (2 * 1024 * 1024), headers=feedback_headers(app)
    )
    assert too_big.status_code == 413 and too_big.get_json()["error"] == "request_entity_too_large"
    assert subscriber(app, "reader0@exemple.fr").status == Status.ACTIVE

    # An admin token may post reports; a feedback token may do nothing else.
    admin = {**api_token(app, "admin"), **rfc822}
    assert client.post("/api/v1/complaints", data=report, headers=admin).status_code == 200
    feedback = api_token(app, "feedback", "narrow")
    assert client.get("/api/v1/admin/subscribers", headers=feedback).status_code == 403
    article = {"url": "https://news.example.fr/a", "title": "Titre"}
    assert client.post("/api/v1/articles", json=article, headers=feedback).status_code == 403


# ------------------------------------------------------------------ what real reports look like


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_a_reported_mail_in_a_transfer_encoding_is_decoded(
    sent: tuple[Flask, dict[str, bytes]], encoding: str
) -> None:
    """RFC 2046 forbids encoding a message/rfc822 part; some feedback loops do it anyway.
    The complaint is about the older of two issues: its Message-ID was read."""
    app, mails = sent
    send_next_week(app)
    original = mails["reader0@exemple.fr"]
    body = base64.encodebytes(original) if encoding == "base64" else quopri.encodestring(original)
    report = arf(original).replace(
        b"Content-Type: message/rfc822\r\n\r\n" + original,
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: "
        + encoding.encode()
        + b"\r\n\r\n"
        + body,
    )
    assert report != arf(original)
    answer = app.test_client().post(
        "/api/v1/complaints", data=report, headers=feedback_headers(app)
    )
    assert answer.get_json()["result"] == "complained", answer.get_json()
    assert answer.get_json()["issue"] == WEEK


def test_a_relays_own_list_unsubscribe_and_message_id_do_not_hide_the_reader(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    """A relay that adds its own unsubscribe link above ours and replaces the Message-ID (as
    Amazon SES does): the reader is found, and the complaint counts against the last issue
    they were sent."""
    app, mails = sent
    send_next_week(app)
    head, _, body = mails["reader1@exemple.fr"].partition(b"\r\n\r\n")
    head = re.sub(
        rb"Message-ID: <[^>]+>", b"Message-ID: <0100018c-relay@email.amazonses.com>", head
    )
    relayed = (
        b"List-Unsubscribe: <https://relay.example/unsubscribe/abc.def.ghi>\r\n"
        + head
        + b"\r\n\r\n"
        + body
    )
    answer = app.test_client().post(
        "/api/v1/complaints", data=arf(relayed), headers=feedback_headers(app)
    )
    assert answer.get_json()["result"] == "complained"
    assert answer.get_json()["issue"] == NEXT_WEEK and complaint_count(app) == 0


def test_a_complaint_about_a_former_readers_new_confirmation_is_counted_against_no_issue(
    sent: tuple[Flask, dict[str, bytes]], smtp_server: SMTPSink
) -> None:
    app, mails = sent
    client = app.test_client()
    issue_mail = Received("", [], mails["reader0@exemple.fr"], [])
    client.post(list_unsubscribe_path(issue_mail), data={"List-Unsubscribe": "One-Click"})
    assert subscriber(app, "reader0@exemple.fr").status == Status.UNSUBSCRIBED
    client.post(JSON_SIGNUP, json={"email": "reader0@exemple.fr"})
    smtp_server.messages.clear()
    assert sweep(app) == 1
    confirmation = smtp_server.messages[0].data

    answer = client.post(
        "/api/v1/complaints", data=arf(confirmation), headers=feedback_headers(app)
    )

    assert answer.get_json()["result"] == "complained" and answer.get_json()["issue"] is None
    assert complaint_count(app) == 0


def test_a_blank_line_before_the_feedback_fields_is_tolerated(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    _app, mails = sent
    report = arf(mails["reader0@exemple.fr"]).replace(
        b"Content-Type: message/feedback-report\r\n\r\n",
        b"Content-Type: message/feedback-report\r\n\r\n\r\n",
    )
    assert parse_report(report).feedback_type == "abuse"


def test_an_address_alone_cannot_get_somebody_marked_complained(
    sent: tuple[Flask, dict[str, bytes]],
) -> None:
    """Anybody can mail the feedback address: a made-up report naming a subscriber, with the
    list's public List-Id but no link and no Message-ID of a delivery to them, does nothing."""
    app, _mails = sent
    forged = arf(
        b"List-Id: <hebdo.news.example.fr>\r\nMessage-ID: <guess@news.example.fr>\r\n"
        b"To: reader0@exemple.fr\r\n\r\n",
        rcpt="rfc822;reader0@exemple.fr",
        headers_only=True,
    )
    for headers in (feedback_headers(app), None):
        if headers:
            answer = app.test_client().post("/api/v1/complaints", data=forged, headers=headers)
            assert answer.get_json()["result"] == "unknown"
            assert answer.get_json()["subscriber_id"] is None
        else:
            piped = app.test_cli_runner().invoke(args=["complaints", "ingest"], input=forged)
            assert piped.exit_code == 0 and "unknown" in piped.output
    assert subscriber(app, "reader0@exemple.fr").status == Status.ACTIVE
    assert not suppressed(app, "reader0@exemple.fr")


@pytest.mark.parametrize(
    "broken",
    [b"Message-ID: <\r\n", b"To: a@\r\n", b"List-Unsubscribe: <\r\n"],
    ids=["message-id", "to", "list-unsubscribe"],
)
def test_a_broken_header_in_the_reported_mail_is_refused_not_a_crash(
    sent: tuple[Flask, dict[str, bytes]], broken: bytes
) -> None:
    app, _mails = sent
    report = arf(b"List-Id: <hebdo.news.example.fr>\r\n" + broken + b"\r\n", headers_only=True)
    answer = app.test_client().post(
        "/api/v1/complaints", data=report, headers=feedback_headers(app)
    )
    assert answer.status_code in (200, 422), answer.get_data(as_text=True)
    if answer.status_code == 200:
        assert answer.get_json()["result"] == "unknown"
    result = app.test_cli_runner().invoke(args=["complaints", "ingest"], input=report)
    assert result.exit_code in (0, 65), result.output


# ------------------------------------------------------------------ maildir, database down


def _maildir(folder: Path, *messages: bytes) -> mailbox.Maildir:
    box = mailbox.Maildir(folder, create=True)
    for raw in messages:
        box.add(raw)  # bytes: stored as they are
    return box


def test_a_maildir_run_removes_what_it_acted_on_and_keeps_the_rest_for_a_person(
    sent: tuple[Flask, dict[str, bytes]], tmp_path: Path
) -> None:
    app, mails = sent
    folder = tmp_path / "fbl"
    other_stream = (
        arf(mails["reader1@exemple.fr"])
        .replace(b"/unsubscribe/", b"/desabonnement/")
        .replace(b"List-Id: <hebdo.news.example.fr>", b"List-Id: <promo.news.example.fr>")
    )
    box = _maildir(
        folder,
        arf(mails["reader0@exemple.fr"]),
        PLAIN_MAIL,
        other_stream,
        arf(mails["reader0@exemple.fr"]),
    )
    # An IMAP client opened the folder: one report has moved to cur/, unread by hebdo.
    in_cur = arf(mails["reader2@exemple.fr"])
    message = mailbox.MaildirMessage(in_cur)
    message.set_subdir("cur")
    message.add_flag("S")
    box.add(message)
    runner = app.test_cli_runner()

    first = runner.invoke(args=["complaints", "ingest", "--maildir", str(folder)])

    assert first.exit_code == 65, first.output
    results = sorted(line.split(": ", 2)[1].split(" ")[0] for line in first.output.splitlines())
    assert results == ["complained", "complained", "duplicate", "ignored", "not"]
    assert list(box.iterkeys()) == []
    kept = box.get_folder("hebdo-kept")
    # Kept byte for byte.
    assert sorted(kept.get_bytes(key) for key in kept.iterkeys()) == sorted(
        [PLAIN_MAIL, other_stream]
    )
    assert subscriber(app, "reader0@exemple.fr").status == Status.COMPLAINED
    assert subscriber(app, "reader2@exemple.fr").status == Status.COMPLAINED
    assert subscriber(app, "reader1@exemple.fr").status == Status.ACTIVE
    # The kept mails wait for a person: the next run has nothing to do.
    second = runner.invoke(args=["complaints", "ingest", "--maildir", str(folder)])
    assert second.exit_code == 0 and second.output == ""
    # A report about another mail stream is kept, but is no error (cron stays quiet).
    box.add(other_stream)
    third = runner.invoke(args=["complaints", "ingest", "--maildir", str(folder)])
    assert third.exit_code == 0 and ": ignored" in third.output
    assert len(list(kept.iterkeys())) == 3 and list(box.iterkeys()) == []


def test_with_the_database_down_the_command_asks_to_be_retried_and_keeps_the_mail(
    sent: tuple[Flask, dict[str, bytes]],
    make_app: Callable[[dict[str, str]], Flask],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    _app, mails = sent
    box = _maildir(tmp_path / "fbl", arf(mails["reader0@exemple.fr"]))
    # A SQLite file in a folder that does not exist: every connection fails.
    down = make_app({**env, "HEBDO_DATABASE_URL": f"sqlite:///{tmp_path}/missing/db.sqlite3"})
    runner = down.test_cli_runner()

    piped = runner.invoke(args=["complaints", "ingest"], input=arf(mails["reader0@exemple.fr"]))
    assert piped.exit_code == 75, piped.output
    assert "database unavailable, try again later" in piped.output

    kept = runner.invoke(args=["complaints", "ingest", "--maildir", str(tmp_path / "fbl")])
    assert kept.exit_code == 75
    assert len(list(box.iterkeys())) == 1 and not (tmp_path / "fbl" / ".hebdo-kept").exists()


def _report_of_many_parts(parts: int, nested: int = 0) -> bytes:
    """A feedback report with `parts` empty parts, or its one part nested `nested` deep: the
    1.85 MB report of 50,000 parts once held a web worker for 11 s."""
    head = (
        b"From: <staff@fbl.example.net>\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=b0\r\n\r\n"
    )
    if nested:
        part = b"Content-Type: text/plain\r\n\r\nx\r\n"
        for depth in range(nested, 0, -1):
            boundary = f"b{depth}".encode()
            part = (
                b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
                b"--" + boundary + b"\r\n" + part + b"--" + boundary + b"--\r\n"
            )
        return head + b"--b0\r\n" + part + b"--b0--\r\n"
    part = b"--b0\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    return head + part * parts + b"--b0--\r\n"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_report_of_many_parts(50_000), "more than 200 MIME parts"),
        (_report_of_many_parts(0, nested=12), "MIME parts nested deeper than 10"),
    ],
    ids=["50000-parts", "nested-12"],
)
def test_a_report_of_too_many_parts_is_refused_with_the_reason_on_every_way_in(
    app: Flask, raw: bytes, reason: str
) -> None:
    with pytest.raises(NotAReport, match=reason):
        parse_report(raw)
    client = app.test_client()
    headers = feedback_headers(app)
    answer = client.post("/api/v1/complaints", data=raw, headers=headers)
    assert answer.status_code == 422
    assert answer.get_json() == {"error": "not_a_report", "message": reason}
    runner = app.test_cli_runner()
    result = runner.invoke(args=["complaints", "ingest"], input=raw)
    assert result.exit_code == 65 and reason in result.output
    # The general way in (bounces, replies, reports alike) refuses it the same way.
    inbound = client.post("/api/v1/inbound", data=raw, headers=headers)
    assert inbound.status_code == 422 and reason in inbound.get_json()["message"]
    result = runner.invoke(args=["inbound", "ingest"], input=raw)
    assert result.exit_code == 65 and reason in result.output
