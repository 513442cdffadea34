"""Provider webhooks, checked and read: whether a post really comes from Amazon SES (through
SNS), SendGrid, Mailgun or Postmark, and what it says, as `ProviderEvent`s for
`events.receive_event`. Events of other types (delivered, opened, clicked…) are counted as
ignored, never acted on.

What each check proves (docs/webhooks.md says it for operators):

- **SES via SNS**: the SNS message's RSA signature (SignatureVersion 1: SHA1, 2: SHA256)
  over AWS's canonical string, with the public key of the certificate at SigningCertURL;
  that URL must be https on `sns.<region>.amazonaws.com` and end `.pem`, and is fetched
  over verified TLS without redirects, so the certificate is the one AWS serves there.
  The certificate must be for `sns.amazonaws.com` (or that host) and valid now; no chain
  is built (the PEM file holds the leaf alone). A signature proves only that SNS sent the
  message, and anybody can make SNS send one from a topic of their own: the TopicArn must
  be in HEBDO_SES_TOPIC_ARNS, for notifications and subscription confirmations alike.
- **SendGrid**: the ECDSA P-256 / SHA256 signature of `timestamp + raw body` under
  HEBDO_SENDGRID_WEBHOOK_KEY, and a timestamp within REPLAY_WINDOW of now.
- **Mailgun**: the hex HMAC-SHA256 of `timestamp + token` under HEBDO_MAILGUN_SIGNING_KEY,
  a timestamp within REPLAY_WINDOW, and a token not used before for another event (the
  signature does not cover the event itself: without this, one captured post would sign
  any event for ten minutes). A token used again for the same event id is a retry.
- **Postmark**: HTTP basic authentication with HEBDO_POSTMARK_WEBHOOK_USER/_PASSWORD,
  compared in constant time. Postmark signs nothing else.

A replayed event is no worry past these checks: `receive_event` records each event id once
and answers the first verdict.

The request shapes are pydantic models, declared once here: they read the posts and the
OpenAPI document describes the webhooks with them. They name only the fields hebdo reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import logging
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from cryptography.x509.oid import NameOID
from limits.storage import Storage, storage_from_string
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, ValidationError

from service.config import Settings
from service.inbound.bounces import HARD, SOFT
from service.inbound.events import EventKind, ProviderEvent

__all__ = [
    "MAX_BODY",
    "Malformed",
    "NotConfigured",
    "Parsed",
    "Refused",
    "Sns",
    "TokenLedger",
    "Unavailable",
    "read_mailgun",
    "read_postmark",
    "read_sendgrid",
    "read_ses",
]

log = logging.getLogger(__name__)

# A provider's post: SendGrid batches up to a few hundred events; SNS allows 256 KiB.
MAX_BODY = 1 << 20
# How old (or how far ahead, a clock off) a signed timestamp may be.
REPLAY_WINDOW = timedelta(minutes=10)
# Whatever hebdo fetches from AWS (a certificate is about 2 KiB, a confirmation's answer less).
FETCH_LIMIT = 64 * 1024
FETCH_TIMEOUT = 5.0
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
SNS_CERTIFICATE_NAME = "sns.amazonaws.com"
_ENHANCED = re.compile(r"(?<![\d.])[245]\.\d{1,3}\.\d{1,3}(?![\d.])")


# ---------------------------------------------------------------- refusals


class Refused(Exception):
    """The post is not proven to come from the provider (401), or comes from it about
    something hebdo does not take (403, an SNS topic not configured). Nothing was done."""

    def __init__(self, message: str, *, code: str = "bad_signature", status: int = 401) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class NotConfigured(Exception):
    """The provider's setting is empty: this webhook is off."""


