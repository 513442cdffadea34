"""hebdo's web service: the Flask app factory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, render_template, request
from jinja2 import BytecodeCache
from jinja2.bccache import Bucket
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from service import cli, i18n, web
from service.config import load_settings
from service.extensions import celery_init_app, csrf, db, engine_options, limiter, migrate
from service.resources import MIGRATIONS, STATIC, TEMPLATES
from service.signup import limits as signup_limits
from service.telemetry import logs
from service.web import assets
from service.web.api import ingest
from service.web.common import message_page, page_locale


class _ProcessTemplateCode(BytecodeCache):
    """Compiled templates kept for the life of the process, shared by every app it builds.

    Compiling the pages and mails is most of what building an app costs after its routes,
    and a process builds several: the test suite one per test, a worker one per pool
    process and task set-up. Jinja keys the code by template file and checks the source's
    checksum, so an edited template is compiled again; the code is only right for the
    environment options every hebdo app is built with (`create_app`'s `jinja_options`).
    """

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_TEMPLATE_CODE = _ProcessTemplateCode()


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then the test's overrides (HEBDO_* names)."""
    environ: dict[str, Any] = dict(os.environ)
    if test_config:
        environ.update(test_config)
    settings = load_settings(environ)

    logs.configure(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for folder in settings.broker_folders:
        folder.mkdir(parents=True, exist_ok=True)

    app = Flask(
        "hebdo",
        template_folder=str(TEMPLATES),
        static_folder=str(STATIC),
        static_url_path="/static",
    )
    app.jinja_options = {
        **app.jinja_options,
        # Block tags leave no blank lines behind: the plain-text mails depend on it.
        "trim_blocks": True,
        "lstrip_blocks": True,
        "bytecode_cache": _TEMPLATE_CODE,
    }
    app.config.update(
        SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        SECRET_KEY_FALLBACKS=list(settings.secret_key_fallbacks),
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(settings.database_url),
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_request_bytes,
        TESTING=settings.env == "test",
        SESSION_COOKIE_NAME="hebdo_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
        WTF_CSRF_CHECK_DEFAULT=False,
        # The CSRF token lives as long as the admin session may (the server ends it sooner).
        WTF_CSRF_TIME_LIMIT=settings.admin_session_hours * 3600,
        RATELIMIT_STORAGE_URI=settings.ratelimit_storage,
        # Redis down: limits fall back to per-process memory rather than failing logins.
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        # No X-RateLimit-* headers: on the sign-up form the per-address counter would tell
        # whether someone posted an address lately. 429s carry their own Retry-After.
        RATELIMIT_HEADERS_ENABLED=False,
    )
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    logs.init_app(app)
    i18n.init_app(app)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS), render_as_batch=True)
    celery_init_app(app, settings)

    # CSRF is checked by the admin blueprint only: the public pages' signed links and the
    # RFC 8058 one-click POST come from mail clients that carry no form token.
    csrf.init_app(app)
    limiter.init_app(app)
    # The sign-up form's three limits, in the same storage, one call per post.
    signup_limits.install(app.extensions, settings.ratelimit_storage)

    web.register(app, devmail=settings.capture_mail and settings.env != "production")
    assets.init_app(app)

    app.jinja_env.globals["site_name"] = settings.site_name

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | tuple[str, int]:
        if exc.response is not None:
            # A response made on purpose (the sign-up form's localised 429, for one).
            return exc.response  # type: ignore[return-value]
        if request.path.startswith("/api/"):
            return ingest.json_error(exc)
        if exc.code in (404, 400):
            locale = page_locale()
            key = "not_found" if exc.code == 404 else "bad_link"
            html = render_template("pages/message.html", locale=locale, **message_page(key))
            return html, exc.code
        return exc.get_response()  # type: ignore[return-value]

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.mimetype == "text/html":
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; frame-src 'self'",
            )
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    cli.init_app(app)
    return app
