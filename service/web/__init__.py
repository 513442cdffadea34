"""hebdo's HTTP faces: thin blueprints over the domain modules.

`public` (confirmation and unsubscribe pages, archive), `api` (the JSON API),
`admin` (the admin area in the browser), `admin_api` (the same powers for
machines), `openapi` (the spec of both APIs) and `devmail` (the local mailbox
outside production).
"""

from __future__ import annotations

from flask import Flask

from service.config import Settings
from service.extensions import csrf


def register(app: Flask, settings: Settings) -> None:
    """Register every blueprint; the admin modules add their routes to admin.base's two."""
    # Each adds its routes (and texts) to admin.base's two blueprints.
    from service.web import embed, public, signup
    from service.web.admin import base as admin_base
    from service.web.admin import (  # noqa: F401
        dashboard,
        imports,
        issues,
        subscribers,
    )
    from service.web.admin import embed as admin_embed  # noqa: F401
    from service.web.api import ingest as api
    from service.web.api import openapi

    app.register_blueprint(api.bp)
    app.register_blueprint(public.bp)
    app.register_blueprint(embed.bp)
    app.register_blueprint(signup.bp)
    app.register_blueprint(admin_base.bp)
    app.register_blueprint(admin_base.api_bp)
    app.register_blueprint(openapi.bp)
    # Bearer tokens, no cookies: nothing for a cross-site form to ride on.
    csrf.exempt(admin_base.api_bp)
    if settings.capture_mail and settings.env != "production":
        from service.web import devmail

        app.register_blueprint(devmail.bp)