class Malformed(Exception):
    """The body is not what the provider posts: no JSON (400), or JSON of another shape
    (422)."""

    def __init__(self, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
        self.code = "malformed_json" if status == 400 else "invalid_payload"


class Unavailable(Exception):
    """AWS could not be reached to fetch a certificate or confirm a subscription: the post
    should come again (SNS retries)."""


@dataclass(frozen=True)
class Parsed:
    """What a post says: the events to act on, how many others it held."""

    events: tuple[ProviderEvent, ...] = ()
    ignored: int = 0
    # SNS: the topic whose subscription this post confirmed.
    subscription: str | None = None


# ---------------------------------------------------------------- shared readers


def _loose(value: Any) -> Any:
    """A text field some providers send as a number (Mailgun's timestamp, a status)."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Loose = Annotated[str | None, BeforeValidator(_loose)]


class _Read(BaseModel):
    """A provider's JSON: unknown fields are the provider's business, kept out."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


Model = TypeVar("Model", bound=BaseModel)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    # RecursionError: a body nested too deep for Python's decoder (`[` × 20,000).
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Malformed("the body is not valid UTF-8 JSON", status=400) from None


def _shaped(model: type[Model], data: Any) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        raise Malformed(f"{where}: {first['msg'].lower()}") from None


def _fresh(timestamp: str, now: datetime) -> None:
    """A signed Unix timestamp within REPLAY_WINDOW of now."""
    if not timestamp.isascii() or not timestamp.isdigit():
        raise Refused("the timestamp is not a Unix time")
    if abs(now.timestamp() - int(timestamp)) > REPLAY_WINDOW.total_seconds():
        raise Refused(
            f"the timestamp is more than {REPLAY_WINDOW.seconds // 60} minutes from now",
            code="stale_timestamp",
        )


def _status(*texts: str | None) -> str | None:
    """The first enhanced status code (5.1.1) in these texts."""
    for text in texts:
        if text and (found := _ENHANCED.search(text)):
            return found.group(0)
    return None


def _angled(value: str | None) -> str | None:
    """A Message-ID as hebdo stores it, with its angle brackets."""
    value = (value or "").strip().strip("<>").strip()
    if not value or len(value) > 250 or any(c in value for c in "<> \t\r\n"):
        return None
    return f"<{value}>"


# ---------------------------------------------------------------- Amazon SES through SNS


class SnsMessage(_Read):
    """What SNS posts to an https subscription (as `text/plain`, whatever it holds)."""

    Type: Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]
    MessageId: str
    TopicArn: str
    Message: str = Field(description="SES's notification, JSON in a string")
    Timestamp: str
    SignatureVersion: Literal["1", "2"]
    Signature: str
    SigningCertURL: str
    Subject: str | None = None
    SubscribeURL: str | None = None
    Token: str | None = None


# The fields SNS signs, in this order, each as "Name\nvalue\n" (those present).
_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED["UnsubscribeConfirmation"] = _SIGNED["SubscriptionConfirmation"]


def sns_string_to_sign(message: SnsMessage) -> bytes:
    """AWS's canonical string of a message, the bytes its Signature signs."""
    parts = []
    for name in _SIGNED[message.Type]:
        value = getattr(message, name)
        if value is not None:
            parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


