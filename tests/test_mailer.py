"""The mailer, judged by the bytes that leave: headers, structure, transports."""

from __future__ import annotations

import re
import time
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from flask import Flask
from flask.testing import FlaskClient

from service.mail.capture import CaptureTransport
from service.mail.errors import PermanentFailure, TransientFailure
from service.mail.message import MailTemplate, Markers, build_message, dot_stuffed
from service.mail.smtp import SMTPTransport
from tests.support.mail import sweep
from tests.support.settings import BASE_URL
from tests.support.smtp import LONG_TOKEN, SMTPSink, free_port, mail_to


def headers_of(data: bytes) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


def test_wire_bytes_are_standards_clean(smtp_app: Flask, smtp_server: SMTPSink) -> None:
    with SMTPTransport(smtp_app.config["SETTINGS"]) as transport:
        reply = transport.send(mail_to(smtp_app, "lecteur@exemple.fr"))
    assert reply.startswith("250")
    (received,) = smtp_server.wait_for(1)
    data = received.data
    lines = headers_of(data)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    head = b"\r\n".join(lines).decode("ascii")  # all headers are ASCII on the wire
    unfolded = head.replace("\r\n", "\n")
    # List-Unsubscribe: plain ASCII URIs folded after the comma, never an encoded-word.
    assert (
        f"List-Unsubscribe: <{BASE_URL}/unsubscribe/{LONG_TOKEN}>,\r\n"
        " <mailto:unsubscribe@news.example.fr?subject=unsubscribe>\r\n"
    ) in head + "\r\n"
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in head + "\r\n"
    assert "List-Id: <hebdo.news.example.fr>" in head
    lines = head.split("\r\n")
    start = next(n for n, line in enumerate(lines) if line.startswith("Subject: "))
    end = next(n for n in range(start + 1, len(lines)) if not lines[n].startswith(" "))
    subject_lines, others = lines[start:end], lines[:start] + lines[end:]
    # Only the subject is encoded (RFC 2047, by hebdo, not by the email package's parser).
    assert "=?" not in "\r\n".join(others)
    assert all(line.isascii() and len(line) <= 78 for line in subject_lines)
    assert re.search(r"^Message-ID: <[^@\s]+@news\.example\.fr>$", unfolded, re.M)
    assert re.search(r"^Date: Mon, 30 Nov 2026 07:00:00 \+0000$", unfolded, re.M)
    assert re.search(r"^To: lecteur@exemple\.fr$", unfolded, re.M)
    assert re.search(r"^From: L'Hebdo <newsletter@news\.example\.fr>$", unfolded, re.M)
    message = received.message
    assert message["Subject"] == "Confirmez votre inscription à L'Hebdo"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert received.part("plain") == "Bonjour, voilà.\n"
    assert received.mail_from == "newsletter@news.example.fr"


def test_lines_starting_with_a_dot_arrive_as_written(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    """SMTP ends a message at a line holding a lone dot, so a line starting with one is sent
    with a second (RFC 5321 transparency). A digest's template is dot-stuffed once, its
    per-reader lines at each fill: what arrives is exactly the message built."""
    markers = Markers()
    template = MailTemplate(
        smtp_app.config["SETTINGS"],
        subject="Points",
        text=f".\n.. deux\n.{markers['email']}\nfin .\n.",
        html=f"<style>\n.lead {{ color: red }}\n</style>\n.{markers['email']}\n<p>.</p>",
        markers=markers,
    )
    mail = template.fill(
        to="lecteur@exemple.fr",
        unsubscribe_url=f"{BASE_URL}/unsubscribe/x",
        values={"email": "lecteur@exemple.fr"},
    )
    assert mail.data_payload() == dot_stuffed(mail.data) + b".\r\n"
    assert b"\r\n..lecteur@exemple.fr" in mail.data_payload()
    with SMTPTransport(smtp_app.config["SETTINGS"]) as transport:
        assert transport.send(mail).startswith("250")
    (received,) = smtp_server.wait_for(1)
    assert received.data == mail.data
    assert received.part("plain").rstrip("\n") == ".\n.. deux\n.lecteur@exemple.fr\nfin .\n."


def test_internationalised_addresses_on_the_wire(smtp_app: Flask, smtp_server: SMTPSink) -> None:
    with SMTPTransport(smtp_app.config["SETTINGS"]) as transport:
        transport.send(mail_to(smtp_app, "user@exämple.fr"))
        transport.send(mail_to(smtp_app, "josé@exemple.fr"))
    idn, utf8 = smtp_server.wait_for(2)
    # An ASCII local part goes out with the domain in punycode, no SMTPUTF8 needed.
    assert idn.rcpt_tos == ["user@xn--exmple-cua.fr"] and "SMTPUTF8" not in idn.mail_options
    assert b"\r\nTo: user@xn--exmple-cua.fr\r\n" in idn.data
    # A non-ASCII local part needs SMTPUTF8, and the header carries UTF-8, not an encoded-word.
    assert utf8.rcpt_tos == ["josé@exemple.fr"] and "SMTPUTF8" in utf8.mail_options
    assert "\r\nTo: josé@exemple.fr\r\n".encode() in utf8.data


@pytest.mark.slow
def test_one_connection_for_many_messages_and_reconnect_after_idle_hangup(
    smtp_env: dict[str, str], make_app: object
) -> None:
    # A server that hangs up on connections idle for more than one second.
    sink = SMTPSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, timeout=1)
    controller.start()
    try:
        app = make_app({**smtp_env, "HEBDO_SMTP_PORT": str(sink.port)})  # type: ignore[operator]
        with SMTPTransport(app.config["SETTINGS"]) as transport:
            for i in range(5):
                transport.send(mail_to(app, f"lecteur{i}@exemple.fr"))
            assert sink.sessions == 1
            time.sleep(1.5)
            transport.send(mail_to(app, "apres@exemple.fr"))
        assert len(sink.wait_for(6)) == 6
        assert sink.sessions == 2
    finally:
        controller.stop()


