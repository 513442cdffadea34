"""Admin help page: how to put the sign-up box on the site's pages, with this service's own
URLs, and the defences in force."""

from __future__ import annotations

from service.web.admin.base import bp, page
from service.web.common import settings
from service.web.embed import snippet_markup


@bp.get("/embed")
def embed_help() -> tuple[str, int]:
    """The snippet to paste, with this service's URLs, and the form's defences."""
    s = settings()
    base = s.base_url
    short = f'<div data-hebdo-form></div>\n<script src="{base}/embed.js" async></script>'
    return page(
        "embed.html",
        short=short,
        full=snippet_markup("fr", token=False).strip(),
        settings=s,
        base=base,
    )
