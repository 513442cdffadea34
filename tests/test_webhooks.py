"""Provider webhooks, posted as each provider posts them about an issue hebdo really sent
through a loopback SMTP server: Amazon SES through SNS (RSA signatures under a certificate
of a local test CA, fetched through the app's fetcher, never the network), SendGrid (ECDSA
P-256), Mailgun (HMAC) and Postmark (basic authentication). What a bounce, a complaint and
an unsubscription change; that a post again changes nothing more; that a post whose proof
does not hold changes nothing at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from service.config import ConfigError, load_settings
from service.extensions import db
from service.inbound import providers
from service.models import Delivery, InboundMessage, Issue, Status, Subscriber
from service.subscribers.suppressions import is_suppressed
from tests.support.inbound import BOUNCES, READER
from tests.support.mail import subscriber
from tests.support.sending import WEEK, send_to_readers
from tests.support.smtp import Received, SMTPSink

TOPIC = "arn:aws:sns:eu-west-1:123456789012:hebdo-ses"
SNS = "https://sns.eu-west-1.amazonaws.com"
CERT_URL = f"{SNS}/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
POSTMARK = ("postmark", "a-long-random-password-0123456789")


# ---------------------------------------------------------------- keys and certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Pki:
    """A local CA, the SNS signing key and certificates it issued, SendGrid's key pair."""

    ca_key: ec.EllipticCurvePrivateKey
    ca_pem: bytes
    sns_key: rsa.RSAPrivateKey
    other_key: rsa.RSAPrivateKey
    certificates: dict[str, bytes]  # PEM files by their URL
    sendgrid_key: ec.EllipticCurvePrivateKey

    @property
    def sendgrid_public(self) -> str:
        der = self.sendgrid_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    key: rsa.RSAPrivateKey,
    common_name: str,
    start: datetime,
    end: datetime,
) -> bytes:
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name("hebdo test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _ca(key: ec.EllipticCurvePrivateKey, today: datetime) -> bytes:
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("hebdo test CA"))
        .issuer_name(_name("hebdo test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(today - timedelta(days=1))
        .not_valid_after(today + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    today = datetime.now(UTC)
    valid = (today - timedelta(days=1), today + timedelta(days=365))
    return Pki(
        ca_key=ca_key,
        ca_pem=_ca(ca_key, today),
        sns_key=sns_key,
        other_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        certificates={
            CERT_URL: _issue(ca_key, sns_key, "sns.amazonaws.com", *valid),
            f"{SNS}/expired.pem": _issue(
                ca_key, sns_key, "sns.amazonaws.com", today - timedelta(days=400), valid[0]
            ),
            f"{SNS}/other-name.pem": _issue(ca_key, sns_key, "sns.evil.example", *valid),
        },
        sendgrid_key=ec.generate_private_key(ec.SECP256R1()),
    )


@dataclass
class Aws:
    """Stands in for AWS's https hosts: serves the test certificates and answers
    subscription confirmations; every URL asked for is kept."""

    pki: Pki
    fetched: list[str] = field(default_factory=list)
    up: bool = True

    def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        if not self.up:
            raise providers.Unavailable("sns.eu-west-1.amazonaws.com: timed out")
        if url in self.pki.certificates:
            return self.pki.certificates[url]
        if "Action=ConfirmSubscription" in url:
            return b"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult/>"
        raise providers.Unavailable(f"HTTP Error 404: {url}")


class _Files(BaseHTTPRequestHandler):
    """A small https host: a file, a redirect to it, and a file too large."""

    body = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/cert.pem")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = {"/cert.pem": self.body, "/big": b"x" * (providers.FETCH_LIMIT + 1)}.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https_host(pki: Pki, tmp_path: Path) -> Iterator[str]:
    """An https server on loopback, its certificate issued by the test CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    today = datetime.now(UTC)
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(_name("hebdo test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(today - timedelta(days=1))
        .not_valid_after(today + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca_key.public_key()),
            critical=False,
        )
        .sign(pki.ca_key, hashes.SHA256())
    )
    chain, secret = tmp_path / "host.pem", tmp_path / "host.key"
    chain.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    secret.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_fetcher_takes_https_from_a_trusted_host_and_no_redirect(
    https_host: str, pki: Pki
) -> None:
    """What the app fetches from AWS by default: a server certificate the system's CAs
    vouch for (the test CA stands for them here), no redirect, a bounded answer."""
    trusted = ssl.create_default_context(cadata=pki.ca_pem.decode())
    assert providers.fetch_https(f"{https_host}/cert.pem", context=trusted) == _Files.body
    with pytest.raises(providers.Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        providers.fetch_https(f"{https_host}/cert.pem")
    with pytest.raises(providers.Unavailable, match="302"):
        providers.fetch_https(f"{https_host}/moved", context=trusted)
    with pytest.raises(providers.Unavailable, match="more than"):
        providers.fetch_https(f"{https_host}/big", context=trusted)
    with pytest.raises(providers.Unavailable, match="404"):
        providers.fetch_https(f"{https_host}/other.pem", context=trusted)
    with pytest.raises(providers.Unavailable, match="not an https URL"):
        providers.fetch_https(https_host.replace("https:", "http:") + "/cert.pem")


# ---------------------------------------------------------------- the app and its issue


@pytest.fixture
def aws(pki: Pki) -> Aws:
    return Aws(pki)


@pytest.fixture
def hooks_app(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], pki: Pki, aws: Aws
) -> Flask:
    """A sending app with every provider's webhook set up; SNS fetches from `aws`."""
    app = make_app(
        {
            **smtp_env,
            "HEBDO_BOUNCE_ADDRESS": BOUNCES,
            "HEBDO_SES_TOPIC_ARNS": f"{TOPIC}, arn:aws:sns:us-east-1:123456789012:other",
            "HEBDO_SENDGRID_WEBHOOK_KEY": pki.sendgrid_public,
            "HEBDO_MAILGUN_SIGNING_KEY": MAILGUN_KEY,
            "HEBDO_POSTMARK_WEBHOOK_USER": POSTMARK[0],
            "HEBDO_POSTMARK_WEBHOOK_PASSWORD": POSTMARK[1],
        }
    )
    app.extensions["hebdo.sns"] = providers.Sns(fetch=aws)
    return app


@pytest.fixture
def mailed(hooks_app: Flask, smtp_server: SMTPSink) -> dict[str, Received]:
    """Issue 2026-W48 sent to reader0..2 (as conftest's `sent`): what each mailbox got."""
    return send_to_readers(hooks_app, smtp_server)


@pytest.fixture
def client(hooks_app: Flask) -> FlaskClient:
    return hooks_app.test_client()


def message_id(mail: Received) -> str:
    value = mail.message["Message-ID"]
    assert value and value.startswith("<")
    return str(value)


# ---------------------------------------------------------------- what the tests look at


def status(app: Flask, email: str = READER) -> str:
    return subscriber(app, email).status


def suppressed(app: Flask, email: str = READER) -> bool:
    with app.app_context():
        return is_suppressed(app.config["SETTINGS"], email)


def soft_bounced(app: Flask, email: str = READER) -> bool:
    with app.app_context():
        at = db.session.execute(
            select(Delivery.soft_bounced_at)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == email)
        ).scalar_one()
        return at is not None


def hard_bounces(app: Flask) -> int:
    with app.app_context():
        issue = db.session.execute(select(Issue).where(Issue.week == WEEK)).scalar_one()
        return issue.hard_bounce_count


def recorded(app: Flask) -> list[InboundMessage]:
    with app.app_context():
        query = select(InboundMessage).order_by(InboundMessage.id)
        rows = list(db.session.execute(query).scalars())
        db.session.expunge_all()
        return rows


def unchanged(app: Flask) -> bool:
    """Nobody changed, nothing recorded."""
    with app.app_context():
        count = db.session.execute(select(func.count()).select_from(InboundMessage)).scalar()
    return count == 0 and {status(app, f"reader{n}@exemple.fr") for n in range(3)} == {
        Status.ACTIVE
    }


def verdicts(answer: Any) -> list[tuple[str, bool]]:
    assert answer.status_code == 200, answer.json
    return [(r["verdict"], r["replay"]) for r in answer.json["results"]]


# ---------------------------------------------------------------- Amazon SES through SNS

# AWS's documented order of the signed fields (sns-verify-signature-of-message).
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


def sns_body(
    key: rsa.RSAPrivateKey,
    *,
    kind: str = "Notification",
    message: str = "",
    topic: str = TOPIC,
    version: str = "1",
    cert_url: str = CERT_URL,
    **extra: str,
) -> dict[str, str]:
    """An SNS message as SNS posts it, signed with `key`."""
    fields = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": message,
        "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        **extra,
    }
    names = NOTIFICATION_FIELDS if kind == "Notification" else CONFIRMATION_FIELDS
    text = "".join(f"{name}\n{fields[name]}\n" for name in names if name in fields)
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode(), padding.PKCS1v15(), digest)
    return {
        **fields,
        "SignatureVersion": version,
        "Signature": base64.b64encode(signature).decode(),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": f"{SNS}/?Action=Unsubscribe&SubscriptionArn={topic}:1",
    }