def _sns_url(url: str | None, *, what: str, pem: bool) -> str:
    """`url` if it is https on an SNS host (and a .pem file for a certificate)."""
    try:
        parts = urlsplit(url or "")
        host = parts.hostname or ""
    except ValueError:
        parts, host = urlsplit(""), ""
    if (
        parts.scheme != "https"
        or parts.netloc != host
        or not SNS_HOST.match(host)
        or (pem and not parts.path.endswith(".pem"))
    ):
        raise Refused(f"the {what} is not https://sns.<region>.amazonaws.com/…: {url!r}"[:300])
    return str(url)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would lead away from the host that was checked."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_https(url: str, *, context: ssl.SSLContext | None = None) -> bytes:
    """GET `url` over https (the server's certificate checked against the system's CAs, or
    `context`'s; no redirect followed), in at most FETCH_TIMEOUT seconds and FETCH_LIMIT
    bytes. Raises Unavailable."""
    if not url.startswith("https://"):
        raise Unavailable(f"not an https URL: {url!r}")
    opener = urllib.request.build_opener(
        _NoRedirect, urllib.request.HTTPSHandler(context=context or ssl.create_default_context())
    )
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT) as answer:
            data: bytes = answer.read(FETCH_LIMIT + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # a 404, a redirect not followed: its connection is let go
        raise Unavailable(f"{urlsplit(url).hostname}: {exc}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise Unavailable(f"{urlsplit(url).hostname}: {exc}") from None
    if len(data) > FETCH_LIMIT:
        raise Unavailable(f"{urlsplit(url).hostname} answered more than {FETCH_LIMIT} bytes")
    return data


Fetch = Callable[[str], bytes]


class Sns:
    """What checking SNS messages does outside: fetching signing certificates (kept by URL
    for the life of the process: SNS signs with few) and confirming subscriptions. One per
    app (`app.extensions["hebdo.sns"]`); tests give it a fetcher of their own."""

    MAX_CACHED = 32

    def __init__(self, fetch: Fetch = fetch_https) -> None:
        self._fetch = fetch
        self._certificates: dict[str, x509.Certificate] = {}

    def verify(self, message: SnsMessage, *, now: datetime) -> None:
        """Raises Refused unless SNS signed this message; Unavailable when its certificate
        cannot be fetched now."""
        certificate = self.certificate(message.SigningCertURL, now=now)
        key = certificate.public_key()
        assert isinstance(key, rsa.RSAPublicKey)  # checked when it was fetched
        try:
            signature = base64.b64decode(message.Signature, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("the Signature is not base64") from None
        digest = hashes.SHA1() if message.SignatureVersion == "1" else hashes.SHA256()  # noqa: S303
        try:
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), digest)
        except InvalidSignature:
            raise Refused("the SNS signature does not hold") from None

    def certificate(self, url: str, *, now: datetime) -> x509.Certificate:
        """The signing certificate at `url`, checked (see the module's docstring)."""
        url = _sns_url(url, what="SigningCertURL", pem=True)
        certificate = self._certificates.get(url)
        if certificate is None:
            try:
                certificate = x509.load_pem_x509_certificates(self._fetch(url))[0]
            except ValueError:
                raise Refused(f"no PEM certificate at {url}") from None
            names = [
                attribute.value
                for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            ]
            if names not in ([SNS_CERTIFICATE_NAME], [urlsplit(url).hostname]):
                raise Refused(f"the certificate at {url} is not SNS's (CN {names})")
            if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
                raise Refused(f"the certificate at {url} holds no RSA key")
            if len(self._certificates) >= self.MAX_CACHED:
                self._certificates.clear()
            self._certificates[url] = certificate
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise Refused(f"the certificate at {url} is not valid now")
        return certificate

    def confirm(self, subscribe_url: str | None) -> None:
        """Visit a SubscriptionConfirmation's SubscribeURL, which confirms it."""
        self._fetch(_sns_url(subscribe_url, what="SubscribeURL", pem=False))


class SesRecipient(_Read):
    emailAddress: str
    status: Loose = None
    diagnosticCode: Loose = None


class SesBounce(_Read):
    bounceType: str
    bounceSubType: Loose = None
    bouncedRecipients: list[SesRecipient] = Field(default_factory=list)


class SesComplaint(_Read):
    complainedRecipients: list[SesRecipient] = Field(default_factory=list)
    complaintFeedbackType: Loose = None
    complaintSubType: Loose = None


class SesDelay(_Read):
    delayType: Loose = None
    delayedRecipients: list[SesRecipient] = Field(default_factory=list)


class SesHeader(_Read):
    name: str
    value: str


class SesCommonHeaders(_Read):
    messageId: Loose = None


class SesMail(_Read):
    messageId: Loose = None  # SES's own id
    headers: list[SesHeader] = Field(default_factory=list)
    commonHeaders: SesCommonHeaders | None = None


class SesNotification(_Read):
    """SES's JSON, from identity notifications (`notificationType`) or a configuration
    set's event publishing (`eventType`)."""

    notificationType: Loose = None
    eventType: Loose = None
    mail: SesMail | None = None
    bounce: SesBounce | None = None
    complaint: SesComplaint | None = None
    deliveryDelay: SesDelay | None = None


# Feedback types that are no complaint (as in inbound.complaints).
_NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})


