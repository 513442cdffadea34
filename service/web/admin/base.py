"""What every admin view shares: the two blueprints (browser pages and JSON API), who is
signed in, roles, CSRF, the words for stored codes (`label`), and the login and logout
pages.

Browser: a server-side session (see accounts), CSRF-checked on every POST, roles
checked by `requires`. API: `Authorization: Bearer <token>` of role editor or
admin (publisher tokens only push articles). Neither sends CORS headers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import Forbidden

from service import i18n
from service.admin import accounts
from service.admin.accounts import SignedIn
from service.config import origin_of
from service.extensions import csrf, limiter
from service.models import AdminRole
from service.web.common import bearer_token, client_ip, now, settings

bp = Blueprint("admin", __name__, url_prefix="/admin")
api_bp = Blueprint("admin_api", __name__, url_prefix="/api/v1/admin")

SESSION_KEY = "admin_sid"

# ---------------------------------------------------------------- labels

# The words for the codes stored in rows (audit actions, statuses, roles…), by kind. Each
# admin module adds the kinds it shows; `label()` looks them up in the page's language.
LABELS: dict[str, dict[str, Any]] = {
    "event": {
        "subscribe": lazy_gettext("sign-up"),
        "confirm": lazy_gettext("confirmation"),
        "unsubscribe": lazy_gettext("unsubscription"),
        "resubscribe": lazy_gettext("resubscription"),
        "preferences": lazy_gettext("preferences changed"),
        "pause": lazy_gettext("digest paused by the reader"),
        "resume": lazy_gettext("digest resumed by the reader"),
        "address_change_requested": lazy_gettext("new address asked for"),
        "address_change": lazy_gettext("address changed"),
        "bounce": lazy_gettext("bounced address"),
        "complaint": lazy_gettext("complaint"),
        "erase": lazy_gettext("erasure (GDPR)"),
        "import": lazy_gettext("import"),
        "export": lazy_gettext("export"),
        "admin.login": lazy_gettext("sign-in"),
        "admin.logout": lazy_gettext("sign-out"),
        "article.exclude": lazy_gettext("article left out"),
        "article.include": lazy_gettext("article put back"),
        "article.move_up": lazy_gettext("article moved up"),
        "article.move_down": lazy_gettext("article moved down"),
        "article.lead": lazy_gettext("article made the lead story"),
        "issue.intro": lazy_gettext("editor's note changed"),
        "issue.plan": lazy_gettext("issue planned"),
        "issue.approve": lazy_gettext("issue approved"),
        "issue.send": lazy_gettext("send started"),
        "issue.pause": lazy_gettext("send paused"),
        "issue.resume": lazy_gettext("send resumed"),
        "issue.cancel": lazy_gettext("issue cancelled"),
        "issue.test": lazy_gettext("test sent"),
    },
    "role": {
        "admin": lazy_gettext("admin"),
        "editor": lazy_gettext("editor"),
    },
}


def label(kind: str, code: str | None) -> str:
    """The words for a code (`event`, `unsubscribe`) when there are some, else the code
    itself: a new code still shows, untranslated, never an error."""
    if not code:
        return "—"
    words = LABELS.get(kind, {}).get(code)
    return str(words) if words is not None else code


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"admin/{template}", **context), status


@bp.context_processor
def _admin_globals() -> dict[str, Any]:
    return {
        "label": label,
        "admin": g.get("admin"),
        "locale": g.get("admin_locale", i18n.DEFAULT_LOCALE),
    }


# ---------------------------------------------------------------- who is signed in


def current() -> SignedIn:
    admin: SignedIn = g.admin
    return admin


def actor() -> str:
    """How the audit log names whoever makes this request."""
    return cast(str, g.actor)


def _locale(user_locale: str | None) -> str:
    chosen = request.args.get("lang")
    if chosen in i18n.LOCALES:
        session["admin_lang"] = chosen
    # The admin pages' texts are in it from now on.
    return i18n.set_locale(i18n.pick_locale(session.get("admin_lang"), user_locale))


def safe_target(target: str | None, default: str, inside: str = "/admin") -> str:
    """`target` when it is a path inside `inside` (never another site: no open redirect),
    else `default`. A control character (a CR/LF typed into `?next=`) cannot go into a
    Location header: such a target is the default too, not a 500."""
    if not target or any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(inside) or "\\" in target:
        return default
    return target


def _safe_next(target: str | None) -> str:
    return safe_target(target, url_for("admin.dashboard"))


def json_error(status: int, code: str, message: str) -> tuple[Response, int]:
    """The admin API's error body, `{"error", "message"}`, as the public API's."""
    return jsonify({"error": code, "message": message}), status


PUBLIC_ENDPOINTS = {"admin.login"}


def _larger_bodies() -> None:
    """Imports and pasted lists are bigger than a sign-up: the admin limit applies here."""
    limit = settings().admin_max_request_bytes
    request.max_content_length = limit
    request.max_form_memory_size = limit


def _foreign_post() -> bool:
    """A POST whose Origin header is neither hebdo's base URL nor the host the browser is
    talking to (another site, `null` from a sandboxed frame or a data: URL). The CSRF token
    already stops forged forms; this also stops a page that got hold of a token (an XSS on
    a site sharing a parent domain, a token leaked in a log) from acting with an admin's
    cookie. The host is compared without the scheme: behind a TLS proxy the app may see
    http. No Origin (an old browser, a script): the CSRF token alone decides."""
    origin = request.headers.get("Origin")
    if request.method != "POST" or origin is None:
        return False
    origin = origin.lower()
    if origin == origin_of(settings().base_url):
        return False
    return origin_of(origin).partition("://")[2] != request.host.lower()


@bp.before_request
def _signed_in() -> Response | None:
    _larger_bodies()
    g.admin_locale = _locale(None)
    if _foreign_post():
        raise Forbidden()
    if request.endpoint in PUBLIC_ENDPOINTS:
        if request.method == "POST":
            csrf.protect()
        return None
    token = session.get(SESSION_KEY)
    user = accounts.session_user(settings(), token, now()) if isinstance(token, str) else None
    if user is None:
        if token is not None:
            session.pop(SESSION_KEY, None)
            flash(_("Your session expired: please sign in again."), "error")
        return cast(Response, redirect(url_for("admin.login", next=request.full_path)))
    g.admin = user
    g.actor = f"admin:{user.name}"
    g.admin_locale = _locale(user.locale)
    if request.method == "POST":
        # Flask-WTF: the form's csrf_token field (or an X-CSRFToken header).
        csrf.protect()
    return None


# Token roles of the admin API: editors read and steer issues; writes to subscribers,
# imports and the audit log are the admin's (`requires_admin`).
API_ROLES = (AdminRole.EDITOR.value, AdminRole.ADMIN.value)
ADMIN_ROLES = (AdminRole.ADMIN.value,)


@api_bp.before_request
def _token() -> Response | tuple[Response, int] | None:
    _larger_bodies()
    token = bearer_token("hebdo-admin")
    if isinstance(token, tuple):
        return token
    if token.role not in API_ROLES:
        return _forbidden_json()
    g.admin = SignedIn(0, f"token:{token.name}", token.role, None, i18n.DEFAULT_LOCALE)
    g.actor = f"token:{token.name}"
    g.admin_locale = i18n.set_locale(i18n.DEFAULT_LOCALE)
    return None


def _forbidden_json() -> tuple[Response, int]:
    return json_error(403, "forbidden", "this token's role may not do this")


F = TypeVar("F", bound=Callable[..., Any])


def requires_admin(view: F) -> F:
    """Subscriber writes, imports, the audit log: the admin role only (editors read)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current().role != AdminRole.ADMIN:
            if request.blueprint == "admin_api":
                return _forbidden_json()
            raise Forbidden()
        return view(*args, **kwargs)

    return cast(F, wrapper)