def post_sns(client: FlaskClient, body: dict[str, str]) -> Any:
    return client.post(
        "/api/v1/webhooks/ses",
        data=json.dumps(body),
        headers={
            # SNS posts JSON as text/plain.
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": body["Type"],
            "x-amz-sns-topic-arn": body["TopicArn"],
        },
    )


def ses_mail(mail: Received) -> dict[str, Any]:
    """The `mail` object of SES's notifications about one of our mails."""
    return {
        "timestamp": "2026-11-23T07:00:01.000Z",
        "source": "newsletter@news.example.fr",
        "messageId": "0102019a-ses-own-id-000000",
        "destination": mail.rcpt_tos,
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "L'Hebdo <newsletter@news.example.fr>"},
            {"name": "Message-ID", "value": message_id(mail)},
        ],
        "commonHeaders": {"messageId": message_id(mail), "subject": "L'Hebdo"},
    }


def ses_bounce(mail: Received, kind: str, status_code: str, diagnostic: str) -> str:
    return json.dumps(
        {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": kind,
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": mail.rcpt_tos[0],
                        "action": "failed",
                        "status": status_code,
                        "diagnosticCode": diagnostic,
                    }
                ],
                "timestamp": "2026-11-23T07:00:05.000Z",
                "feedbackId": "0102019a-feedback-0001",
                "reportingMTA": "dsn; a27-1.smtp-out.eu-west-1.amazonses.com",
            },
            "mail": ses_mail(mail),
        }
    )


