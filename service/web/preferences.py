"""The reader's preference page, `/preferences/<token>`, its JSON twin
`/api/v1/preferences/<token>`, and the page that confirms a new address.

As the other public pages: a GET only shows, every change is a POST (or a PUT), so a
mail scanner that follows the digest's link changes nothing. The signed token in the URL
is the only credential (no cookie, hence no CSRF token); a form post from another site is
refused by the same origin check as the sign-up form's, and the JSON PUT cannot be sent
cross-site without a CORS preflight, which this API never answers.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, render_template, request
from flask_babel import format_date
from flask_babel import gettext as _

from service.mail.errors import DeliveryError
from service.mail.transport import open_transport
from service.signup.defences import allowed_origin
from service.subscribers.addresses import InvalidEmail
from service.subscribers.preferences import (
    MAX_PAUSE_WEEKS,
    InvalidPreference,
    address_change_target,
    categories_offered,
    change_address,
    pause_until,
    read_preferences,
    request_address_change,
    subscriber_for_preferences,
    update_preferences,
)
from service.subscribers.tokens import BadToken, unsubscribe_token
from service.web.api.openapi import Reply, error, operation
from service.web.api.shapes import CategoryCount, PreferencesIn, PreferencesOut
from service.web.common import client_ip, message_page, now, page_locale, settings
from service.web.payloads import PayloadError, parse, read_payload

log = logging.getLogger(__name__)
bp = Blueprint("preferences", __name__)
api_bp = Blueprint("preferences_api", __name__, url_prefix="/api/v1")

# What the page says after a change (the redirect carries only the key).
_DONE = ("categories", "locale", "pause", "resume", "address")


def _done_message(key: str, paused_until: date | None) -> str:
    if key == "categories":
        return _("Your choice of topics is saved.")
    if key == "locale":
        return _("Your language is saved.")
    if key == "pause" and paused_until is not None:
        return _("Your digest is paused until %(date)s.", date=format_date(paused_until, "long"))
    if key == "resume":
        return _("Your digest is back: you will receive the next issue.")
    if key == "address":
        return _(
            "If this address can receive %(site)s, a link to confirm it is on its way. "
            "Your address changes once you follow it.",
            site=settings().site_name,
        )
    return ""


def _bad_link() -> tuple[str, int]:
    return render_template(
        "pages/message.html", locale=page_locale(), **message_page("bad_link"), offer_subscribe=True
    ), 400


def _page(token: str, *, done: str = "", problem: str = "", status: int = 200) -> Any:
    sub = subscriber_for_preferences(settings(), token)
    locale = page_locale(sub.locale)
    moment = now()
    chosen = read_preferences(sub, moment.date())
    html = render_template(
        "pages/preferences.html",
        locale=locale,
        token=token,
        email=sub.email,
        chosen=chosen,
        every=not chosen.categories,
        offered=categories_offered(moment, chosen.categories),
        paused_label=format_date(chosen.paused_until, "long") if chosen.paused_until else "",
        weeks=range(1, MAX_PAUSE_WEEKS + 1),
        done=_done_message(done, chosen.paused_until) if done in _DONE else "",
        problem=problem,
        unsubscribe=unsubscribe_token(settings(), sub),
    )
    response = Response(html, status=status, mimetype="text/html")
    # The form posts must carry this page's Origin (see /subscribe).
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/preferences/<token>")
def preferences_page(token: str) -> Any:
    """The reader's choices, each with its own form; changes nothing."""
    try:
        return _page(token, done=request.args.get("done", ""))
    except BadToken:
        return _bad_link()


