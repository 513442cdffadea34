"""Token API: POST /api/v1/articles (a CMS pushing an article), POST /api/v1/complaints (a
feedback-loop report), POST /api/v1/inbound (any mail that came back), and the JSON error
body of every /api route. The public sign-up
endpoint lives in signup.py."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask_babel import gettext as _
from werkzeug.exceptions import HTTPException

from service import i18n
from service.admin import apitokens
from service.digest.articles import ArticleInput, InvalidArticle, store_article
from service.extensions import db
from service.inbound import complaints
from service.inbound.reading import MAX_BYTES, NotMail
from service.inbound.receive import RetryLater, receive, receive_report
from service.mail.transport import send_one
from service.models import InboundVerdict
from service.web.api.openapi import Reply, error, operation
from service.web.api.shapes import (
    ArticleIn,
    ComplaintOutcome,
    InboundOutcome,
    InboundQuery,
    StoredArticle,
)
from service.web.common import bearer_token, now, settings
from service.web.payloads import PayloadError, parse, read_payload

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _bearer(roles: tuple[str, ...]) -> apitokens.ApiToken | tuple[Response, int]:
    """The request's live token if its role is one of `roles`; else the 401 or 403 to answer."""
    token = bearer_token("hebdo")
    if isinstance(token, tuple):
        return token
    if token.role not in roles:
        return jsonify({"error": "forbidden", "message": "this token's role may not do this"}), 403
    return token


ARTICLE_ROLES = ("publisher", "editor", "admin")


@bp.post("/articles")
@operation(
    summary="Create or update an article (idempotent on `id`, else `url`)",
    body=ArticleIn,
    roles=ARTICLE_ROLES,
    replies={
        200: Reply("Updated", StoredArticle),
        201: Reply("Created", StoredArticle),
        400: error("Malformed JSON"),
        413: error("Body too large"),
        415: error("Not JSON"),
        422: error("Invalid field"),
    },
)
def push_article() -> tuple[Response, int]:
    """Create or update one article (idempotent on `id`, else `url`): 201 or 200."""
    token = _bearer(ARTICLE_ROLES)
    if isinstance(token, tuple):
        return token
    try:
        if request.mimetype != "application/json":
            raise PayloadError(415, "unsupported_media_type", "send application/json")
        pushed = parse(ArticleIn, read_payload())
        item = ArticleInput(
            url=pushed.url,
            title=pushed.title,
            guid=pushed.id or "",
            summary=pushed.summary or "",
            category=pushed.category or "",
            author=pushed.author or "",
            image_url=pushed.image_url,
            published_at=pushed.published_at,
            language=pushed.language or "",
        )
        article_id, created = store_article(
            item, source=f"api:{token.name}", now=now(), namespace="api"
        )
        db.session.commit()
    except PayloadError as exc:
        # An article without a usable address or title is one the CMS cannot have stored:
        # the same `invalid_article` the domain's own refusals get.
        code = "invalid_article" if exc.field in ("url", "title") else exc.code
        return jsonify({"error": code, "message": exc.detail}), exc.status
    except InvalidArticle as exc:
        db.session.rollback()
        return jsonify({"error": "invalid_article", "message": str(exc)}), 422
    stored = StoredArticle(id=article_id, created=created)
    return jsonify(stored.model_dump()), 201 if created else 200


COMPLAINT_ROLES = ("feedback", "admin")