def test_an_ses_hard_bounce_bounces_and_suppresses_the_reader_once(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki, aws: Aws
) -> None:
    diagnostic = "smtp; 550 5.1.1 <reader1@exemple.fr>: Recipient address rejected"
    body = sns_body(
        pki.sns_key, message=ses_bounce(mailed[READER], "Permanent", "5.1.1", diagnostic)
    )
    answer = post_sns(client, body)
    assert verdicts(answer) == [("bounced", False)]
    assert answer.json["received"] == 1 and answer.json["ignored"] == 0
    assert answer.json["results"][0]["event_id"] == f"{body['MessageId']}#0"
    assert status(hooks_app) == Status.BOUNCED and suppressed(hooks_app)
    assert status(hooks_app, "reader0@exemple.fr") == Status.ACTIVE
    assert hard_bounces(hooks_app) == 1
    (row,) = recorded(hooks_app)
    assert (row.source, row.kind, row.verdict) == ("webhook:ses", "bounce", "bounced")
    assert row.rule == "ses bounce 5.1.1" and row.issue_id is not None
    assert row.evidence is not None and row.evidence["bounce_type"] == "Permanent"
    assert READER not in json.dumps(row.evidence)

    # SNS retries (our answer was lost): the first verdict, nothing more.
    again = post_sns(client, body)
    assert verdicts(again) == [("bounced", True)]
    assert hard_bounces(hooks_app) == 1 and len(recorded(hooks_app)) == 1
    # The certificate was fetched once, over the checked URL.
    assert aws.fetched == [CERT_URL]


def test_an_ses_transient_bounce_is_counted_and_a_complaint_marks_the_reader(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki
) -> None:
    full = ses_bounce(mailed[READER], "Transient", "4.2.2", "smtp; 452 4.2.2 Mailbox full")
    assert verdicts(post_sns(client, sns_body(pki.sns_key, message=full, version="2"))) == [
        ("soft_bounce", False)
    ]
    assert soft_bounced(hooks_app) and status(hooks_app) == Status.ACTIVE
    assert not suppressed(hooks_app)

    other = mailed["reader2@exemple.fr"]
    complaint = {
        "eventType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": other.rcpt_tos[0]}],
            "complaintFeedbackType": "abuse",
            "feedbackId": "0102019a-feedback-0002",
            "timestamp": "2026-11-23T09:00:00.000Z",
        },
        "mail": ses_mail(other),
    }
    body = sns_body(pki.sns_key, message=json.dumps(complaint), Subject="Amazon SES Complaint")
    assert verdicts(post_sns(client, body)) == [("complained", False)]
    assert status(hooks_app, "reader2@exemple.fr") == Status.COMPLAINED
    assert suppressed(hooks_app, "reader2@exemple.fr")


