"""Small helpers shared by the blueprints: the client's IP, the page locale and the
one-message pages' texts, 'now', a CSV download."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

from flask import Response, jsonify, request, stream_with_context
from flask_babel import gettext as _
from werkzeug.http import quote_header_value

from service import i18n
from service.admin import apitokens
from service.extensions import current_settings
from service.models import ApiToken

# The views' name for it.
settings = current_settings


def bearer_token(realm: str) -> ApiToken | tuple[Response, int]:
    """The live API token named by the request's `Authorization: Bearer`, or the 401 to
    answer (a JSON body, and `WWW-Authenticate` naming `realm`). The caller checks the role."""
    scheme, _sep, value = request.headers.get("Authorization", "").partition(" ")
    token = None
    if scheme.lower() == "bearer" and value.strip():
        token = apitokens.authenticate(value.strip(), now())
    if token is None:
        response = jsonify({"error": "unauthorized", "message": "a valid bearer token is required"})
        response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
        return response, 401
    return token


def client_ip() -> str | None:
    # ProxyFix (HEBDO_TRUSTED_PROXIES) has already put the right address here.
    return request.remote_addr


def user_agent() -> str | None:
    agent = request.headers.get("User-Agent")
    return agent[:512] if agent else None


def now() -> datetime:
    return datetime.now(UTC)


def page_locale(*candidates: object) -> str:
    """Locale of a page: ?lang=, then what the caller knows, then Accept-Language. The
    request's texts are in it from then on."""
    locale = i18n.pick_locale(
        request.args.get("lang"),
        *candidates,
        accept=[lang for lang, _q in request.accept_languages],
    )
    return i18n.set_locale(locale)


def message_page(key: str) -> dict[str, str]:
    """Title and body of a one-message page (pages/message.html), in the request's locale."""
    site = settings().site_name
    if key == "not_found":
        return {"title": _("Page not found"), "body": _("This page does not exist.")}
    if key == "bad_link":
        return {
            "title": _("Invalid link"),
            "body": _(
                "This link is not valid. Copy it whole from the email you received, "
                "or subscribe again."
            ),
        }
    if key == "expired_link":
        return {
            "title": _("Link expired"),
            "body": _("This link has expired. Subscribe again to get a new confirmation link."),
        }
    if key == "stale_link":
        return {
            "title": _("Outdated link"),
            "body": _(
                "This link no longer matches your current subscription. Use the link in the "
                "latest email you received."
            ),
        }
    if key == "already":
        return {
            "title": _("Already confirmed"),
            "body": _("Your subscription was already confirmed. There is nothing else to do."),
        }
    if key == "confirmed":
        return {
            "title": _("Subscription confirmed"),
            "body": _("Done: you will receive %(site)s every week. See you soon!", site=site),
        }
    if key == "resubscribed":
        return {
            "title": _("You are subscribed again"),
            "body": _("Welcome back: you will receive %(site)s every week again.", site=site),
        }
    if key == "too_many":
        return {
            "title": _("Too many attempts"),
            "body": _(
                "Too many attempts from your connection or for this address. Please try again "
                "in a few minutes."
            ),
        }
    raise KeyError(key)


def _content_disposition(filename: str) -> str:
    """`attachment` with a file name no client can misread, built as werkzeug's
    `send_file(download_name=...)` builds it: the name quoted and escaped by werkzeug's
    `quote_header_value` (an upload named `x"; filename=evil.exe` stays one name), and a
    name that is not plain ASCII (a header must be Latin-1, and gunicorn refuses more)
    given as `filename*=UTF-8''<percent-encoded>` beside an ASCII `filename=` fallback.
    """
    simple = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    # The fallback keeps no quote, backslash or control character, escaped or not.
    simple = "".join(ch if ch.isprintable() and ch not in '"\\' else "_" for ch in simple)
    fallback = simple.strip() or "download.csv"
    value = "attachment; filename=" + quote_header_value(fallback, allow_token=False)
    if fallback != filename:
        # safe = RFC 5987 attr-char, as in werkzeug.utils.send_file
        value += f"; filename*=UTF-8''{quote(filename, safe='!#$&+-.^_`|~')}"
    return value


def csv_download(chunks: Iterator[str], filename: str) -> Response:
    """A CSV file streamed as it is made, saved by the browser under `filename`."""
    response = Response(stream_with_context(chunks), mimetype="text/csv")
    response.headers["Content-Disposition"] = _content_disposition(filename)
    return response