def read_ses(settings: Settings, body: bytes, *, sns: Sns, now: datetime) -> Parsed:
    """An SNS post to /webhooks/ses: checked, a subscription confirmed, or SES's events."""
    if not settings.ses_topic_arns:
        raise NotConfigured("HEBDO_SES_TOPIC_ARNS")
    message = _shaped(SnsMessage, _json(body))
    # Before the signature: a topic of nobody's here costs no fetch.
    if message.TopicArn not in settings.ses_topic_arns:
        raise Refused(
            f"topic {message.TopicArn[:200]} is not in HEBDO_SES_TOPIC_ARNS",
            code="unknown_topic",
            status=403,
        )
    sns.verify(message, now=now)
    if message.Type == "SubscriptionConfirmation":
        sns.confirm(message.SubscribeURL)
        log.info("SNS subscription to %s confirmed", message.TopicArn)
        return Parsed(subscription=message.TopicArn)
    if message.Type == "UnsubscribeConfirmation":
        log.warning("SNS says the subscription to %s was deleted", message.TopicArn)
        return Parsed(ignored=1)
    try:
        notification = SesNotification.model_validate_json(message.Message)
    except ValidationError:
        # Published to the topic by something else than SES (a test from the console).
        return Parsed(ignored=1)
    return _ses_events(message.MessageId, notification)


def _ses_message_id(mail: SesMail | None) -> str | None:
    if mail is None:
        return None
    if mail.commonHeaders and mail.commonHeaders.messageId:
        return _angled(mail.commonHeaders.messageId)
    for header in mail.headers:
        if header.name.lower() == "message-id":
            return _angled(header.value)
    return None


def _ses_events(sns_id: str, note: SesNotification) -> Parsed:
    kind = note.notificationType or note.eventType or ""
    message_id = _ses_message_id(note.mail)
    detail: dict[str, Any] = {"type": kind}
    if note.mail and note.mail.messageId:
        detail["ses_message_id"] = note.mail.messageId
    found: list[ProviderEvent] = []
    ignored = 0

    def event(index: int, recipient: SesRecipient, kind: EventKind, **fields: Any) -> None:
        found.append(
            ProviderEvent(
                provider="ses",
                event_id=f"{sns_id}#{index}",
                kind=kind,
                recipient=recipient.emailAddress,
                message_id=message_id,
                detail=detail,
                **fields,
            )
        )

    if kind == "Bounce" and note.bounce is not None:
        bounce = note.bounce
        detail |= {"bounce_type": bounce.bounceType, "bounce_subtype": bounce.bounceSubType}
        if bounce.bounceSubType == "OnAccountSuppressionList":
            # Not sent: the address is on the account's suppression list, for an earlier
            # bounce or complaint that came as its own event.
            return Parsed(ignored=len(bounce.bouncedRecipients) or 1)
        # Undetermined: from the status code.
        severity = {"Permanent": HARD, "Transient": SOFT}.get(bounce.bounceType)
        for index, recipient in enumerate(bounce.bouncedRecipients):
            diagnostic = recipient.diagnosticCode or ""
            event(
                index,
                recipient,
                EventKind.BOUNCE,
                severity=severity,
                status=_status(recipient.status, diagnostic),
                diagnostic=diagnostic,
            )
    elif kind == "Complaint" and note.complaint is not None:
        complaint = note.complaint
        detail |= {"feedback_type": complaint.complaintFeedbackType}
        if (
            complaint.complaintFeedbackType in _NOT_COMPLAINTS
            or complaint.complaintSubType == "OnAccountSuppressionList"
        ):
            return Parsed(ignored=len(complaint.complainedRecipients) or 1)
        for index, recipient in enumerate(complaint.complainedRecipients):
            event(index, recipient, EventKind.COMPLAINT)
    elif kind == "DeliveryDelay" and note.deliveryDelay is not None:
        # Still being retried, like a DSN's Action: delayed: a soft bounce.
        detail |= {"delay_type": note.deliveryDelay.delayType}
        for index, recipient in enumerate(note.deliveryDelay.delayedRecipients):
            diagnostic = recipient.diagnosticCode or ""
            event(
                index,
                recipient,
                EventKind.BOUNCE,
                severity=SOFT,
                status=_status(recipient.status, diagnostic),
                diagnostic=diagnostic,
            )
    else:
        ignored = 1  # Delivery, Send, Open, Click, Reject…
    return Parsed(tuple(found), ignored)


# ---------------------------------------------------------------- SendGrid


