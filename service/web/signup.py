"""The public sign-up endpoint: `POST /api/v1/subscriptions` (JSON from the embedded box,
or form-encoded from the same markup without JavaScript) and `GET
/api/v1/subscriptions/form` (what the box needs: a form token, the consent line, a
CAPTCHA when one is asked for).

CORS is sent for the origins in HEBDO_ALLOWED_ORIGINS only, without credentials; other
origins get none. Three rate limits hold every post: per client IP, per /24 or /64
network, per target address (an HMAC of it), counted in one storage call
(service/signup/limits.py). The answer never depends on whether the
address was already known, nor on whether the post was caught as a bot's.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_limiter.util import get_remote_address

from service import jobs
from service.signup import limits as signup_limits
from service.signup.defences import (
    address_key,
    allowed_origin,
    form_context,
    http_verifier,
    record,
)
from service.signup.screening import Refused, SignupPost, Visitor, check_origin, screen
from service.subscribers.addresses import InvalidEmail
from service.web.api.openapi import Reply, error, operation
from service.web.api.shapes import SignupAccepted, SignupForm, SignupFormQuery
from service.web.common import (
    client_ip,
    message_page,
    now,
    page_locale,
    settings,
    user_agent,
)
from service.web.payloads import FORM_TYPES, PayloadError, parse, read_payload

bp = Blueprint("signup", __name__, url_prefix="/api/v1")


# ---------------------------------------------------------------- CORS


@bp.after_request
def _cors(response: Response) -> Response:
    """Allowed origins get CORS (no credentials); others get none. `Vary: Origin` either
    way, so a cache never serves one origin's answer to another."""
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if origin and allowed_origin(settings(), origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


# ---------------------------------------------------------------- rate limits


def _network() -> str:
    """The client's /24 (IPv4) or /64 (IPv6): one bot farm behind many neighbouring IPs."""
    address = get_remote_address()
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "signup-network:" + address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: their /24, not ::/64.
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return "signup-network:" + str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _target() -> str:
    data: Any = request.get_json(silent=True) if request.is_json else request.form
    email = data.get("email") if hasattr(data, "get") else None
    return address_key(settings(), email)


def _form_post() -> bool:
    return request.mimetype in FORM_TYPES


def _locale(data: Any = None) -> str:
    candidate = data.get("locale") if hasattr(data, "get") else None
    if candidate is None and _form_post():
        candidate = request.form.get("locale")
    return page_locale(candidate if isinstance(candidate, str) else None)


def _too_many(breach: signup_limits.Breach) -> Response:
    """429 with Retry-After and the message in the page's language (JSON or a page)."""
    locale = _locale(request.get_json(silent=True) if request.is_json else None)
    record("rate_limited", ip=client_ip())
    if _form_post():
        html = render_template("pages/message.html", locale=locale, **message_page("too_many"))
        response = Response(html, 429, mimetype="text/html")
    else:
        body = {
            "error": "rate_limited",
            "message": _("Too many attempts. Please try again in a few minutes."),
        }
        response = jsonify(body)
        response.status_code = 429
    response.headers["Retry-After"] = str(breach.retry_after)
    return response


def _over_limit() -> signup_limits.Breach | None:
    """Count this post against its client's IP, network and target address."""
    s = settings()
    counted: signup_limits.SignupLimits = current_app.extensions["hebdo.signup_limits"]
    return counted.hit(
        signup_limits.windows(
            [
                ("signup-ip", get_remote_address(), s.subscribe_rate_limit),
                ("signup-network", _network(), s.subscribe_network_rate_limit),
                ("signup-address", _target(), s.subscribe_address_rate_limit),
            ]
        )
    )


# ---------------------------------------------------------------- the endpoints


@bp.get("/subscriptions/form")
@operation(
    summary="What the embedded box needs: a form token, the consent line, a CAPTCHA",
    query=SignupFormQuery,
    replies={200: Reply("The box's settings", SignupForm)},
)
def subscription_form() -> Response:
    """What the embedded box asks for once on load: a fresh form token and its settings."""
    return jsonify(form_context(settings(), _locale(request.args), now()))


def _accepted(locale: str, suggestion: str | None, source: str | None) -> Any:
    """The answer to a person, and to a bot caught at the door: nothing tells them apart."""
    if _form_post():
        domain = suggestion.rpartition("@")[2] if suggestion else None
        target = url_for("public.thanks", lang=locale, domain=domain, back=source)
        return redirect(target, 303)
    answer = SignupAccepted(
        status="accepted",
        message=_("Thank you! Check your inbox: we have just sent you a confirmation email."),
    )
    if suggestion:
        answer.suggestion = suggestion
        answer.suggestion_message = _("Did you mean %(suggestion)s?", suggestion=suggestion)
    return jsonify(answer.model_dump(exclude_none=True)), 202


def _refused(status: int, error: str, locale: str, message: str, **extra: Any) -> Any:
    if _form_post():
        html = render_template("pages/invalid.html", message=message, locale=locale)
        return html, status
    return jsonify({"error": error, "message": message, **extra}), status


@bp.post("/subscriptions")
@operation(
    summary="Sign up an address (double opt-in: a confirmation mail follows)",
    description="The answer never says whether the address was already known.",
    body=SignupPost,
    body_types=("application/json", "application/x-www-form-urlencoded"),
    replies={
        202: Reply("Accepted (JSON posts)", SignupAccepted),
        303: Reply("Form posts: redirect to the thank-you page"),
        400: error(
            "Malformed body; or captcha_required/captcha_failed, with the widget (form posts: "
            "an HTML page saying so)",
            html=True,
        ),
        403: error(
            "Posted from a page whose Origin is not in HEBDO_ALLOWED_ORIGINS (form posts: an "
            "HTML page saying so)",
            html=True,
        ),
        413: error("Body too large"),
        415: error("Unsupported media type"),
        422: error(
            "Invalid address (the message says why), consent not given, or a consent version "
            "other than HEBDO_CONSENT_VERSION (form posts: an HTML page saying so)",
            html=True,
        ),
        429: error(
            "Too many attempts (per IP, network or address) (form posts: an HTML page saying so)",
            html=True,
            headers={"Retry-After": {"type": "integer", "minimum": 0}},
        ),
    },
)
def create_subscription() -> Any:
    """Sign an address up; 202 (JSON) or 303 to the thank-you page (form)."""
    breach = _over_limit()
    if breach is not None:
        return _too_many(breach)
    locale = _locale()
    visitor = Visitor(
        ip=client_ip(),
        user_agent=user_agent(),
        origin=request.headers.get("Origin"),
        referrer=request.referrer,
    )
    try:
        check_origin(settings(), visitor)
        post = parse(SignupPost, read_payload())
        # Any language tag goes (an unknown one falls back), but not a number or an object.
        locale = page_locale(post.locale)
        verifier = current_app.extensions.get("hebdo.captcha", http_verifier)
        accepted = screen(settings(), post, visitor, locale=locale, now=now(), verify=verifier)
    except PayloadError as exc:
        message = _("Bad request: %(detail)s", detail=exc.detail)
        if exc.status == 415:
            message = _("Unsupported format: send JSON or a form.")
        record("invalid", ip=visitor.ip)
        return jsonify({"error": exc.code, "message": message}), exc.status
    except InvalidEmail as exc:
        extra: dict[str, Any] = {"code": exc.code}
        if exc.detail:
            extra["detail"] = exc.detail
        return _refused(422, "invalid_email", locale, exc.message(locale), **extra)
    except Refused as exc:
        message = str(_REFUSALS[exc.error])
        if exc.captcha is not None:
            return _refused(exc.status, exc.error, locale, message, captcha=exc.captcha)
        return _refused(exc.status, exc.error, locale, message)
    if accepted.queue_sweep:
        jobs.enqueue_confirmation_sweep()
    return _accepted(locale, accepted.suggestion, accepted.source)


# The message of each refusal, by its error code (lazy: worded in the request's locale).
_REFUSALS = {
    "origin_not_allowed": lazy_gettext("This form is not accepted from this site."),
    "captcha_required": lazy_gettext("A check is needed: complete it, then submit again."),
    "captcha_failed": lazy_gettext("The check failed: please do it again."),
    "consent_required": lazy_gettext("Tick the box to agree to receive the newsletter."),
    "unknown_consent_version": lazy_gettext(
        "This form is out of date: reload the page, then submit again."
    ),
}
