"""Provider webhooks: POST /api/v1/webhooks/ses, /sendgrid, /mailgun and /postmark, where
a sending service says what came back (bounces, complaints, unsubscriptions).

No bearer token: each provider proves itself its own way (inbound.providers checks it),
so these routes are off until the provider's setting is filled in (404 `not_configured`).
Each view checks and reads the post, hands each event to `receive_event` and answers what
was made of it; a refused post changes nothing. docs/webhooks.md is the operator's side.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.extensions import db
from service.inbound import providers
from service.inbound.events import EventKind, receive_event
from service.inbound.receive import RetryLater
from service.models import InboundVerdict
from service.web.api.openapi import Reply, error, operation
from service.web.common import now, settings

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/webhooks")

# Seconds a provider is asked to wait before it posts again.
RETRY_AFTER = "60"


class WebhookResult(BaseModel):
    event_id: str = Field(description="The provider's id of the event")
    kind: EventKind
    verdict: InboundVerdict
    replay: bool = Field(description="This event came before: its first verdict, nothing done")


class WebhookOutcome(BaseModel):
    received: int = Field(description="Events acted on: bounces, complaints, unsubscriptions")
    ignored: int = Field(description="Events of other types (delivered, opened…), not acted on")
    results: list[WebhookResult]
    subscription: str | None = Field(
        default=None, description="SNS only: the topic whose subscription this post confirmed"
    )


_RETRY = {"Retry-After": {"type": "string", "pattern": "^[0-9]+$"}}
REPLIES = {
    200: Reply("Checked and recorded (whatever each verdict)", WebhookOutcome),
    400: error("Not JSON"),
    401: error("Signature or authentication missing, wrong or stale: nothing done"),
    404: error("This provider's setting is empty: the webhook is off (`not_configured`)"),
    413: error("Larger than 1 MiB"),
    422: error("JSON, but not of this provider's shape"),
    503: error("Cannot be recorded now: post it again", headers=_RETRY),
}


def _sns() -> providers.Sns:
    """The app's SNS certificate cache and fetcher (tests put one of their own here)."""
    return current_app.extensions.setdefault("hebdo.sns", providers.Sns())


def _mailgun_tokens() -> providers.TokenLedger:
    ledger = current_app.extensions.get("hebdo.mailgun_tokens")
    if ledger is None:
        ledger = providers.TokenLedger(settings().ratelimit_storage)
        current_app.extensions["hebdo.mailgun_tokens"] = ledger
    return ledger


def _refusal(code: str, message: str, status: int, **headers: str) -> tuple[Response, int]:
    response = jsonify({"error": code, "message": message})
    response.headers.update(headers)
    return response, status


Read = Callable[[Settings, bytes, datetime], providers.Parsed]


def _take(read: Read, **refusal_headers: str) -> tuple[Response, int]:
    """Check and read the post with `read`, receive each event, answer."""
    request.max_content_length = providers.MAX_BODY
    current, moment = settings(), now()
    try:
        parsed = read(current, request.get_data(), moment)
        results = [receive_event(current, event, now=moment) for event in parsed.events]
    except providers.NotConfigured as exc:
        return _refusal("not_configured", f"this webhook is off: {exc} is empty", 404)
    except providers.Refused as exc:
        headers = refusal_headers if exc.status == 401 else {}
        return _refusal(exc.code, str(exc), exc.status, **headers)
    except providers.Malformed as exc:
        return _refusal(exc.code, str(exc), exc.status)
    except (providers.Unavailable, RetryLater, SQLAlchemyError) as exc:
        db.session.rollback()
        message = "the database is unavailable" if isinstance(exc, SQLAlchemyError) else str(exc)
        return _refusal("busy", message, 503, **{"Retry-After": RETRY_AFTER})
    answer = WebhookOutcome(
        received=len(results),
        ignored=parsed.ignored,
        results=[
            WebhookResult(
                event_id=event.event_id,
                kind=event.kind,
                verdict=InboundVerdict(got.verdict),
                replay=got.replay,
            )
            for event, got in zip(parsed.events, results, strict=True)
        ],
        subscription=parsed.subscription,
    )
    return jsonify(answer.model_dump(mode="json")), 200