class SendGridEvent(_Read):
    event: str = Field(description="bounce, deferred, dropped, spamreport, unsubscribe…")
    email: str
    sg_event_id: str | None = None
    smtp_id: str | None = Field(default=None, alias="smtp-id")
    type: Loose = Field(default=None, description="Of a bounce: `bounce` or `blocked`")
    status: Loose = None
    reason: Loose = None
    response: Loose = None


class SendGridEvents(RootModel[list[SendGridEvent]]):
    """A batch of SendGrid events."""


@lru_cache(maxsize=4)
def _sendgrid_key(encoded: str) -> ec.EllipticCurvePublicKey:
    # HEBDO_SENDGRID_WEBHOOK_KEY was checked to be one when the settings loaded.
    key = load_der_public_key(base64.b64decode(encoded))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def read_sendgrid(
    settings: Settings,
    body: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    now: datetime,
) -> Parsed:
    """A post of SendGrid's Signed Event Webhook, with its two headers' values."""
    if not settings.sendgrid_webhook_key:
        raise NotConfigured("HEBDO_SENDGRID_WEBHOOK_KEY")
    if not signature or not timestamp:
        raise Refused("no X-Twilio-Email-Event-Webhook-Signature and -Timestamp headers")
    _fresh(timestamp, now)
    key = _sendgrid_key(settings.sendgrid_webhook_key)
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, binascii.Error, ValueError):
        raise Refused("the SendGrid signature does not hold") from None
    data = _json(body)
    if not isinstance(data, list):
        raise Malformed("SendGrid posts a list of events")
    found: list[ProviderEvent] = []
    ignored = 0
    for item in data:
        try:
            event = _sendgrid_event(SendGridEvent.model_validate(item))
        except ValidationError:
            event = None
        if event is None:
            ignored += 1
        else:
            found.append(event)
    return Parsed(tuple(found), ignored)


def _sendgrid_event(item: SendGridEvent) -> ProviderEvent | None:
    name = item.event
    fields: dict[str, Any]
    if name == "bounce":
        # `blocked`: refused for the content or the sender's reputation, not the address.
        severity = SOFT if item.type == "blocked" else HARD
        fields = {"kind": EventKind.BOUNCE, "severity": severity}
    elif name == "deferred":
        # SendGrid tries again, like a DSN's Action: delayed.
        fields = {"kind": EventKind.BOUNCE, "severity": SOFT}
    elif name == "dropped" and item.reason == "Bounced Address":
        # Not sent: the address is on SendGrid's bounce list, for a hard bounce earlier.
        fields = {"kind": EventKind.BOUNCE, "severity": HARD}
    elif name == "spamreport":
        fields = {"kind": EventKind.COMPLAINT}
    elif name in ("unsubscribe", "group_unsubscribe"):
        fields = {"kind": EventKind.UNSUBSCRIBE}
    else:
        # processed, delivered, open, click, group_resubscribe, and the other drops
        # (unsubscribed or reported addresses: their own events said so).
        return None
    if not item.sg_event_id:
        log.warning("a SendGrid %s event without sg_event_id: ignored", name)
        return None
    diagnostic = item.reason or item.response or ""
    if fields["kind"] == EventKind.BOUNCE:
        fields |= {"status": _status(item.status, diagnostic), "diagnostic": diagnostic}
    return ProviderEvent(
        provider="sendgrid",
        event_id=item.sg_event_id,
        recipient=item.email,
        message_id=_angled(item.smtp_id),
        detail={"event": name, **({"type": item.type} if item.type else {})},
        **fields,
    )


# ---------------------------------------------------------------- Mailgun


class MailgunSignature(_Read):
    timestamp: Annotated[str, BeforeValidator(_loose)]
    token: str
    signature: str


class MailgunDeliveryStatus(_Read):
    code: Loose = None
    enhanced_code: Loose = Field(default=None, alias="enhanced-code")
    description: Loose = None
    message: Loose = None


class MailgunHeaders(_Read):
    message_id: str | None = Field(default=None, alias="message-id")


class MailgunMessage(_Read):
    headers: MailgunHeaders = Field(default_factory=MailgunHeaders)