def test_smtp_replies_are_classified(smtp_app: Flask, smtp_server: SMTPSink) -> None:
    smtp_server.rcpt_replies["gone@exemple.fr"] = "550 5.1.1 User unknown"
    smtp_server.rcpt_replies["later@exemple.fr"] = "452 4.2.2 Mailbox full, retry in 30 seconds"
    with SMTPTransport(smtp_app.config["SETTINGS"]) as transport:
        with pytest.raises(PermanentFailure) as permanent:
            transport.send(mail_to(smtp_app, "gone@exemple.fr"))
        with pytest.raises(TransientFailure) as transient:
            transport.send(mail_to(smtp_app, "later@exemple.fr"))
        transport.send(mail_to(smtp_app, "ok@exemple.fr"))  # the connection is still usable
    assert permanent.value.code == 550
    assert transient.value.code == 452 and transient.value.retry_after == 30
    assert [m.rcpt_tos for m in smtp_server.wait_for(1)] == [["ok@exemple.fr"]]
    assert smtp_server.sessions == 1


def test_unreachable_server_is_a_transient_failure(
    smtp_env: dict[str, str], make_app: object
) -> None:
    app = make_app({**smtp_env, "HEBDO_SMTP_PORT": str(free_port())})  # type: ignore[operator]
    with SMTPTransport(app.config["SETTINGS"]) as transport, pytest.raises(TransientFailure):
        transport.send(mail_to(app, "lecteur@exemple.fr"))


def test_header_injection_through_the_subject_or_links_is_impossible(app: Flask) -> None:
    with pytest.raises(ValueError, match="unsafe value"), app.app_context():
        build_message(
            app.config["SETTINGS"],
            to="a@exemple.fr",
            subject="s",
            text="t",
            html="h",
            unsubscribe_url=f"{BASE_URL}/x\r\nBcc: victim@exemple.fr",
        )
    # Subjects carry article titles: line breaks fold into spaces, and an encoded-word in
    # the text stays text (the email package's parser would decode its CR/LF into headers).
    for subject, shown in [
        ("Salut\r\nBcc: victim@exemple.fr", "Salut Bcc: victim@exemple.fr"),
        (
            "=?utf-8?q?Hi=0D=0ABcc:_victim@exemple.fr=0D=0AX-Evil:_1?=",
            "=?utf-8?q?Hi=0D=0ABcc:_victim@exemple.fr=0D=0AX-Evil:_1?=",
        ),
        ("Budget\u2028X-Evil: 1 é", "Budget X-Evil: 1 é"),
    ]:
        data = mail_to(app, "a@exemple.fr", subject=subject).data
        head = data.split(b"\r\n\r\n", 1)[0]
        names = [line.split(b":")[0] for line in head.split(b"\r\n") if line[:1] != b" "]
        assert b"Bcc" not in names and b"X-Evil" not in names
        message = message_from_bytes(data, policy=policy.default)
        assert message["Subject"] == shown


