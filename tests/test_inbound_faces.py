"""The three ways in for mail that comes back: `hebdo inbound ingest` (an MTA's pipe, a
maildir), POST /api/v1/inbound, and `hebdo inbound serve` (SMTP and LMTP, a real process
spoken to over loopback); their answers when the mail is no mail or the database is away.
"""

from __future__ import annotations

import mailbox
import re
import smtplib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from service.extensions import db
from service.models import InboundMessage, Status
from tests.support.admin import api_token
from tests.support.inbound import BOUNCES, READER, dsn, reply
from tests.support.mail import subscriber
from tests.support.processes import Process
from tests.support.smtp import Received, free_port

GARBAGE = b"\x00\x01 this is no mail \xff\r\n" * 5


def recorded(app: Flask) -> int:
    with app.app_context():
        return int(db.session.execute(select(func.count(InboundMessage.id))).scalar_one())


def test_an_mta_pipe_gets_sysexits_answers(inbound_app: Flask, sent: dict[str, Received]) -> None:
    mail = sent[READER]
    runner = inbound_app.test_cli_runner()
    # Postfix's pipe: `hebdo inbound ingest --sender ${sender} --recipient ${original_recipient}`.
    # The VERP address is only in the envelope (the DSN's To: is the bare address).
    piped = runner.invoke(
        args=["inbound", "ingest", "--sender", "", "--recipient", mail.mail_from],
        input=dsn(BOUNCES, READER),
    )
    assert piped.exit_code == 0, piped.output
    assert f"stdin: bounce bounced (subscriber {subscriber(inbound_app, READER).id}" in piped.output
    assert subscriber(inbound_app, READER).status == Status.BOUNCED
    again = runner.invoke(
        args=["inbound", "ingest", "--sender", "", "--recipient", mail.mail_from],
        input=dsn(BOUNCES, READER),
    )
    assert again.exit_code == 0 and "(received before)" in again.output
    refused = runner.invoke(args=["inbound", "ingest"], input=GARBAGE)
    assert refused.exit_code == 65 and "not a mail" in refused.output


def test_with_the_database_down_the_pipe_asks_to_be_retried(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str], tmp_path: Path
) -> None:
    down = make_app({**env, "HEBDO_DATABASE_URL": f"sqlite:///{tmp_path}/missing/db.sqlite3"})
    piped = down.test_cli_runner().invoke(
        args=["inbound", "ingest"], input=reply(READER, "news@news.example.fr", "Re: Hebdo")
    )
    assert piped.exit_code == 75, piped.output
    assert "database unavailable, try again later" in piped.output


def test_a_maildir_keeps_what_is_for_a_person_and_removes_the_rest(
    inbound_app: Flask, sent: dict[str, Received], tmp_path: Path
) -> None:
    mail = sent[READER]
    folder = tmp_path / "bounces"
    box = mailbox.Maildir(folder, create=True)
    forged = dsn(BOUNCES, "reader2@exemple.fr")
    human = reply("reader0@exemple.fr", "news@news.example.fr", "Re: Hebdo", "Bravo !")
    for raw in (dsn(mail.mail_from, READER), forged, human, GARBAGE):
        box.add(raw)
    # No HEBDO_REPLY_TO forward needed here: the reply is forwarded (acted on).
    result = inbound_app.test_cli_runner().invoke(
        args=["inbound", "ingest", "--maildir", str(folder)]
    )
    assert result.exit_code == 65, result.output
    verdicts = sorted(
        re.sub(r" \(.*\)", "", line.split(": ")[1]) for line in result.output.splitlines()
    )
    assert verdicts == ["bounce bounced", "bounce unattributed", "not a mail", "reply forwarded"]
    assert list(box.iterkeys()) == []
    kept = box.get_folder("hebdo-kept")
    assert sorted(kept.get_bytes(k) for k in kept.iterkeys()) == sorted([forged, GARBAGE])
    assert recorded(inbound_app) == 3
    assert subscriber(inbound_app, "reader2@exemple.fr").status == Status.ACTIVE