@bp.post("/complaints")
@operation(
    summary="Record a feedback-loop complaint (an ARF report, RFC 5965)",
    description="The report as received, a `multipart/report; report-type=feedback-report` "
    "mail, up to 2 MiB. The subscriber is found from the signed unsubscribe link in the "
    "reported mail's List-Unsubscribe (else from its recipient, when the mail carries this "
    "list's List-Id), marked `complained` and suppressed, once. Token role: feedback or admin.",
    raw_body={"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    roles=COMPLAINT_ROLES,
    replies={
        200: Reply("Handled (whatever the result)", ComplaintOutcome),
        413: error("Larger than 2 MiB"),
        415: error("Not message/rfc822"),
        422: error("Not a feedback report (the reason says why): keep it"),
        503: error(
            "The subscriber kept changing: post it again",
            headers={"Retry-After": {"type": "string", "pattern": "^[0-9]+$"}},
        ),
    },
)
def post_complaint() -> tuple[Response, int]:
    """One feedback-loop report (ARF, RFC 5965), as the raw mail: `Content-Type: message/rfc822`.

    200 with what was done, whether or not a subscriber changed (a report about an erased
    reader is still handled); 422 when the body is not a feedback report, so the sender
    keeps it.
    """
    token = _bearer(COMPLAINT_ROLES)
    if isinstance(token, tuple):
        return token
    # A report carries the reported mail, often whole: more than a sign-up's limit.
    request.max_content_length = complaints.MAX_REPORT_BYTES
    if request.mimetype != "message/rfc822":
        return jsonify(
            {"error": "unsupported_media_type", "message": "send the report as message/rfc822"}
        ), 415
    try:
        outcome = receive_report(
            settings(), request.get_data(), source="api", actor=f"token:{token.name}", now=now()
        )
    except complaints.NotAReport as exc:
        return jsonify({"error": "not_a_report", "message": str(exc)}), 422
    except complaints.RetryLater as exc:
        response = jsonify({"error": "busy", "message": str(exc)})
        response.headers["Retry-After"] = "1"
        return response, 503
    answer = ComplaintOutcome(
        result=outcome.result,
        reason=outcome.reason,
        subscriber_id=outcome.subscriber_id,
        issue=outcome.week,
    )
    return jsonify(answer.model_dump(mode="json")), 200


@bp.post("/inbound")
@operation(
    summary="Record a mail that came back (a bounce, complaint, unsubscribe, reply…)",
    description="The mail as received, up to 2 MiB, for relays that post rather than pipe. "
    "It is classified (DSN or another bounce form, ARF report, auto-reply, mail to a "
    "reader's unsubscribe address, a person's reply), acted on, and recorded with its "
    "evidence (see /admin/inbound). The same bytes posted again answer the first verdict. "
    "Token role: feedback or admin.",
    raw_body={"message/rfc822": {"schema": {"type": "string", "format": "binary"}}},
    query=InboundQuery,
    roles=COMPLAINT_ROLES,
    replies={
        200: Reply("Recorded (whatever the verdict)", InboundOutcome),
        413: error("Larger than 2 MiB"),
        415: error("Not message/rfc822"),
        422: error("Not a mail at all (the reason says why), or a bad envelope parameter"),
        503: error(
            "Cannot be recorded now: post it again",
            headers={"Retry-After": {"type": "string", "pattern": "^[0-9]+$"}},
        ),
    },
)
def post_inbound() -> tuple[Response, int]:
    """One mail that came back, as the raw mail: `Content-Type: message/rfc822`."""
    token = _bearer(COMPLAINT_ROLES)
    if isinstance(token, tuple):
        return token
    request.max_content_length = MAX_BYTES
    try:
        query = parse(InboundQuery, request.args.to_dict())
    except PayloadError as exc:
        return jsonify({"error": exc.code, "message": exc.detail}), exc.status
    if request.mimetype != "message/rfc822":
        return jsonify(
            {"error": "unsupported_media_type", "message": "send the mail as message/rfc822"}
        ), 415
    current = settings()
    try:
        got = receive(
            current,
            request.get_data(),
            source="api",
            now=now(),
            envelope_from=query.sender,
            recipients=[query.recipient] if query.recipient else [],
            forward=lambda outgoing: send_one(current, outgoing),
        )
    except NotMail as exc:
        return jsonify({"error": "not_mail", "message": str(exc)}), 422
    except RetryLater as exc:
        response = jsonify({"error": "busy", "message": str(exc)})
        response.headers["Retry-After"] = "60"
        return response, 503
    answer = InboundOutcome(
        id=got.id,
        kind=got.kind,
        verdict=InboundVerdict(got.verdict),
        rule=got.rule,
        subscriber_id=got.subscriber_id,
        issue=got.issue,
        replay=got.replay,
    )
    return jsonify(answer.model_dump(mode="json")), 200


def json_error(exc: HTTPException) -> Response:
    """JSON body for an HTTP error under /api (413, 405, 404...), never an HTML page."""
    code = exc.code or 500
    message = exc.description or exc.name
    if code == 413:
        i18n.set_locale(i18n.pick_locale(accept=[lang for lang, _q in request.accept_languages]))
        message = _("Request too large.")
    response = exc.get_response()
    body = jsonify({"error": exc.name.lower().replace(" ", "_"), "message": message})
    body.status_code = code
    for header in ("Allow", "Retry-After"):
        if header in response.headers:
            body.headers[header] = response.headers[header]
    return body
