"""hebdo's HTTP faces: thin blueprints over the domain.

`public` (confirmation and unsubscribe pages, archive, health, readiness, metrics), `clicks`
(the digest's counted article links),
`preferences` (the reader's preference page and its JSON twin),
`signup` (the sign-up endpoint), `embed` (the embeddable box), `admin/` (the admin area in
the browser and the admin API), `api/` (the token API, the providers' webhooks and the
OpenAPI document) and `devmail` (the local mailbox, outside production only).
"""

from __future__ import annotations

from flask import Flask

from service.extensions import csrf
from service.web import clicks, embed, preferences, public, signup
from service.web import devmail as mailbox
from service.web.admin import base as admin

# The admin modules add their routes (and texts) to admin.base's two blueprints.
from service.web.admin import dashboard, imports, inbound, issues, subscribers  # noqa: F401
from service.web.admin import embed as admin_embed  # noqa: F401
from service.web.api import ingest, openapi, webhooks
from service.web.payloads import SafeJSONProvider


def register(app: Flask, *, devmail: bool) -> None:
    """Register every blueprint; `/dev/mailbox` only with `devmail` (local capture, outside
    production)."""
    # Every request body read as JSON is decoded by it (a body too deep is a 400).
    app.json = SafeJSONProvider(app)
    app.register_blueprint(ingest.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(public.bp)
    app.register_blueprint(clicks.bp)
    app.register_blueprint(embed.bp)
    app.register_blueprint(signup.bp)
    app.register_blueprint(preferences.bp)
    app.register_blueprint(preferences.api_bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(admin.api_bp)
    app.register_blueprint(openapi.bp)
    # Bearer tokens, no cookies: nothing for a cross-site form to ride on.
    csrf.exempt(admin.api_bp)
    if devmail:
        app.register_blueprint(mailbox.bp)