class MailgunEvent(_Read):
    id: str
    event: str = Field(description="failed, complained, unsubscribed, delivered…")
    recipient: str | None = None
    severity: Loose = Field(default=None, description="Of a failure: permanent or temporary")
    reason: Loose = None
    delivery_status: MailgunDeliveryStatus = Field(
        default_factory=MailgunDeliveryStatus, alias="delivery-status"
    )
    message: MailgunMessage = Field(default_factory=MailgunMessage)


class MailgunWebhook(_Read):
    """One event of a Mailgun webhook, with its signature."""

    signature: MailgunSignature
    event_data: MailgunEvent = Field(alias="event-data")


class TokenLedger:
    """Mailgun's tokens, each good for one event over REPLAY_WINDOW, kept in the rate-limit
    storage (HEBDO_RATELIMIT_STORAGE: Redis, shared by every process, when the broker is
    Redis; else this process's memory). One per app (`app.extensions`)."""

    def __init__(self, storage_uri: str) -> None:
        storage = storage_from_string(storage_uri)
        assert isinstance(storage, Storage)
        self._storage = storage

    def claim(self, token: str, event_id: str) -> bool:
        """False when `token` came before with another event; True the first time, and for
        a retry of the same event (which receive_event answers with its first verdict)."""
        key = "hebdo/mailgun-token/" + hashlib.sha256(token.encode()).hexdigest()[:32]
        pair = key + "/" + hashlib.sha256(event_id.encode()).hexdigest()[:32]
        expiry = int(REPLAY_WINDOW.total_seconds())
        try:
            if self._storage.incr(key, expiry) == 1:
                self._storage.incr(pair, expiry)
                return True
            return self._storage.get(pair) > 0
        except Exception as exc:  # Redis away: as the rate limits, fail open
            log.warning("Mailgun token check skipped: storage unreachable (%s)", exc)
            return True


def read_mailgun(settings: Settings, body: bytes, *, tokens: TokenLedger, now: datetime) -> Parsed:
    """A post of a Mailgun webhook: one event."""
    if not settings.mailgun_signing_key:
        raise NotConfigured("HEBDO_MAILGUN_SIGNING_KEY")
    webhook = _shaped(MailgunWebhook, _json(body))
    signed = webhook.signature
    expected = hmac.new(
        settings.mailgun_signing_key.encode(),
        (signed.timestamp + signed.token).encode(),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected.encode(), signed.signature.lower().encode()):
        raise Refused("the Mailgun signature does not hold")
    _fresh(signed.timestamp, now)
    item = webhook.event_data
    if not tokens.claim(signed.token, item.id):
        raise Refused("this token was used before for another event", code="replayed_token")
    event = _mailgun_event(item)
    return Parsed((event,)) if event else Parsed(ignored=1)


def _mailgun_event(item: MailgunEvent) -> ProviderEvent | None:
    fields: dict[str, Any]
    if item.event == "failed":
        reason = item.reason or ""
        status = item.delivery_status
        if reason == "suppress-bounce":
            # Not sent: on Mailgun's bounce list, for a hard bounce earlier.
            severity: str | None = HARD
        elif reason.startswith("suppress-"):
            return None  # unsubscribed or complained before: their own events said so
        else:
            severity = {"permanent": HARD, "temporary": SOFT}.get(item.severity or "")
        diagnostic = " ".join(
            part for part in (status.code, status.message or status.description) if part
        )
        fields = {
            "kind": EventKind.BOUNCE,
            "severity": severity,
            "status": _status(status.enhanced_code, status.message, status.description),
            "diagnostic": diagnostic,
        }
    elif item.event == "complained":
        fields = {"kind": EventKind.COMPLAINT}
    elif item.event == "unsubscribed":
        fields = {"kind": EventKind.UNSUBSCRIBE}
    else:
        return None  # accepted, delivered, opened, clicked, stored, rejected
    if not item.recipient:
        log.warning("a Mailgun %s event without a recipient: ignored", item.event)
        return None
    detail = {"event": item.event, **({"reason": item.reason} if item.reason else {})}
    return ProviderEvent(
        provider="mailgun",
        event_id=item.id,
        recipient=item.recipient,
        message_id=_angled(item.message.headers.message_id),
        detail=detail,
        **fields,
    )