@bp.post("/ses")
@operation(
    summary="Amazon SES bounces and complaints, through an SNS topic",
    description="The SNS message as SNS posts it (`text/plain`, JSON inside). Its RSA "
    "signature must hold under the certificate at its SigningCertURL (https on "
    "`sns.<region>.amazonaws.com`, a `.pem`), and its TopicArn be in HEBDO_SES_TOPIC_ARNS; "
    "a SubscriptionConfirmation of such a topic is confirmed. SES's Bounce, DeliveryDelay "
    "and Complaint notifications are recorded once per recipient; other types are "
    "ignored. No token: the signature is the proof (docs/webhooks.md).",
    body=providers.SnsMessage,
    body_types=("text/plain", "application/json"),
    roles=None,
    replies={**REPLIES, 403: error("Well signed, but the topic is not configured")},
)
def ses() -> tuple[Response, int]:
    """An SNS post: a subscription to confirm, or SES's notifications."""
    return _take(lambda current, body, at: providers.read_ses(current, body, sns=_sns(), now=at))


@bp.post("/sendgrid")
@operation(
    summary="SendGrid's Signed Event Webhook",
    description="A batch of events. The `X-Twilio-Email-Event-Webhook-Signature` header "
    "must be the ECDSA signature of `X-Twilio-Email-Event-Webhook-Timestamp` + the body under "
    "HEBDO_SENDGRID_WEBHOOK_KEY, the timestamp within 10 minutes of now. bounce, deferred, "
    "dropped (Bounced Address), spamreport, unsubscribe and group_unsubscribe are recorded "
    "once per `sg_event_id`; other events are ignored. No token: the signature is the proof.",
    body=providers.SendGridEvents,
    roles=None,
    replies=REPLIES,
)
def sendgrid() -> tuple[Response, int]:
    """A batch of SendGrid events, with its signature headers."""
    return _take(
        lambda current, body, at: providers.read_sendgrid(
            current,
            body,
            signature=request.headers.get("X-Twilio-Email-Event-Webhook-Signature"),
            timestamp=request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp"),
            now=at,
        )
    )


@bp.post("/mailgun")
@operation(
    summary="A Mailgun webhook's event",
    description="One event with its `signature`: the hex HMAC-SHA256 of timestamp + token "
    "under HEBDO_MAILGUN_SIGNING_KEY, the timestamp within 10 minutes of now, the token "
    "never seen with another event. failed (permanent or temporary), complained and "
    "unsubscribed are recorded once per event id; other events are ignored. No token: the "
    "signature is the proof.",
    body=providers.MailgunWebhook,
    roles=None,
    replies=REPLIES,
)
def mailgun() -> tuple[Response, int]:
    """A Mailgun event, with its signature."""
    return _take(
        lambda current, body, at: providers.read_mailgun(
            current, body, tokens=_mailgun_tokens(), now=at
        )
    )


@bp.post("/postmark")
@operation(
    summary="A Postmark webhook's record",
    description="One record, posted with HTTP basic authentication "
    "(HEBDO_POSTMARK_WEBHOOK_USER / _PASSWORD). Bounce (hard, soft, spam complaint), "
    "SpamComplaint and SubscriptionChange (suppressed) records are recorded once; other "
    "records are ignored. No bearer token: the basic authentication is the proof.",
    body=providers.PostmarkRecord,
    roles=None,
    replies={
        **REPLIES,
        401: error(
            "Basic authentication missing or wrong: nothing done",
            headers={"WWW-Authenticate": {"type": "string", "pattern": "^Basic "}},
        ),
    },
)
def postmark() -> tuple[Response, int]:
    """A Postmark record, with its basic authentication."""
    auth = request.authorization
    credentials = (
        (auth.username or "", auth.password or "")
        if auth is not None and auth.type == "basic"
        else None
    )
    return _take(
        lambda current, body, _at: providers.read_postmark(current, body, credentials=credentials),
        **{"WWW-Authenticate": 'Basic realm="hebdo webhooks"'},
    )
