"""Static files (`static/`): served by Flask's static handling at /static, each page
linking them by a versioned URL (`/static/admin/admin.css?v=<digest of the file>`) that
browsers and caches keep for a year, immutable. A URL with another version (a page cached
from before an upgrade) or none gets the file as it is now, cached for an hour only.

The embeddable box's script and styles also keep their stable addresses, /embed.js and
/embed.css (see `embed`): news sites paste them once and for all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Flask, Response, current_app, request, send_from_directory, url_for

# A versioned URL names one content for ever.
IMMUTABLE_SECONDS = 365 * 24 * 3600
# Anything else may change under its URL at the next upgrade.
UNVERSIONED_SECONDS = 3600


def version(filename: str) -> str:
    """The first 12 hex digits of the file's SHA-256 (read once per process and file)."""
    versions: dict[str, str] = current_app.extensions.setdefault("hebdo.static_versions", {})
    if filename not in versions:
        folder = Path(current_app.static_folder or "static")
        versions[filename] = hashlib.sha256((folder / filename).read_bytes()).hexdigest()[:12]
    return versions[filename]


def static_url(filename: str) -> str:
    """The versioned URL of a static file, for templates."""
    return url_for("static", filename=filename, v=version(filename))


def _cache(response: Response) -> Response:
    if request.endpoint != "static" or response.status_code not in (200, 304):
        return response
    filename = (request.view_args or {}).get("filename", "")
    try:
        current = version(filename)
    except OSError:
        return response
    response.cache_control.public = True
    if request.args.get("v") == current:
        response.cache_control.max_age = IMMUTABLE_SECONDS
        response.cache_control.immutable = True
    else:
        response.cache_control.max_age = UNVERSIONED_SECONDS
    return response


def favicon() -> Response:
    """The tab icon, at the address every browser asks for (pages without a <link> too)."""
    folder = Path(current_app.static_folder or "static")
    response = send_from_directory(
        folder, "favicon.svg", mimetype="image/svg+xml", conditional=True
    )
    response.cache_control.public = True
    response.cache_control.max_age = UNVERSIONED_SECONDS
    return response


def init_app(app: Flask) -> None:
    app.jinja_env.globals["static_url"] = static_url
    app.add_url_rule("/favicon.ico", "favicon", favicon)
    app.after_request(_cache)
