"""Public pages: thank-you, confirm, unsubscribe, resubscribe, archive; health, readiness
and metrics.

GET and HEAD only show pages; every change is a POST, so mail scanners that
prefetch links neither confirm nor unsubscribe. These pages set no cookie:
the signed token in the URL is the only credential, hence no CSRF token.
"""

from __future__ import annotations

import ipaddress

from flask import Blueprint, Response, abort, jsonify, render_template, request

from service.digest.planning import DigestError, archived_issues, get_issue, is_archived, parse_week
from service.digest.rendering import render_issue, week_label
from service.models import Status, Subscriber
from service.ops import readiness
from service.resources import MIGRATIONS
from service.signup.defences import page_of_allowed_origin
from service.subscribers.lifecycle import (
    Consent,
    check_confirm_token,
    confirm,
    may_resubscribe,
    resubscribe_by_token,
    subscriber_for_unsubscribe,
    unsubscribe,
)
from service.subscribers.preferences import MAX_PAUSE_WEEKS
from service.subscribers.tokens import BadToken, preferences_token_for, resubscribe_token
from service.telemetry import metrics
from service.web.common import (
    client_ip,
    message_page,
    now,
    page_locale,
    settings,
    user_agent,
)

bp = Blueprint("public", __name__)


def _page(name: str, locale: str, status: int = 200, /, **context: object) -> tuple[str, int]:
    return render_template(f"pages/{name}.html", locale=locale, **context), status