# ---------------------------------------------------------------- Postmark


class PostmarkRecord(_Read):
    """One record of a Postmark webhook (Bounce, SpamComplaint, SubscriptionChange…)."""

    RecordType: str
    ID: Loose = Field(default=None, description="Of a bounce or spam complaint")
    Type: Loose = Field(default=None, description="Of a bounce: HardBounce, SoftBounce…")
    MessageID: Loose = None
    Email: Loose = Field(default=None, description="Of a bounce or spam complaint")
    Recipient: Loose = Field(default=None, description="Of a subscription change")
    Description: Loose = None
    Details: Loose = None
    SuppressSending: bool | None = None
    SuppressionReason: Loose = Field(
        default=None, description="HardBounce, SpamComplaint or ManualSuppression"
    )
    MessageStream: Loose = None


# Bounce types: the address is at fault; the mail did not get through this time; spam.
_POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress"})
_POSTMARK_SOFT = frozenset({"SoftBounce", "Transient", "DnsError", "Blocked"})
_POSTMARK_COMPLAINT = frozenset({"SpamComplaint"})


def read_postmark(
    settings: Settings, body: bytes, *, credentials: tuple[str, str] | None
) -> Parsed:
    """A post of a Postmark webhook (one record), with its basic authentication."""
    user, password = settings.postmark_webhook_user, settings.postmark_webhook_password
    if not user:
        raise NotConfigured("HEBDO_POSTMARK_WEBHOOK_USER")
    given_user, given_password = credentials or ("", "")
    # Both compared whatever the first gives: the time says nothing about either.
    same_user = hmac.compare_digest(user.encode(), given_user.encode())
    same_password = hmac.compare_digest(password.encode(), given_password.encode())
    if credentials is None or not (same_user & same_password):
        raise Refused("wrong or missing basic authentication", code="unauthorized")
    event = _postmark_event(_shaped(PostmarkRecord, _json(body)))
    return Parsed((event,)) if event else Parsed(ignored=1)


def _postmark_event(record: PostmarkRecord) -> ProviderEvent | None:
    fields: dict[str, Any]
    kind = record.Type or ""
    diagnostic = record.Details or record.Description or ""
    if record.RecordType == "Bounce" and kind in _POSTMARK_HARD | _POSTMARK_SOFT:
        fields = {
            "kind": EventKind.BOUNCE,
            "severity": HARD if kind in _POSTMARK_HARD else SOFT,
            "status": _status(record.Details, record.Description),
            "diagnostic": diagnostic,
        }
    elif record.RecordType == "Bounce" and kind == "Unsubscribe":
        # A reader's "remove me" that Postmark caught among the bounces.
        fields = {"kind": EventKind.UNSUBSCRIBE}
    elif record.RecordType == "SpamComplaint" or (
        record.RecordType == "Bounce" and kind in _POSTMARK_COMPLAINT
    ):
        fields = {"kind": EventKind.COMPLAINT}
    elif record.RecordType == "SubscriptionChange" and record.SuppressSending:
        reason = record.SuppressionReason
        if reason == "ManualSuppression":
            fields = {"kind": EventKind.UNSUBSCRIBE}
        elif reason == "HardBounce":
            fields = {"kind": EventKind.BOUNCE, "severity": HARD, "diagnostic": "suppressed"}
        elif reason == "SpamComplaint":
            fields = {"kind": EventKind.COMPLAINT}
        else:
            return None
        kind = f"suppressed: {reason}"
    else:
        # Delivery, Open, Click, a reactivation, and the bounce types that are no failure
        # of the address (AutoResponder, SpamNotification, ChallengeVerification…).
        return None
    recipient = record.Email or record.Recipient
    if not recipient:
        log.warning("a Postmark %s record without a recipient: ignored", record.RecordType)
        return None
    event_id = record.ID or f"{record.MessageID}:{record.RecordType}:{recipient}"
    detail = {"record": record.RecordType, **({"type": kind} if kind else {})}
    if record.MessageStream:
        detail["stream"] = record.MessageStream
    return ProviderEvent(
        provider="postmark", event_id=event_id, recipient=recipient, detail=detail, **fields
    )
