"""Token API: POST /api/v1/articles (a CMS pushing an article), POST /api/v1/complaints (a
feedback-loop report), and the JSON error body of every /api route. The public sign-up
endpoint lives in signup.py."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, jsonify, request
from flask_babel import gettext as _
from werkzeug.exceptions import HTTPException

from service import i18n
from service.admin import apitokens
from service.digest.articles import ArticleInput, InvalidArticle, store_article
from service.extensions import db
from service.inbound import complaints
from service.web.common import bearer_token, now, settings
from service.web.payloads import PayloadError, optional_string, read_payload

bp = Blueprint("api", __name__, url_prefix="/api/v1")


ARTICLE_FIELDS = {
    "id": 512,
    "url": 2000,
    "title": 2000,
    "summary": 20000,
    "category": 200,
    "author": 500,
    "image_url": 2000,
    "published_at": 64,
    "language": 16,
}


def _bearer(roles: tuple[str, ...]) -> apitokens.ApiToken | tuple[Response, int]:
    """The request's live token if its role is one of `roles`; else the 401 or 403 to answer."""
    token = bearer_token("hebdo")
    if isinstance(token, tuple):
        return token
    if token.role not in roles:
        return jsonify({"error": "forbidden", "message": "this token's role may not do this"}), 403
    return token


def _published_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(422, "invalid_field", "published_at must be ISO 8601") from None
    if moment.tzinfo is None:
        raise PayloadError(
            422, "invalid_field", "published_at needs a time zone, e.g. 2026-11-23T08:00:00+01:00"
        )
    if not 1970 <= moment.year <= 2100:
        raise PayloadError(422, "invalid_field", "published_at must be between 1970 and 2100")
    return moment


@bp.post("/articles")
def push_article() -> tuple[Response, int]:
    """Create or update one article (idempotent on `id`, else `url`): 201 or 200.

    Authorization: Bearer <token> of role publisher, editor or admin.
    """
    token = _bearer(("publisher", "editor", "admin"))
    if isinstance(token, tuple):
        return token
    try:
        if request.mimetype != "application/json":
            raise PayloadError(415, "unsupported_media_type", "send application/json")
        data = read_payload()
        unknown = sorted(set(data) - set(ARTICLE_FIELDS))
        if unknown:
            raise PayloadError(422, "invalid_field", f"unknown field(s): {', '.join(unknown)}")
        fields = {
            name: optional_string(data, name, limit) for name, limit in ARTICLE_FIELDS.items()
        }
        item = ArticleInput(
            url=fields["url"] or "",
            title=fields["title"] or "",
            guid=fields["id"] or "",
            summary=fields["summary"] or "",
            category=fields["category"] or "",
            author=fields["author"] or "",
            image_url=fields["image_url"],
            published_at=_published_at(fields["published_at"]),
            language=fields["language"] or "",
        )
        article_id, created = store_article(
            item, source=f"api:{token.name}", now=now(), namespace="api"
        )
        db.session.commit()
    except PayloadError as exc:
        return jsonify({"error": exc.code, "message": exc.detail}), exc.status
    except InvalidArticle as exc:
        db.session.rollback()
        return jsonify({"error": "invalid_article", "message": str(exc)}), 422
    return jsonify({"id": article_id, "created": created}), 201 if created else 200


@bp.post("/complaints")
def post_complaint() -> tuple[Response, int]:
    """One feedback-loop report (ARF, RFC 5965), as the raw mail: `Content-Type: message/rfc822`.

    Authorization: Bearer <token> of role feedback or admin. 200 with what was done, whether
    or not a subscriber changed (a report about an erased reader is still handled); 422 when
    the body is not a feedback report, so the sender keeps it.
    """
    token = _bearer(("feedback", "admin"))
    if isinstance(token, tuple):
        return token
    # A report carries the reported mail, often whole: more than a sign-up's limit.
    request.max_content_length = complaints.MAX_REPORT_BYTES
    if request.mimetype != "message/rfc822":
        return jsonify(
            {"error": "unsupported_media_type", "message": "send the report as message/rfc822"}
        ), 415
    try:
        outcome = complaints.ingest(
            settings(), request.get_data(), source="api", actor=f"token:{token.name}", now=now()
        )
    except complaints.NotAReport as exc:
        return jsonify({"error": "not_a_report", "message": str(exc)}), 422
    except complaints.RetryLater as exc:
        response = jsonify({"error": "busy", "message": str(exc)})
        response.headers["Retry-After"] = "1"
        return response, 503
    return jsonify(outcome.as_dict()), 200


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