def _bad_link(exc: BadToken, locale: str) -> tuple[str, int]:
    if exc.expired:
        return _page("message", locale, 400, **message_page("expired_link"), offer_subscribe=True)
    if "stale" in str(exc):
        return _page("message", locale, 400, **message_page("stale_link"), offer_subscribe=True)
    return _page("message", locale, 400, **message_page("bad_link"), offer_subscribe=True)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the web process answers (nothing else: see readiness)."""
    return Response('{"status": "ok"}\n', mimetype="application/json")


def _from_private_network() -> bool:
    """Whether the client is on this machine or a private network (behind a proxy, as
    HEBDO_TRUSTED_PROXIES says): the rule for what only operators may read."""
    try:
        ip = ipaddress.ip_address(client_ip() or "")
    except ValueError:
        return False
    return not ip.is_global


@bp.get("/metrics")
def metrics_page() -> Response:
    """Prometheus metrics, for scrapers on this machine or a private network only: counts of
    subscribers and queues are the business's, not the public's (a client seen from a
    public address gets a 404; behind a proxy, set HEBDO_TRUSTED_PROXIES)."""
    if not _from_private_network():
        abort(404)
    return Response(metrics.exposition(settings()), mimetype=metrics.CONTENT_TYPE)


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: database (schema current), broker, SMTP; 200 or 503. Each check's verdict
    (schema version, SMTP host, errors) only for a private network, as /metrics: the public
    gets the status alone."""
    checks = readiness.check_all(settings(), MIGRATIONS)
    ready = all(c.ok for c in checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not ready"}
    if _from_private_network():
        body["checks"] = {name: c.as_json() for name, c in checks.items()}
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if ready else 503


@bp.get("/subscribe")
def subscribe_page() -> Response:
    """Hosted sign-up form: the embeddable box, with a fresh form token."""
    from service.signup.defences import form_context
    from service.web.embed import page_csp

    locale = page_locale()
    html, _status = _page("subscribe", locale, form=form_context(settings(), locale, now()))
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = page_csp(settings())
    # The no-JS post must carry this page's Origin (under the default `no-referrer`, browsers
    # send `Origin: null`, which the origin check refuses); nothing leaves the site.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.get("/merci")
def thanks() -> tuple[str, int]:
    """Where a form post lands: check your inbox."""
    locale = page_locale()
    domain = request.args.get("domain", "")
    # Only the suggested domain travels in the URL, never the address, and only a plain hostname.
    if not (0 < len(domain) <= 64 and all(c.isalnum() or c in ".-" for c in domain)):
        domain = ""
    # A link back to the article page, only to an allowed origin: never an open redirect.
    back = page_of_allowed_origin(settings(), request.args.get("back"))
    return _page("thanks", locale, domain=domain, back=back)


@bp.get("/confirm/<token>")
def confirm_page(token: str) -> tuple[str, int]:
    """Show the confirmation button; changes nothing."""
    try:
        check = check_confirm_token(settings(), token)
    except BadToken as exc:
        return _bad_link(exc, page_locale())
    locale = page_locale(check.subscriber.locale)
    if check.already_confirmed:
        return _page("message", locale, **message_page("already"))
    return _page("confirm", locale, token=token)


@bp.post("/confirm/<token>")
def confirm_post(token: str) -> tuple[str, int]:
    """Confirm the subscription (idempotent)."""
    try:
        check = confirm(settings(), token, ip=client_ip(), now=now())
    except BadToken as exc:
        return _bad_link(exc, page_locale())
    locale = page_locale(check.subscriber.locale)
    sub = check.subscriber
    return _page(
        "message",
        locale,
        **message_page("already" if check.already_confirmed else "confirmed"),
        preferences=preferences_token_for(settings(), sub.id, sub.created_at),
    )


def _unsubscribed(sub: Subscriber | None, locale: str) -> tuple[str, int]:
    """The "you are unsubscribed" page, with a resubscribe button while the unsubscription
    is recent enough to undo (see `may_resubscribe`)."""
    resubscribe = None
    if sub is not None and may_resubscribe(sub, now()):
        resubscribe = resubscribe_token(settings(), sub)
    return _page("unsubscribed", locale, resubscribe=resubscribe)


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> tuple[str, int]:
    """Show the unsubscribe button, or the resubscribe one when already unsubscribed."""
    try:
        sub = subscriber_for_unsubscribe(settings(), token)
    except BadToken as exc:
        return _bad_link(exc, page_locale())
    locale = page_locale(sub.locale if sub else None)
    if sub is not None and sub.status in (Status.ACTIVE, Status.PENDING):
        # A pause first: a reader who wants fewer mails for a while need not leave.
        preferences = preferences_token_for(settings(), sub.id, sub.created_at)
        weeks = range(1, MAX_PAUSE_WEEKS + 1)
        return _page("unsubscribe", locale, token=token, preferences=preferences, weeks=weeks)
    return _unsubscribed(sub, locale)


@bp.post("/unsubscribe/<token>")
def unsubscribe_post(token: str) -> tuple[str, int]:
    """Unsubscribe: the page's button and RFC 8058 one-click (200, no redirect)."""
    try:
        sub = subscriber_for_unsubscribe(settings(), token)
    except BadToken as exc:
        return _bad_link(exc, page_locale())
    locale = page_locale(sub.locale if sub else None)
    # An erased subscriber (sub is None) is mailed nothing any more, which is what was asked.
    if sub is not None:
        one_click = request.form.get("List-Unsubscribe") == "One-Click"
        unsubscribe(sub.id, channel="one-click" if one_click else "page", now=now(), ip=client_ip())
    return _unsubscribed(sub, locale)


@bp.post("/resubscribe/<token>")
def resubscribe_post(token: str) -> tuple[str, int]:
    """Undo an unsubscription from the link on the unsubscribed page."""
    consent = Consent(
        source="resubscribe-link",
        text_version=settings().consent_version,
        ip=client_ip(),
        user_agent=user_agent(),
    )
    try:
        sub = resubscribe_by_token(settings(), token, consent=consent, now=now())
    except BadToken as exc:
        return _bad_link(exc, page_locale())
    return _page("message", page_locale(sub.locale), **message_page("resubscribed"))


@bp.get("/archive")
def archive() -> tuple[str, int]:
    """Issues that went out, newest first."""
    locale = page_locale()
    return _page("archive", locale, issues=archived_issues(), week_label=week_label)


@bp.get("/archive/<week>")
def archive_issue(week: str) -> Response:
    """The web version of one issue: the mail's HTML without anything personal."""
    try:
        week = parse_week(week)
    except DigestError:
        abort(404)
    issue = get_issue(week)
    if issue is None or not is_archived(issue):
        abort(404)
    locale = page_locale()
    response = Response(render_issue(settings(), issue, locale).html, mimetype="text/html")
    # The mail's own inline styles, and the articles' images from the news site.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Vary"] = "Accept-Language"
    return response