def test_ses_deliveries_and_other_publishers_messages_are_ignored(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki
) -> None:
    delivery = json.dumps({"notificationType": "Delivery", "mail": ses_mail(mailed[READER])})
    for message in (delivery, "Hello from the console"):
        answer = post_sns(client, sns_body(pki.sns_key, message=message))
        assert answer.status_code == 200
        assert (answer.json["received"], answer.json["ignored"]) == (0, 1)
    assert unchanged(hooks_app)


def test_the_subscription_of_a_configured_topic_is_confirmed(
    hooks_app: Flask, client: FlaskClient, pki: Pki, aws: Aws
) -> None:
    subscribe = f"{SNS}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37"
    body = sns_body(
        pki.sns_key,
        kind="SubscriptionConfirmation",
        message=f"You have chosen to subscribe to the topic {TOPIC}.",
        SubscribeURL=subscribe,
        Token="2336412f37",
    )
    answer = post_sns(client, body)
    assert answer.status_code == 200 and answer.json["subscription"] == TOPIC
    assert aws.fetched == [CERT_URL, subscribe]

    # Somebody else's topic, however well signed: not confirmed, nothing fetched.
    foreign = "arn:aws:sns:eu-west-1:999999999999:theirs"
    answer = post_sns(client, {**body, "TopicArn": foreign})
    assert (answer.status_code, answer.json["error"]) == (403, "unknown_topic")
    # A SubscribeURL elsewhere than SNS: refused (it is signed: this is a forged message).
    evil = sns_body(
        pki.sns_key,
        kind="SubscriptionConfirmation",
        message="x",
        SubscribeURL="https://sns.evil.example/?Action=ConfirmSubscription",
        Token="1",
    )
    assert post_sns(client, evil).status_code == 401
    assert aws.fetched == [CERT_URL, subscribe]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("tampered", 401),
        ("signed by another key", 401),
        ("https://sns.evil.example/cert.pem", 401),
        ("https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem", 401),
        ("http://sns.eu-west-1.amazonaws.com/cert.pem", 401),
        ("https://sns.eu-west-1.amazonaws.com:8443/cert.pem", 401),
        ("https://sns.eu-west-1.amazonaws.com/cert.txt", 401),
        (f"{SNS}/expired.pem", 401),
        (f"{SNS}/other-name.pem", 401),
        ("unknown topic", 403),
    ],
)
def test_an_sns_message_whose_proof_does_not_hold_changes_nothing(
    hooks_app: Flask,
    mailed: dict[str, Received],
    client: FlaskClient,
    pki: Pki,
    aws: Aws,
    change: str,
    code: int,
) -> None:
    bounce = ses_bounce(mailed[READER], "Permanent", "5.1.1", "smtp; 550 5.1.1 unknown")
    if change == "tampered":
        body = sns_body(pki.sns_key, message=bounce)
        body["Message"] = bounce.replace(READER, "reader0@exemple.fr")
    elif change == "signed by another key":
        body = sns_body(pki.other_key, message=bounce)
    elif change == "unknown topic":
        body = sns_body(pki.sns_key, message=bounce, topic=TOPIC.replace("hebdo", "theirs"))
    else:
        body = sns_body(pki.sns_key, message=bounce, cert_url=change)
    answer = post_sns(client, body)
    assert answer.status_code == code, answer.json
    assert set(answer.json) == {"error", "message"}
    assert unchanged(hooks_app)
    # Nothing fetched from a host that is not SNS's.
    assert all(url.startswith(f"{SNS}/") for url in aws.fetched)


