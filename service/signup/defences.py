"""What stands between the sign-up form and a bot: the form token (a signed timestamp,
for the minimum fill time), the honeypot, the CAPTCHA hook, and the count of every
attempt by outcome.

Subscription bombing signs a victim up to many lists to flood their inbox. The answer
never tells a bot it was caught: a honeypot or too-fast post gets the same 202 (or
redirect) as a person, and nothing is stored or sent. Rate limits (per IP, network
and target address) live with the view, in Flask-Limiter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import func, select

from service.config import Settings, origin_of
from service.extensions import db
from service.models import AuditEvent
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.tokens import BadToken, Purpose, make_token, read_token
from service.telemetry.metrics import SIGNUPS

log = logging.getLogger(__name__)

HONEYPOT_FIELD = "website"
# A form token is good for a week (an article left open in a tab for days is still a
# person's), and web hosts' clocks may differ by this much (they must run NTP: a host whose
# clock is behind by more than HEBDO_FORM_MIN_SECONDS takes quick people for bots).
FORM_TOKEN_MAX_AGE = 7 * 24 * 3600
CLOCK_SKEW = 5.0


CAPTCHA_ENDPOINTS = {
    "turnstile": "https://challenges.cloudflare.com/turnstile/v0/siteverify",
    "hcaptcha": "https://api.hcaptcha.com/siteverify",
    "friendlycaptcha": "https://api.friendlycaptcha.com/api/v1/siteverify",
}
# What a page showing each provider's widget must allow, from the providers' documentation.
CAPTCHA_CSP = {
    "turnstile": {
        "script-src": "https://challenges.cloudflare.com",
        "frame-src": "https://challenges.cloudflare.com",
        "connect-src": "https://challenges.cloudflare.com",
    },
    "hcaptcha": {
        "script-src": "https://hcaptcha.com https://*.hcaptcha.com",
        "frame-src": "https://hcaptcha.com https://*.hcaptcha.com",
        "style-src": "https://hcaptcha.com https://*.hcaptcha.com",
        "connect-src": "https://hcaptcha.com https://*.hcaptcha.com",
    },
    "friendlycaptcha": {
        # The one pinned file, not all of the CDN.
        "script-src": "https://cdn.jsdelivr.net/npm/friendly-challenge@0.9.18/widget.module.min.js",
        "connect-src": "https://api.friendlycaptcha.com",
        "worker-src": "blob:",
    },
}
CAPTCHA_SCRIPTS = {
    "turnstile": "https://challenges.cloudflare.com/turnstile/v0/api.js",
    "hcaptcha": "https://js.hcaptcha.com/1/api.js",
    "friendlycaptcha": "https://cdn.jsdelivr.net/npm/friendly-challenge@0.9.18/widget.module.min.js",
}


def mask(email: object) -> str:
    """An address as logs may show it: `j***@exemple.fr` (never the whole local part).

    What is shown is the sender's raw input, so anything unprintable is escaped: a line
    break would forge a log line of its own, and a lone surrogate (valid JSON, `"\\ud800"`)
    cannot be written to a UTF-8 log at all (the handler drops the line with an error)."""
    if not isinstance(email, str) or "@" not in email:
        return "<no address>"
    local, _, domain = email.strip().rpartition("@")
    shown = f"{local[:1]}***@{domain[:100]}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


def record(outcome: str, *, ip: str | None, email: object = None) -> None:
    """Count and log one attempt (the address masked)."""
    SIGNUPS.labels(outcome=outcome).inc()
    # INFO, not WARNING: under attack these lines come by the thousand; the counter (and
    # the rate-limit 429s) are what an operator watches.
    log.info("sign-up %s from %s for %s", outcome, ip or "?", mask(email))


# ---------------------------------------------------------------- the form token


def form_token(settings: Settings, now: float | None = None) -> str:
    """A signed timestamp, issued with the form (page render, or the embed's first call)."""
    return make_token(settings, Purpose.FORM, [round(now if now is not None else time.time(), 3)])


@dataclass(frozen=True)
class Verdict:
    """Whether a post goes ahead (`ok`), and if not, the outcome to count."""

    ok: bool
    outcome: str = ""


def check_form(settings: Settings, data: dict[str, Any], now: float | None = None) -> Verdict:
    """The honeypot and the fill time. A post without a token (a pasted no-JavaScript
    form) goes ahead: rate limits still hold it. A forged token, or one younger than
    HEBDO_FORM_MIN_SECONDS, does not."""
    trap = data.get(HONEYPOT_FIELD)
    if trap not in (None, ""):
        return Verdict(False, "honeypot")
    token = data.get("ts")
    if token in (None, ""):
        return Verdict(True)
    if not isinstance(token, str):
        return Verdict(False, "bad_form_token")
    try:
        payload = read_token(settings, Purpose.FORM, token)
    except BadToken:
        return Verdict(False, "bad_form_token")
    issued = payload[0] if len(payload) == 1 else None
    if not isinstance(issued, (int, float)) or isinstance(issued, bool):
        return Verdict(False, "bad_form_token")
    moment = now if now is not None else time.time()
    elapsed = moment - issued
    if elapsed < -CLOCK_SKEW or elapsed > FORM_TOKEN_MAX_AGE:
        # From the future, or replayed long after: not a form a person was shown.
        return Verdict(False, "bad_form_token")
    if elapsed < settings.form_min_seconds:
        return Verdict(False, "too_fast")
    return Verdict(True)


# ---------------------------------------------------------------- the CAPTCHA hook

# (provider, secret, response token, client IP) → verified? Injected in tests
# (`app.extensions["hebdo.captcha"]`), so verification is testable without the network.
Verifier = Callable[[str, str, str, str | None], bool]


def http_verifier(provider: str, secret: str, response: str, ip: str | None) -> bool:
    """The providers' documented server-side check: POST the token, read `success`."""
    fields = {"secret": secret, "response": response}
    if provider == "friendlycaptcha":
        fields = {"secret": secret, "solution": response}
    if ip and provider != "friendlycaptcha":
        fields["remoteip"] = ip
    request = urllib.request.Request(  # noqa: S310 (fixed https endpoints above)
        CAPTCHA_ENDPOINTS[provider], data=urllib.parse.urlencode(fields).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return bool(json.loads(answer.read(65536)).get("success"))
    except (OSError, ValueError) as exc:
        # The provider unreachable: fail closed for this post (it is asked only under attack).
        log.warning("CAPTCHA verification with %s failed: %s", provider, exc)
        return False


# (database URL, threshold) → (monotonic time the answer expires, answer): every post and
# every box's first call asks, and under attack those come by the hundred a second.
_captcha_cache: dict[tuple[str, int], tuple[float, bool]] = {}
CAPTCHA_CACHE_SECONDS = 5.0


def captcha_active(settings: Settings, now: datetime) -> bool:
    """A provider is set and sign-ups in the last minute reached the threshold (counting no
    further than the threshold; once reached, remembered for CAPTCHA_CACHE_SECONDS)."""
    if settings.captcha_provider == "none":
        return False
    if settings.captcha_threshold == 0:
        return True
    key = (settings.database_url, settings.captcha_threshold)
    cached = _captcha_cache.get(key)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    recent = (
        select(AuditEvent.id)
        .where(AuditEvent.created_at > now - timedelta(minutes=1), AuditEvent.action == "subscribe")
        .limit(settings.captcha_threshold)
        .subquery()
    )
    count = db.session.execute(select(func.count()).select_from(recent)).scalar_one()
    active = int(count) >= settings.captcha_threshold
    if active:
        # Only "asked for" is remembered: it is what an attack makes every request ask, and
        # a quiet site counts a handful of rows.
        _captcha_cache[key] = (time.monotonic() + CAPTCHA_CACHE_SECONDS, active)
    return active


def captcha_widget(settings: Settings) -> dict[str, str]:
    return {
        "provider": settings.captcha_provider,
        "site_key": settings.captcha_site_key,
        "script": CAPTCHA_SCRIPTS.get(settings.captcha_provider, ""),
    }


# ---------------------------------------------------------------- origins


def allowed_origin(settings: Settings, origin: str | None) -> bool:
    return bool(origin) and origin_of(origin or "") in settings.allowed_origins


def _split(url: str) -> urllib.parse.SplitResult | None:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        return None


def page_of_allowed_origin(settings: Settings, url: object) -> str | None:
    """`url` when it is an http(s) page of an allowed origin (a source worth recording,
    a link back worth offering), else None."""
    if not isinstance(url, str) or len(url) > 2048 or not url.isprintable():
        return None
    parts = _split(url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    if "@" in parts.netloc:
        return None
    return url if origin_of(url) in settings.allowed_origins else None


# ---------------------------------------------------------------- what the box needs


def consent_line(settings: Settings, locale: str) -> dict[str, str] | None:
    text = settings.consent_text_en if locale == "en" and settings.consent_text_en else None
    text = text or settings.consent_text
    return {"text": text, "version": settings.consent_version} if text else None


def form_context(settings: Settings, locale: str, now: datetime) -> dict[str, Any]:
    """What a rendered box or the embed's first call needs: a fresh form token, the
    minimum fill time, the consent line (if any), the CAPTCHA widget (if asked now)."""
    return {
        "ts": form_token(settings, now.timestamp()),
        "min_seconds": settings.form_min_seconds,
        "consent": consent_line(settings, locale),
        "captcha": captcha_widget(settings) if captcha_active(settings, now) else None,
        "honeypot": HONEYPOT_FIELD,
        # The texts the box shows by itself (the server's answers bring their own).
        "messages": box_messages(locale),
    }


def box_messages(locale: str) -> dict[str, str]:
    """The texts embed.js shows by itself, under the names it looks them up by."""
    with force_locale(locale):
        return {
            "box.sending": _("Sending…"),
            "box.unavailable": _(
                "The service is unavailable for a moment. Please try again shortly."
            ),
            "rate_limited": _("Too many attempts. Please try again in a few minutes."),
            "consent_required": _("Tick the box to agree to receive the newsletter."),
            # After the "Change it to …" button: the corrected address is not sent yet.
            "box.corrected": _("Address corrected: press “Subscribe” to send it."),
        }


def address_key(settings: Settings, raw: object) -> str:
    """The rate-limit key of a target address: an HMAC of it normalised as sign-ups store it
    (so `Victim@ｇmail.com` and `victim@gmail.com` share one), the limiter's store (Redis)
    never holding an address."""
    try:
        text = normalise_email(raw)
    except InvalidEmail:
        text = raw.strip().casefold() if isinstance(raw, str) else ""
    data = text.encode("utf-8", "surrogatepass")
    digest = hmac.new(settings.secret_key.encode(), data, hashlib.sha256).hexdigest()
    return "signup-address:" + digest[:32]
