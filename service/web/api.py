"""JSON API: POST /api/v1/subscriptions (public) and POST /api/v1/articles (token).

The subscription answer never depends on whether the address was already
known: new, pending, active and unsubscribed addresses all get the same body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, HTTPException

from .. import apitokens, i18n, jobs
from ..articles import ArticleInput, InvalidArticle, store_article
from ..extensions import db
from ..subscriptions import Consent, InvalidEmail, subscribe
from .common import client_ip, now, page_locale, settings, user_agent

bp = Blueprint("api", __name__, url_prefix="/api/v1")

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_SOURCE_LENGTH = 2048
MAX_CONSENT_LENGTH = 64


class PayloadError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _payload() -> dict[str, Any]:
    if request.mimetype in FORM_TYPES:
        return request.form.to_dict()
    if request.mimetype == "application/json" or request.mimetype.endswith("+json"):
        try:
            data = request.get_json(force=True, silent=False)
        except BadRequest:
            raise PayloadError(400, "malformed_json", "the body is not valid UTF-8 JSON") from None
        if not isinstance(data, dict):
            raise PayloadError(400, "malformed_json", "the body must be a JSON object")
        return data
    raise PayloadError(415, "unsupported_media_type", "send application/json or a form")


def _optional_string(data: dict[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(422, "invalid_field", f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(422, "invalid_field", f"{name} is not valid Unicode text") from None
    if len(value) > limit:
        raise PayloadError(422, "invalid_field", f"{name} is longer than {limit} characters")
    return value.strip()


def _source(value: str | None) -> str | None:
    """The page the form was on; recorded only when it is an http(s) URL."""
    if value and value.startswith(("https://", "http://")) and value.isprintable():
        return value
    return None


def _consent_version(value: Any) -> str:
    if value is True or value is None or value in ("", "on", "true", "1", "yes"):
        return settings().consent_version
    if isinstance(value, str) and len(value) <= MAX_CONSENT_LENGTH and value.isprintable():
        return value.strip()
    raise PayloadError(422, "invalid_field", "consent must be a consent text version (string)")


@bp.post("/subscriptions")
def create_subscription() -> Response | tuple[Response, int] | tuple[str, int]:
    """Sign an address up; 202 (JSON) or 303 to the thank-you page (form)."""
    form_post = request.mimetype in FORM_TYPES
    locale = page_locale(request.form.get("locale") if form_post else None)
    try:
        data = _payload()
        locale = page_locale(data.get("locale") if isinstance(data.get("locale"), str) else None)
        source = _source(_optional_string(data, "source", MAX_SOURCE_LENGTH))
        consent = Consent(
            source=source,
            text_version=_consent_version(data.get("consent")),
            ip=client_ip(),
            user_agent=user_agent(),
        )
        result = subscribe(
            data.get("email"), locale=locale, consent=consent, now=now(), settings=settings()
        )
    except PayloadError as exc:
        body = {
            "error": exc.code,
            "message": i18n.translate(locale, "bad_request", detail=exc.detail),
        }
        if exc.status == 415:
            body["message"] = i18n.translate(locale, "unsupported_type")
        return jsonify(body), exc.status
    except InvalidEmail as exc:
        message = exc.message(locale)
        if form_post:
            return render_template("pages/invalid.html", message=message, locale=locale), 422
        body = {"error": "invalid_email", "code": exc.code, "message": message}
        if exc.detail:
            body["detail"] = exc.detail
        return jsonify(body), 422

    if result.confirmation_due:
        jobs.enqueue(jobs.SEND_CONFIRMATION, result.subscriber_id)

    suggestion = result.suggestion
    if form_post:
        domain = suggestion.rpartition("@")[2] if suggestion else None
        return redirect(url_for("public.thanks", lang=locale, domain=domain), 303)  # type: ignore[return-value]
    body = {"status": "accepted", "message": i18n.translate(locale, "accepted")}
    if suggestion:
        body["suggestion"] = suggestion
        body["suggestion_message"] = i18n.translate(locale, "suggestion", suggestion=suggestion)
    return jsonify(body), 202


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


def _bearer() -> apitokens.ApiToken | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return apitokens.authenticate(token.strip(), now())


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
    token = _bearer()
    if token is None:
        response = jsonify({"error": "unauthorized", "message": "a valid bearer token is required"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="hebdo"'
        return response, 401
    try:
        if request.mimetype != "application/json":
            raise PayloadError(415, "unsupported_media_type", "send application/json")
        data = _payload()
        unknown = sorted(set(data) - set(ARTICLE_FIELDS))
        if unknown:
            raise PayloadError(422, "invalid_field", f"unknown field(s): {', '.join(unknown)}")
        fields = {
            name: _optional_string(data, name, limit) for name, limit in ARTICLE_FIELDS.items()
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


def json_error(exc: HTTPException) -> Response:
    """JSON body for an HTTP error under /api (413, 405, 404...), never an HTML page."""
    locale = i18n.pick_locale(accept=[lang for lang, _q in request.accept_languages])
    code = exc.code or 500
    message = i18n.translate(locale, "too_large") if code == 413 else (exc.description or exc.name)
    response = exc.get_response()
    body = jsonify({"error": exc.name.lower().replace(" ", "_"), "message": message})
    body.status_code = code
    for header in ("Allow", "Retry-After"):
        if header in response.headers:
            body.headers[header] = response.headers[header]
    return body
