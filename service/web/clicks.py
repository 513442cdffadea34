"""`/c/<week>/<n>/<signature>`: a digest reader's click on an article (see digest.clicks)."""

from __future__ import annotations

from flask import Blueprint, abort, redirect, request
from werkzeug.wrappers import Response

from service.digest import clicks
from service.web.common import now, settings, user_agent

bp = Blueprint("clicks", __name__)


@bp.get("/c/<week>/<int:position>/<sig>")
def follow(week: str, position: int, sig: str) -> Response:
    """Count the click (when a reader made it) and go to the article; 404 for a bad link."""
    click = clicks.follow(
        settings(), week, position, sig, method=request.method, agent=user_agent(), now=now()
    )
    if click is None:
        abort(404)
    response = redirect(click.url, 302)
    # Every click must reach us: a cached redirect would count once per browser.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
