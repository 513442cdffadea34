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
from flask_limiter.util import get_remote_address

from service import jobs
from service.signup import limits as signup_limits
from service.signup.defences import (
    address_key,
    allowed_origin,
    captcha_active,
    captcha_widget,
    check_form,
    consent_line,
    form_context,
    http_verifier,
    page_of_allowed_origin,
    record,
)
from service.subscribers.addresses import InvalidEmail, normalise_email, suggest_fix
from service.subscribers.lifecycle import Consent, subscribe
from service.web.common import (
    client_ip,
    message_page,
    now,
    page_locale,
    settings,
    user_agent,
)
from service.web.payloads import FORM_TYPES, PayloadError, optional_string, read_payload

bp = Blueprint("signup", __name__, url_prefix="/api/v1")

MAX_SOURCE_LENGTH = 2048
MAX_CONSENT_LENGTH = 64
MAX_LOCALE_LENGTH = 35  # the longest language tag in common use (RFC 5646, 4.4.1)
TICKED = (True, 1, "1", "on", "true", "yes")


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
def subscription_form() -> Response:
    """What the embedded box asks for once on load: a fresh form token and its settings."""
    return jsonify(form_context(settings(), _locale(request.args), now()))


def _accepted(locale: str, suggestion: str | None, source: str | None) -> Any:
    """The answer to a person, and to a bot caught at the door: nothing tells them apart."""
    if _form_post():
        domain = suggestion.rpartition("@")[2] if suggestion else None
        target = url_for("public.thanks", lang=locale, domain=domain, back=source)
        return redirect(target, 303)
    body = {
        "status": "accepted",
        "message": _("Thank you! Check your inbox: we have just sent you a confirmation email."),
    }
    if suggestion:
        body["suggestion"] = suggestion
        body["suggestion_message"] = _("Did you mean %(suggestion)s?", suggestion=suggestion)
    return jsonify(body), 202


def _refused(status: int, error: str, locale: str, message: str, **extra: Any) -> Any:
    if _form_post():
        html = render_template("pages/invalid.html", message=message, locale=locale)
        return html, status
    return jsonify({"error": error, "message": message, **extra}), status


def _consent_version(value: Any) -> str:
    if value is True or value is None or value in ("", "on", "true", "1", "yes"):
        return settings().consent_version
    if isinstance(value, str) and len(value) <= MAX_CONSENT_LENGTH and value.isprintable():
        return value.strip()
    raise PayloadError(422, "invalid_field", "consent must be a consent text version (string)")


def _foreign_origin() -> bool:
    """A browser's post from a page of another site (its Origin header says so): refused,
    so no other site can make its visitors sign someone up. Requests without Origin
    (servers, old browsers' same-site forms) go on; the limits hold them."""
    origin = request.headers.get("Origin")
    return origin is not None and not allowed_origin(settings(), origin)


@bp.post("/subscriptions")
def create_subscription() -> Any:
    """Sign an address up; 202 (JSON) or 303 to the thank-you page (form).

    Checks come in the order a person's post meets them (address, CAPTCHA, consent) and
    only then the bot checks (honeypot, form token): a bot caught there gets what a person
    with the same post would get, and cannot learn what gave it away.
    """
    breach = _over_limit()
    if breach is not None:
        return _too_many(breach)
    locale = _locale()
    ip = client_ip()
    s = settings()
    if _foreign_origin():
        record("foreign_origin", ip=ip)
        message = _("This form is not accepted from this site.")
        return _refused(403, "origin_not_allowed", locale, message)
    try:
        data = read_payload()
        # Any language tag goes (an unknown one falls back), but not a number or an object.
        locale = page_locale(optional_string(data, "locale", MAX_LOCALE_LENGTH))
        given_source = optional_string(data, "source", MAX_SOURCE_LENGTH)
        # The page the box was on; recorded only for an allowed origin (else anyone could
        # write any URL into the proof of consent). Without JavaScript, the Referer.
        source = page_of_allowed_origin(s, given_source or request.referrer)
        email = normalise_email(
            data.get("email"),
            check_deliverability=s.check_deliverability,
            dns_timeout=s.dns_timeout,
        )
        if captcha_active(s, now()):
            token = data.get("captcha_token")
            verifier = current_app.extensions.get("hebdo.captcha", http_verifier)
            if not isinstance(token, str) or not token:
                record("captcha_required", ip=ip, email=email)
                message = _("A check is needed: complete it, then submit again.")
                return _refused(400, "captcha_required", locale, message, captcha=captcha_widget(s))
            if not verifier(s.captcha_provider, s.captcha_secret, token[:4096], ip):
                record("captcha_failed", ip=ip, email=email)
                message = _("The check failed: please do it again.")
                return _refused(400, "captcha_failed", locale, message, captcha=captcha_widget(s))
        if consent_line(s, locale) and data.get("consent_given") not in TICKED:
            record("consent_missing", ip=ip, email=email)
            message = _("Tick the box to agree to receive the newsletter.")
            return _refused(422, "consent_required", locale, message)
        consent = Consent(
            source=source,
            text_version=_consent_version(data.get("consent")),
            ip=ip,
            user_agent=user_agent(),
        )
        verdict = check_form(s, data)
        if not verdict.ok:
            # A bot: the same answer as a person's, nothing stored, nothing sent.
            record(verdict.outcome, ip=ip, email=email)
            return _accepted(locale, suggest_fix(email), source)
        result = subscribe(email, locale=locale, consent=consent, now=now(), settings=s)
    except PayloadError as exc:
        message = _("Bad request: %(detail)s", detail=exc.detail)
        if exc.status == 415:
            message = _("Unsupported format: send JSON or a form.")
        record("invalid", ip=ip)
        return jsonify({"error": exc.code, "message": message}), exc.status
    except InvalidEmail as exc:
        record("invalid", ip=ip, email=data.get("email"))
        extra: dict[str, Any] = {"code": exc.code}
        if exc.detail:
            extra["detail"] = exc.detail
        return _refused(422, "invalid_email", locale, exc.message(locale), **extra)

    record("accepted", ip=ip, email=email)
    if result.confirmation_due:
        jobs.enqueue_confirmation_sweep()
    return _accepted(locale, result.suggestion, source)