@bp.post("/preferences/<token>")
def preferences_post(token: str) -> Any:
    """One change from one of the page's forms, then back to the page saying what changed."""
    origin = request.headers.get("Origin")
    if origin is not None and not allowed_origin(settings(), origin):
        return render_template(
            "pages/message.html",
            locale=page_locale(),
            title=_("Not saved"),
            body=_("This form is not accepted from this site."),
        ), 403
    try:
        sub = subscriber_for_preferences(settings(), token)
    except BadToken:
        return _bad_link()
    page_locale(sub.locale)
    form = request.form
    action = form.get("action", "")
    moment = now()
    try:
        if action == "categories":
            update_preferences(
                sub.id, now=moment, categories=form.getlist("category"), ip=client_ip()
            )
        elif action == "locale":
            update_preferences(sub.id, now=moment, locale=form.get("locale", ""), ip=client_ip())
        elif action == "pause":
            weeks = form.get("weeks", "")
            until = pause_until(
                moment.date(), int(weeks) if weeks.isascii() and weeks.isdigit() else 0
            )
            update_preferences(sub.id, now=moment, paused_until=until, ip=client_ip())
        elif action == "resume":
            update_preferences(sub.id, now=moment, paused_until=None, ip=client_ip())
        elif action == "address":
            with open_transport(settings()) as transport:
                request_address_change(
                    settings(),
                    sub.id,
                    form.get("email", ""),
                    transport=transport,
                    now=moment,
                    ip=client_ip(),
                )
        else:
            return _page(token, problem=_("Choose what to change."), status=422)
    except InvalidPreference:
        return _page(token, problem=_("This choice is not possible: try again."), status=422)
    except InvalidEmail as exc:
        return _page(token, problem=exc.message(), status=422)
    except (DeliveryError, OSError):
        # The relay is away: nothing changed, the reader may try again.
        log.warning("address change link for subscriber %s not sent", sub.id, exc_info=True)
        return _page(
            token, problem=_("The link could not be sent now: try again later."), status=503
        )
    return redirect(f"/preferences/{token}?done={action}", code=303)


@bp.get("/preferences/address/<token>")
def address_page(token: str) -> Any:
    """Show the button that confirms a new address; changes nothing."""
    try:
        sub, email = address_change_target(settings(), token)
    except BadToken:
        return _bad_link()
    return render_template(
        "pages/address.html", locale=page_locale(sub.locale), token=token, email=email
    )


@bp.post("/preferences/address/<token>")
def address_post(token: str) -> Any:
    """The new address takes over (idempotent)."""
    try:
        sub = change_address(settings(), token, now=now(), ip=client_ip())
    except BadToken:
        return _bad_link()
    locale = page_locale(sub.locale)
    return render_template(
        "pages/message.html",
        locale=locale,
        title=_("Address changed"),
        body=_(
            "From now on, %(site)s goes to %(email)s.", site=settings().site_name, email=sub.email
        ),
    )


# ---------------------------------------------------------------- JSON


def _answer(token: str) -> Response:
    sub = subscriber_for_preferences(settings(), token)
    moment = now()
    chosen = read_preferences(sub, moment.date())
    body = PreferencesOut(
        categories=chosen.categories,
        locale="en" if chosen.locale == "en" else "fr",
        paused_until=chosen.paused_until,
        available=[
            CategoryCount(name=c.name, articles=c.articles)
            for c in categories_offered(moment, chosen.categories)
        ],
    )
    response = jsonify(body.model_dump(mode="json"))
    response.headers["Cache-Control"] = "no-store"
    return response


_NOT_FOUND = {"error": "not_found", "message": "no reader behind this link"}


@api_bp.get("/preferences/<token>")
@operation(
    summary="A reader's choices, from the link in their digest",
    description="The token is the one of the digest's preference link; nothing changes.",
    replies={200: Reply("The choices", PreferencesOut), 404: error("Unknown or forged link")},
)
def get_preferences(token: str) -> Any:
    """A reader's categories, language and pause."""
    try:
        return _answer(token)
    except BadToken:
        return jsonify(_NOT_FOUND), 404


@api_bp.put("/preferences/<token>")
@operation(
    summary="Change a reader's choices",
    description="Each change is audited; a field left out is left as it is.",
    body=PreferencesIn,
    replies={
        200: Reply("The choices as they now are", PreferencesOut),
        400: error("Malformed JSON"),
        404: error("Unknown or forged link"),
        415: error("Not JSON"),
        422: error("Unknown category or locale, or a pause beyond 8 weeks or in the past"),
    },
)
def put_preferences(token: str) -> Any:
    """Change a reader's categories, language or pause."""
    try:
        sub = subscriber_for_preferences(settings(), token)
    except BadToken:
        return jsonify(_NOT_FOUND), 404
    try:
        if request.mimetype != "application/json":
            raise PayloadError(415, "unsupported_media_type", "send application/json")
        wanted = parse(PreferencesIn, read_payload())
    except PayloadError as exc:
        return jsonify({"error": exc.code, "message": exc.detail}), exc.status
    given = wanted.model_fields_set
    try:
        update_preferences(
            sub.id,
            now=now(),
            categories=wanted.categories if "categories" in given else None,
            locale=wanted.locale if "locale" in given else None,
            paused_until=wanted.paused_until if "paused_until" in given else False,
            ip=client_ip(),
        )
    except InvalidPreference as exc:
        return jsonify({"error": "invalid_field", "message": str(exc)}), 422
    return _answer(token)