def test_the_webhook_takes_a_mail_with_a_feedback_token(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    mail = sent[READER]
    client = inbound_app.test_client()
    headers = {**api_token(inbound_app, "feedback", "relay"), "Content-Type": "message/rfc822"}
    answer = client.post(
        "/api/v1/inbound",
        query_string={"sender": "", "recipient": mail.mail_from},  # "+" encoded as %2B
        data=dsn(BOUNCES, READER),
        headers=headers,
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["kind"] == "bounce" and body["verdict"] == "bounced"
    assert body["issue"] == "2026-W48" and body["replay"] is False
    assert subscriber(inbound_app, READER).status == Status.BOUNCED
    assert client.post("/api/v1/inbound", data=GARBAGE, headers=headers).status_code == 422
    assert (
        client.post(
            "/api/v1/inbound", data=b"x", headers={**headers, "Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    publisher = {**api_token(inbound_app, "publisher", "cms"), "Content-Type": "message/rfc822"}
    assert (
        client.post("/api/v1/inbound", data=dsn(BOUNCES, READER), headers=publisher).status_code
        == 403
    )
    assert client.post("/api/v1/inbound", data=dsn(BOUNCES, READER)).status_code == 401
    too_big = b"Subject: x\r\n\r\n" + b"a" * (2 * 1024 * 1024)
    assert client.post("/api/v1/inbound", data=too_big, headers=headers).status_code == 413
    bad = client.post("/api/v1/inbound?recipient=a%0Ab", data=dsn(BOUNCES, READER), headers=headers)
    assert bad.status_code == 422 and bad.get_json()["error"] == "invalid_field"
    assert recorded(inbound_app) == 1


def _serve(spawn: Callable[..., Process], values: dict[str, str], *extra: str) -> int:
    port = free_port()
    argv = [sys.executable, "-m", "service.cli", "inbound", "serve", "--port", str(port), *extra]
    spawn(argv, values, ready="listening on")
    return port


@pytest.fixture
def inbound_env(smtp_env: dict[str, str]) -> dict[str, str]:
    return {
        **smtp_env,
        "HEBDO_BOUNCE_ADDRESS": BOUNCES,
        "HEBDO_REPLY_TO": "redaction@news.example.fr",
    }


@pytest.mark.slow
def test_the_smtp_listener_answers_250_only_once_recorded(
    inbound_app: Flask,
    sent: dict[str, Received],
    spawn: Callable[..., Process],
    inbound_env: dict[str, str],
) -> None:
    mail = sent[READER]
    port = _serve(spawn, inbound_env)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("mx.example.org")
        smtp.mail("<>")
        assert smtp.rcpt("someone@elsewhere.example")[0] == 550
        assert smtp.rcpt(mail.mail_from)[0] == 250
        code, text = smtp.data(dsn(BOUNCES, READER))
        assert code == 250 and b"bounce bounced" in text
        smtp.mail("<>")
        smtp.rcpt(BOUNCES)
        code, text = smtp.data(GARBAGE)
        assert code == 550 and b"Not a mail" in text
    assert subscriber(inbound_app, READER).status == Status.BOUNCED


@pytest.mark.slow
def test_the_lmtp_listener_answers_each_recipient(
    inbound_app: Flask,
    sent: dict[str, Received],
    spawn: Callable[..., Process],
    inbound_env: dict[str, str],
) -> None:
    port = _serve(spawn, inbound_env, "--lmtp")
    mailto = " ".join(str(sent[READER].message["List-Unsubscribe"]).split())
    mailto = mailto.split("<mailto:", 1)[1].split("?", 1)[0]
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        refused = lmtp.sendmail(READER, [mailto], reply(READER, mailto, "unsubscribe", "stop"))
        assert refused == {}
    assert subscriber(inbound_app, READER).status == Status.UNSUBSCRIBED


@pytest.mark.slow
def test_with_the_database_away_the_listener_answers_451(
    spawn: Callable[..., Process], inbound_env: dict[str, str], tmp_path: Path
) -> None:
    values = {**inbound_env, "HEBDO_DATABASE_URL": f"sqlite:///{tmp_path}/missing/db.sqlite3"}
    port = _serve(spawn, values)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("mx.example.org")
        smtp.mail("<>")
        smtp.rcpt(BOUNCES)
        code, text = smtp.data(dsn(BOUNCES, READER))
        assert code == 451, text