def test_an_sns_certificate_that_cannot_be_fetched_asks_for_the_post_again(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki, aws: Aws
) -> None:
    aws.up = False
    bounce = ses_bounce(mailed[READER], "Permanent", "5.1.1", "smtp; 550 5.1.1 unknown")
    body = sns_body(pki.sns_key, message=bounce)
    answer = post_sns(client, body)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "60"
    assert unchanged(hooks_app)
    aws.up = True
    assert verdicts(post_sns(client, body)) == [("bounced", False)]


# ---------------------------------------------------------------- SendGrid


def post_sendgrid(
    client: FlaskClient,
    pki: Pki,
    events: list[dict[str, Any]] | bytes,
    *,
    at: float | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Any:
    body = events if isinstance(events, bytes) else json.dumps(events).encode() + b"\r\n"
    timestamp = str(int(time.time() if at is None else at))
    signature = (key or pki.sendgrid_key).sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return client.post(
        "/api/v1/webhooks/sendgrid",
        data=body,
        content_type="application/json",
        headers={
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )


def sendgrid_event(mail: Received, event: str, **fields: Any) -> dict[str, Any]:
    return {
        "email": mail.rcpt_tos[0],
        "timestamp": int(time.time()),
        "smtp-id": message_id(mail),
        "event": event,
        "category": ["hebdo"],
        "sg_event_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **fields,
    }


def test_sendgrid_events_change_each_reader_once(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki
) -> None:
    reader0, reader1, reader2 = (mailed[f"reader{n}@exemple.fr"] for n in range(3))
    events = [
        sendgrid_event(reader1, "processed"),
        sendgrid_event(
            reader1,
            "bounce",
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 The email account that you tried to reach does not exist.",
            bounce_classification="Invalid Address",
        ),
        sendgrid_event(
            reader0,
            "bounce",
            type="blocked",
            status="4.0.0",
            reason="421 4.7.0 Try again later, closing connection.",
        ),
        sendgrid_event(reader2, "spamreport"),
        sendgrid_event(reader0, "open", useragent="Mozilla/5.0", ip="192.0.2.1"),
    ]
    answer = post_sendgrid(client, pki, events)
    assert verdicts(answer) == [
        ("bounced", False),
        ("soft_bounce", False),
        ("complained", False),
    ]
    assert (answer.json["received"], answer.json["ignored"]) == (3, 2)
    assert [r["event_id"] for r in answer.json["results"]] == [
        e["sg_event_id"] for e in events[1:4]
    ]
    assert status(hooks_app) == Status.BOUNCED and suppressed(hooks_app)
    assert soft_bounced(hooks_app, "reader0@exemple.fr")
    assert status(hooks_app, "reader0@exemple.fr") == Status.ACTIVE
    assert status(hooks_app, "reader2@exemple.fr") == Status.COMPLAINED
    assert {row.source for row in recorded(hooks_app)} == {"webhook:sendgrid"}

    # The same batch again (SendGrid retries what was not answered 2xx).
    again = post_sendgrid(client, pki, events)
    assert verdicts(again) == [
        ("bounced", True),
        ("soft_bounce", True),
        ("complained", True),
    ]
    assert len(recorded(hooks_app)) == 3 and hard_bounces(hooks_app) == 1


def test_a_sendgrid_unsubscribe_unsubscribes(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki
) -> None:
    event = sendgrid_event(mailed[READER], "group_unsubscribe", asm_group_id=42)
    assert verdicts(post_sendgrid(client, pki, [event])) == [("unsubscribed", False)]
    assert status(hooks_app) == Status.UNSUBSCRIBED
    assert subscriber(hooks_app, READER).unsubscribe_channel == "sendgrid"


def test_a_sendgrid_post_whose_signature_does_not_hold_changes_nothing(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki
) -> None:
    events = [sendgrid_event(mailed[READER], "spamreport")]
    stranger = ec.generate_private_key(ec.SECP256R1())
    assert post_sendgrid(client, pki, events, key=stranger).json["error"] == "bad_signature"
    stale = post_sendgrid(client, pki, events, at=time.time() - 11 * 60)
    assert (stale.status_code, stale.json["error"]) == (401, "stale_timestamp")
    # A signed body with one more event slipped in.
    body = json.dumps(events).encode()
    timestamp = str(int(time.time()))
    signature = pki.sendgrid_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    extra = [*events, sendgrid_event(mailed["reader0@exemple.fr"], "spamreport")]
    forged = client.post(
        "/api/v1/webhooks/sendgrid",
        data=json.dumps(extra),
        content_type="application/json",
        headers={
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )
    assert forged.status_code == 401
    unsigned = client.post("/api/v1/webhooks/sendgrid", json=events)
    assert unsigned.status_code == 401
    assert unchanged(hooks_app)


def test_sendgrids_own_test_vector_is_verified(tmp_path: Path) -> None:
    """The signed payload of SendGrid's helper libraries' tests (their key, their signature):
    the signed bytes are `timestamp + body`, as SendGrid makes them."""
    public_key = (
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBce"
        "pxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
    )
    signature = (
        "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nl"
        "xFDWYNH2j/0="
    )
    timestamp = "1588788367"
    body = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'
    settings = load_settings(
        {"HEBDO_DATA_DIR": str(tmp_path), "HEBDO_SENDGRID_WEBHOOK_KEY": public_key}
    )
    then = datetime.fromtimestamp(int(timestamp), UTC)

    def read(payload: bytes, at: datetime = then) -> providers.Parsed:
        return providers.read_sendgrid(
            settings, payload, signature=signature, timestamp=timestamp, now=at
        )

    # The signature holds; the body is one object, not SendGrid's list of events.
    with pytest.raises(providers.Malformed, match="list of events"):
        read(body)
    with pytest.raises(providers.Refused, match="signature"):
        read(body.replace(b"test_event", b"bounce"))
    with pytest.raises(providers.Refused) as stale:
        read(body, datetime.now(UTC))
    assert stale.value.code == "stale_timestamp"


# ---------------------------------------------------------------- Mailgun


def mailgun_body(
    event_data: dict[str, Any], *, at: float | None = None, token: str | None = None
) -> dict[str, Any]:
    timestamp = str(int(time.time() if at is None else at))
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = hmac.new(
        MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event_data,
    }


def mailgun_event(mail: Received, event: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "timestamp": time.time(),
        "log-level": "error" if event == "failed" else "warn",
        "event": event,
        "recipient": mail.rcpt_tos[0],
        "recipient-domain": "exemple.fr",
        "message": {
            "headers": {
                "to": mail.rcpt_tos[0],
                # Mailgun gives the Message-ID without its angle brackets.
                "message-id": message_id(mail).strip("<>"),
                "from": "L'Hebdo <newsletter@news.example.fr>",
                "subject": "L'Hebdo",
            },
            "attachments": [],
            "size": len(mail.data),
        },
        **fields,
    }


def post_mailgun(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post("/api/v1/webhooks/mailgun", json=body)


def test_mailgun_events_change_each_reader_once(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient
) -> None:
    reader0, reader1, reader2 = (mailed[f"reader{n}@exemple.fr"] for n in range(3))
    permanent = mailgun_body(
        mailgun_event(
            reader1,
            "failed",
            severity="permanent",
            reason="bounce",
            **{
                "delivery-status": {
                    "attempt-no": 1,
                    "code": 550,
                    "enhanced-code": "5.1.1",
                    "message": "5.1.1 The email account that you tried to reach does not exist.",
                    "description": "",
                }
            },
        )
    )
    answer = post_mailgun(client, permanent)
    assert verdicts(answer) == [("bounced", False)]
    assert status(hooks_app) == Status.BOUNCED and suppressed(hooks_app)
    (row,) = recorded(hooks_app)
    assert row.rule == "mailgun bounce 5.1.1" and row.issue_id is not None

    # Mailgun retries the very same post: the first verdict.
    assert verdicts(post_mailgun(client, permanent)) == [("bounced", True)]
    assert hard_bounces(hooks_app) == 1

    temporary = mailgun_event(
        reader0,
        "failed",
        severity="temporary",
        reason="generic",
        **{"delivery-status": {"code": 452, "message": "4.2.2 Mailbox full"}},
    )
    assert verdicts(post_mailgun(client, mailgun_body(temporary))) == [("soft_bounce", False)]
    assert soft_bounced(hooks_app, "reader0@exemple.fr")
    complained = mailgun_body(mailgun_event(reader2, "complained"))
    assert verdicts(post_mailgun(client, complained)) == [("complained", False)]
    assert status(hooks_app, "reader2@exemple.fr") == Status.COMPLAINED
    unsubscribed = mailgun_body(mailgun_event(reader0, "unsubscribed"))
    assert verdicts(post_mailgun(client, unsubscribed)) == [("unsubscribed", False)]
    assert status(hooks_app, "reader0@exemple.fr") == Status.UNSUBSCRIBED

    opened = post_mailgun(client, mailgun_body(mailgun_event(reader0, "opened")))
    assert (opened.json["received"], opened.json["ignored"]) == (0, 1)


def test_a_mailgun_post_whose_signature_does_not_hold_changes_nothing(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient
) -> None:
    complaint = mailgun_event(mailed[READER], "complained")
    wrong = mailgun_body(complaint)
    wrong["signature"]["signature"] = "0" * 64
    assert post_mailgun(client, wrong).json["error"] == "bad_signature"
    stale = post_mailgun(client, mailgun_body(complaint, at=time.time() - 11 * 60))
    assert (stale.status_code, stale.json["error"]) == (401, "stale_timestamp")
    assert unchanged(hooks_app)

    # The signature covers the timestamp and the token, not the event: a signature seen
    # once does not sign another event.
    first = mailgun_body(mailgun_event(mailed["reader0@exemple.fr"], "opened"))
    assert post_mailgun(client, first).status_code == 200
    reused = {**first, "event-data": complaint}
    answer = post_mailgun(client, reused)
    assert (answer.status_code, answer.json["error"]) == (401, "replayed_token")
    assert unchanged(hooks_app)


# ---------------------------------------------------------------- Postmark


def post_postmark(
    client: FlaskClient, record: dict[str, Any], credentials: tuple[str, str] = POSTMARK
) -> Any:
    auth = base64.b64encode(":".join(credentials).encode()).decode()
    return client.post(
        "/api/v1/webhooks/postmark", json=record, headers={"Authorization": f"Basic {auth}"}
    )


def postmark_bounce(mail: Received, kind: str, details: str, bounce_id: int) -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "ID": bounce_id,
        "Type": kind,
        "TypeCode": 1 if kind == "HardBounce" else 4096,
        "Name": "Hard bounce" if kind == "HardBounce" else "Soft bounce",
        "Tag": "hebdo",
        "MessageID": str(uuid.uuid4()),
        "ServerID": 23,
        "MessageStream": "broadcast",
        "Description": "The server was unable to deliver your message.",
        "Details": details,
        "Email": mail.rcpt_tos[0],
        "From": "newsletter@news.example.fr",
        "BouncedAt": "2026-11-23T07:00:05Z",
        "DumpAvailable": False,
        "Inactive": kind == "HardBounce",
        "CanActivate": True,
        "Subject": "L'Hebdo",
    }


def test_postmark_records_change_each_reader_once(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient
) -> None:
    reader0, reader1, reader2 = (mailed[f"reader{n}@exemple.fr"] for n in range(3))
    hard = postmark_bounce(reader1, "HardBounce", "smtp;550 5.1.1 User unknown", 692560173)
    answer = post_postmark(client, hard)
    assert verdicts(answer) == [("bounced", False)]
    assert answer.json["results"][0]["event_id"] == "692560173"
    assert status(hooks_app) == Status.BOUNCED and suppressed(hooks_app)
    assert verdicts(post_postmark(client, hard)) == [("bounced", True)]
    assert hard_bounces(hooks_app) == 1

    soft = postmark_bounce(reader0, "SoftBounce", "smtp;452 4.2.2 Mailbox full", 692560174)
    assert verdicts(post_postmark(client, soft)) == [("soft_bounce", False)]
    assert soft_bounced(hooks_app, "reader0@exemple.fr")

    complaint = {
        **postmark_bounce(reader2, "SpamComplaint", "", 692560175),
        "RecordType": "SpamComplaint",
        "TypeCode": 512,
    }
    assert verdicts(post_postmark(client, complaint)) == [("complained", False)]
    assert status(hooks_app, "reader2@exemple.fr") == Status.COMPLAINED

    change = {
        "RecordType": "SubscriptionChange",
        "MessageID": str(uuid.uuid4()),
        "ServerID": 23,
        "MessageStream": "broadcast",
        "ChangedAt": "2026-11-23T10:00:00Z",
        "Recipient": reader0.rcpt_tos[0],
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": "ManualSuppression",
        "Tag": "hebdo",
        "Metadata": {},
    }
    assert verdicts(post_postmark(client, change)) == [("unsubscribed", False)]
    assert status(hooks_app, "reader0@exemple.fr") == Status.UNSUBSCRIBED

    for ignored in (
        {"RecordType": "Delivery", "MessageID": "x", "Recipient": reader0.rcpt_tos[0]},
        {**change, "SuppressSending": False},
        postmark_bounce(reader0, "AutoResponder", "", 692560176),
    ):
        answer = post_postmark(client, ignored)
        assert (answer.json["received"], answer.json["ignored"]) == (0, 1)


def test_a_postmark_post_without_the_right_credentials_changes_nothing(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient
) -> None:
    hard = postmark_bounce(mailed[READER], "HardBounce", "smtp;550 5.1.1 User unknown", 1)
    for credentials in ((POSTMARK[0], "guess"), ("admin", POSTMARK[1])):
        answer = post_postmark(client, hard, credentials)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    assert client.post("/api/v1/webhooks/postmark", json=hard).status_code == 401
    assert unchanged(hooks_app)


# ---------------------------------------------------------------- every webhook


def test_a_webhook_whose_setting_is_empty_is_off(inbound_app: Flask) -> None:
    client = inbound_app.test_client()
    for provider in ("ses", "sendgrid", "mailgun", "postmark"):
        answer = client.post(f"/api/v1/webhooks/{provider}", json={})
        assert (answer.status_code, answer.json["error"]) == (404, "not_configured"), provider
    assert client.get("/api/v1/webhooks/ses").status_code == 405


def test_what_is_no_provider_post_is_refused_by_name(
    hooks_app: Flask, mailed: dict[str, Received], client: FlaskClient, pki: Pki
) -> None:
    not_json = client.post("/api/v1/webhooks/ses", data=b"{not json", content_type="text/plain")
    assert (not_json.status_code, not_json.json["error"]) == (400, "malformed_json")
    shapeless = client.post("/api/v1/webhooks/ses", json={"Type": "Notification"})
    assert (shapeless.status_code, shapeless.json["error"]) == (422, "invalid_payload")
    assert "MessageId" in shapeless.json["message"]
    signed_object = post_sendgrid(client, pki, b'{"event": "bounce"}')
    assert (signed_object.status_code, signed_object.json["error"]) == (422, "invalid_payload")
    no_event = post_mailgun(client, {"signature": {"timestamp": "1", "token": "t"}})
    assert no_event.status_code == 422
    huge = post_sendgrid(client, pki, b"[" + b" " * (1 << 20) + b"]")
    assert huge.status_code == 413 and huge.json["error"] == "request_entity_too_large"
    assert unchanged(hooks_app)


def test_settings_of_the_webhooks_are_checked_when_they_load(tmp_path: Path) -> None:
    def error(**values: str) -> str:
        with pytest.raises(ConfigError) as raised:
            load_settings({"HEBDO_DATA_DIR": str(tmp_path), **values})
        return str(raised.value)

    assert error(HEBDO_SES_TOPIC_ARNS="hebdo-ses").startswith(
        "HEBDO_SES_TOPIC_ARNS takes SNS topic ARNs"
    )
    assert error(HEBDO_SENDGRID_WEBHOOK_KEY="not a key").startswith(
        "HEBDO_SENDGRID_WEBHOOK_KEY must be the verification key"
    )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    der = rsa_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert "ECDSA P-256" in error(HEBDO_SENDGRID_WEBHOOK_KEY=base64.b64encode(der).decode())
    assert error(HEBDO_POSTMARK_WEBHOOK_USER="postmark") == (
        "HEBDO_POSTMARK_WEBHOOK_USER and HEBDO_POSTMARK_WEBHOOK_PASSWORD go together"
    )
    # SendGrid's key pasted as PEM is taken as its bare base64; secrets are masked.
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = load_settings(
        {
            "HEBDO_DATA_DIR": str(tmp_path),
            "HEBDO_SENDGRID_WEBHOOK_KEY": pem,
            "HEBDO_MAILGUN_SIGNING_KEY": MAILGUN_KEY,
            "HEBDO_POSTMARK_WEBHOOK_USER": POSTMARK[0],
            "HEBDO_POSTMARK_WEBHOOK_PASSWORD": POSTMARK[1],
        }
    )
    assert "-----" not in settings.sendgrid_webhook_key
    shown = settings.public()
    assert shown["mailgun_signing_key"] == shown["postmark_webhook_password"] == "***"