@bp.errorhandler(Forbidden)
def _forbidden(_exc: Forbidden) -> tuple[str, int]:
    return page("forbidden.html", 403)


# ---------------------------------------------------------------- login, logout, assets


def _login_failed(response: Response) -> bool:
    return bool(g.get("login_failed"))


def _account_key() -> str:
    return "login-account:" + request.form.get("name", "").strip().casefold()[:64]


def _too_many(_limit: Any) -> Response:
    flash(_("Too many sign-in attempts. Try again in a few minutes."), "error")
    html, _status = page(
        "login.html",
        429,
        next=_safe_next(request.args.get("next")),
        name=request.form.get("name", "").strip()[:64],
        failed=True,
    )
    response = Response(html, 429, mimetype="text/html")
    response.headers["Retry-After"] = "60"
    return response


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: settings().login_rate_limit, methods=["POST"], on_breach=_too_many)
@limiter.limit(
    lambda: settings().login_account_rate_limit,
    key_func=_account_key,
    methods=["POST"],
    deduct_when=_login_failed,
    on_breach=_too_many,
)
def login() -> Response | tuple[str, int]:
    """The sign-in form; a success starts a new session (a new id, never the old one)."""
    target = _safe_next(request.args.get("next"))
    if request.method == "GET":
        return page("login.html", next=target)
    name, password = request.form.get("name", "").strip(), request.form.get("password", "")
    user = accounts.check_login(name, password)
    if user is None:
        g.login_failed = True
        flash(_("Wrong user name or password."), "error")
        return page("login.html", 401, next=target, name=name[:64], failed=True)
    old = session.get(SESSION_KEY)
    if isinstance(old, str):
        accounts.close_session(old)
    lang = session.get("admin_lang")
    session.clear()
    session[SESSION_KEY] = accounts.open_session(user, now(), client_ip())
    accounts.record(user.name, "admin.login", now(), client_ip())
    if lang:
        session["admin_lang"] = lang
    return cast(Response, redirect(target))


@bp.post("/logout")
def logout() -> Response:
    token = session.get(SESSION_KEY)
    if isinstance(token, str):
        accounts.close_session(token)
        admin = g.get("admin")
        if admin is not None:
            accounts.record(admin.name, "admin.logout", now(), client_ip())
    session.clear()
    flash(_("You are signed out."), "info")
    return cast(Response, redirect(url_for("admin.login")))


ADMIN_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'; "
    "frame-src 'self'"
)


@bp.after_request
def _admin_headers(response: Response) -> Response:
    # Pages full of personal data: never cached; framed only by the admin area itself
    # (the issue preview's sandboxed iframe).
    response.headers.setdefault("Cache-Control", "no-store")
    # Referrers (URLs holding searched addresses) never leave the site, and the admin's own
    # form posts carry our Origin: under `no-referrer` browsers send `Origin: null`, which
    # _foreign_post must refuse (sandboxed frames and data: URLs send it too).
    response.headers["Referrer-Policy"] = "same-origin"
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", ADMIN_CSP)
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    return response


@api_bp.after_request
def _api_headers(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.errorhandler(CSRFError)
def _csrf_failed(_exc: CSRFError) -> tuple[str, int]:
    return page(
        "message.html", 400, title=_("The form expired: reload the page and try again."), body=""
    )