def test_capture_transport_and_dev_mailbox(app: Flask, client: FlaskClient) -> None:
    settings = app.config["SETTINGS"]
    outgoing = mail_to(app, "capture@exemple.fr")
    CaptureTransport(settings.mail_capture_dir).send(outgoing)
    (eml,) = settings.mail_capture_dir.glob("*.eml")
    assert eml.read_bytes() == outgoing.data
    index = client.get("/dev/mailbox/")
    assert index.status_code == 200 and "capture@exemple.fr" in index.text
    page = client.get(f"/dev/mailbox/{eml.name}")
    assert page.status_code == 200
    assert "Bonjour, voilà." in page.text
    assert "<iframe sandbox" in page.text
    assert client.get(f"/dev/mailbox/{eml.name}/raw").data == outgoing.data
    assert client.get("/dev/mailbox/..%2Fsecret_key").status_code == 404
    assert client.get("/dev/mailbox/../secret_key").status_code == 404


def test_local_mode_captures_the_confirmation_mail(app: Flask, client: FlaskClient) -> None:
    client.post("/api/v1/subscriptions", json={"email": "local@exemple.fr"})
    assert sweep(app) == 1
    index = client.get("/dev/mailbox/")
    assert "local@exemple.fr" in index.text and "Confirmez votre inscription" in index.text


def test_dev_mailbox_is_absent_with_smtp_or_in_production(smtp_client: FlaskClient) -> None:
    assert smtp_client.get("/dev/mailbox/").status_code == 404


# A loopback test server: AUTH without TLS is what we want to exercise here.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_smtp_login_is_used_and_a_refused_login_is_transient(
    smtp_env: dict[str, str], make_app: object
) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(
        server: object, session: object, envelope: object, mechanism: str, auth_data: object
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"hebdo",
            b"s3cret",
        )
        return AuthResult(success=ok)

    sink = SMTPSink(port=free_port())
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
    controller.start()
    try:
        values = {**smtp_env, "HEBDO_SMTP_PORT": str(sink.port), "HEBDO_SMTP_USER": "hebdo"}
        good = make_app({**values, "HEBDO_SMTP_PASSWORD": "s3cret"})  # type: ignore[operator]
        with SMTPTransport(good.config["SETTINGS"]) as transport:
            transport.send(mail_to(good, "auth@exemple.fr"))
        assert [m.rcpt_tos for m in sink.wait_for(1)] == [["auth@exemple.fr"]]
        bad = make_app({**values, "HEBDO_SMTP_PASSWORD": "wrong", "HEBDO_SMTP_TIMEOUT": "2"})  # type: ignore[operator]
        with (
            SMTPTransport(bad.config["SETTINGS"]) as transport,
            pytest.raises(TransientFailure),
        ):
            transport.send(mail_to(bad, "auth@exemple.fr"))
    finally:
        controller.stop()


@pytest.mark.parametrize(
    ("code", "reply", "stage", "kind"),
    [
        (550, "5.1.1 <a@b.fr>: Recipient address rejected: User unknown", "rcpt", "mailbox"),
        (550, "5.2.1 Mailbox disabled", "rcpt", "mailbox"),
        (550, "Mailbox unavailable", "rcpt", "mailbox"),
        (550, "5.4.1 Recipient address rejected: Access denied", "rcpt", "mailbox"),
        (550, "The author of this accurate, separate note", "rcpt", "mailbox"),
        (554, "5.7.1 <a@b.fr>: Relay access denied", "rcpt", "sender"),
        (550, "Sender blocked for poor reputation", "rcpt", "sender"),
        (550, "5.1.8 Bad sender's system address", "rcpt", "sender"),
        (553, "5.7.1 Sender address rejected: not owned by user", "mail", "sender"),
        (530, "5.7.0 Authentication required", "mail", "sender"),
        (550, "5.7.26 Unauthenticated email is not accepted due to DMARC", "data", "sender"),
        (554, "5.6.0 Message content rejected", "data", "message"),
        (None, "the server does not support SMTPUTF8", "unsupported", "message"),
    ],
)
def test_a_refusal_is_read_for_whose_problem_it_is(
    code: int | None, reply: str, stage: str, kind: str
) -> None:
    assert PermanentFailure(code, reply, stage).kind == kind


def test_a_421_on_a_connection_left_idle_reconnects_once_and_sends(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    settings = smtp_app.config["SETTINGS"]
    with smtp_app.app_context(), SMTPTransport(settings) as transport:
        transport.send(mail_to(smtp_app, "premier@exemple.fr"))
        # The server timed the idle connection out and says so at the next command.
        smtp_server.mail_sequence.append("421 4.4.2 Idle timeout, closing connection")
        transport.send(mail_to(smtp_app, "second@exemple.fr"))
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == [
        "premier@exemple.fr",
        "second@exemple.fr",
    ]
    assert smtp_server.sessions == 2
