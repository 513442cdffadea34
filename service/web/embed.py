"""The embeddable sign-up box: /embed.js and /embed.css (read by other origins through
<script> and <link>), the snippet a site pastes, and the sample article page of the
local mode (/exemple, never in production).

These responses set no cookie: a news site's readers carry nothing from hebdo.
"""

from __future__ import annotations

from pathlib import Path

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    send_from_directory,
)
from flask_babel import force_locale
from flask_babel import gettext as _

from service.config import Settings, origin_of
from service.signup.defences import CAPTCHA_CSP, form_context
from service.web.common import now, page_locale, settings

bp = Blueprint("embed", __name__)

ASSET_MAX_AGE = 3600


def _asset(name: str, mimetype: str) -> Response:
    """The file from static/embed/, by Flask's static handling, at its stable address."""
    response = send_from_directory(
        Path(current_app.static_folder or "static") / "embed",
        name,
        mimetype=mimetype,
        max_age=ASSET_MAX_AGE,
        conditional=True,
    )
    response.cache_control.public = True
    # Hosts that require CORP for their subresources (COEP) may still load the box.
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


@bp.get("/embed.js")
def script() -> Response:
    """The box's script: enhances <div data-hebdo-form> on any page."""
    return _asset("embed.js", "text/javascript")


@bp.get("/embed.css")
def stylesheet() -> Response:
    """The box's styles (the script adds the <link>)."""
    return _asset("embed.css", "text/css")


def snippet_markup(locale: str, token: bool) -> str:
    """The box's markup in `locale`, whatever the page showing it speaks (the admin's
    help page shows the French one)."""
    s = settings()
    with force_locale(locale):
        return render_template(
            "embed/snippet.html",
            locale=locale,
            form=form_context(s, locale, now()),
            base_url=s.base_url,
            token=token,
        )


def script_texts() -> list[str]:
    """The texts embed.js carries itself (its `T` table, in that order), in the current
    locale with its `{s}` placeholder: the script draws a box before any answer from
    here, so it holds a copy, which the tests compare with the catalogs."""
    return [
        _("Join the community for free"),
        _("and follow the news every week"),
        _("Your email address"),
        _("Subscribe"),
        _("Change it to %(suggestion)s", suggestion="{s}"),
        _("Did you mean %(suggestion)s?", suggestion="{s}"),
        _("The service is unavailable for a moment. Please try again shortly."),
    ]


@bp.get("/embed/snippet")
def snippet() -> Response:
    """What a site pastes at the end of its article pages (?lang=fr|en), as plain text."""
    # No form token: a pasted snippet lives for months, and the script fetches a fresh one.
    return Response(snippet_markup(page_locale(), token=False), mimetype="text/plain")


def page_csp(s: Settings) -> str:
    """CSP of a hebdo page that runs the box: its script, styles and API from hebdo, plus
    what the configured CAPTCHA provider's widget needs (CAPTCHA_CSP)."""
    own = f"'self' {origin_of(s.base_url)}"
    extra = CAPTCHA_CSP.get(s.captcha_provider, {})

    def with_provider(directive: str, base: str) -> str:
        sources = f"{base} {extra[directive]}" if directive in extra else base
        return f"{directive} {sources}"

    directives = [
        "default-src 'none'",
        with_provider("script-src", own),
        with_provider("connect-src", own),
        with_provider("style-src", f"{own} 'unsafe-inline'"),
        "img-src 'self' data:",
        with_provider("frame-src", "'self'"),
        f"form-action {own}",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
    if "worker-src" in extra:
        directives.append(f"worker-src {extra['worker-src']}")
    return "; ".join(directives)


@bp.get("/exemple")
def example() -> Response:
    """A sample article page ending with the box, embedded exactly as a site would."""
    if settings().env == "production":
        abort(404)
    response = Response(
        render_template("pages/example.html", snippet=snippet_markup("fr", token=True)),
        mimetype="text/html",
    )
    response.headers["Content-Security-Policy"] = page_csp(settings())
    # Like a news site's default policy: the no-JS post tells hebdo which page to go back to.
    response.headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
    return response
