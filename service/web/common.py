"""Small helpers shared by the blueprints: the client's IP, the page locale, 'now'."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import current_app, g, request

from .. import i18n
from ..config import Settings


def settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


def client_ip() -> str | None:
    # ProxyFix (HEBDO_TRUSTED_PROXIES) has already put the right address here.
    return request.remote_addr


def user_agent() -> str | None:
    agent = request.headers.get("User-Agent")
    return agent[:512] if agent else None


def now() -> datetime:
    return datetime.now(UTC)


def page_locale(*candidates: object) -> str:
    """Locale of a page: ?lang=, then what the caller knows, then Accept-Language."""
    locale = i18n.pick_locale(
        request.args.get("lang"),
        *candidates,
        accept=[lang for lang, _q in request.accept_languages],
    )
    g.locale = locale
    return locale
