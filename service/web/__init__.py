"""hebdo's HTTP faces: thin blueprints over the domain modules.

`public` (confirmation and unsubscribe pages, archive), `api` (the JSON API),
`admin` (the admin area in the browser), `admin_api` (the same powers for
machines), `openapi` (the spec of both APIs) and `devmail` (the local mailbox
outside production).
"""

from __future__ import annotations

from flask import Flask

from ..config import Settings
from ..extensions import csrf


def register(app: Flask, settings: Settings) -> None:
    """Register every blueprint; the admin modules add their routes to admin_base's two."""
    # Each adds its routes (and texts) to admin_base's two blueprints.
    from . import (  # noqa: F401
        admin_base,
        admin_dashboard,
        admin_embed,
        admin_imports,
        admin_issues,
        admin_subscribers,
        api,
        embed,
        openapi,
        public,
        signup,
    )

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
        from . import devmail

        app.register_blueprint(devmail.bp)
