"""Admin help page: how to put the sign-up box on the site's pages, with this service's own
URLs, and the defences in force."""

from __future__ import annotations

from service.web.admin.base import add_texts, bp, page
from service.web.common import settings
from service.web.embed import snippet_markup

add_texts(
    {
        "fr": {
            "embed.title": "Le formulaire d’inscription sur le site",
            "embed.short": "Deux lignes à coller à la fin des pages d’article (le script dessine le formulaire) :",
            "embed.full": "Ou, pour qu’il fonctionne aussi sans JavaScript, le formulaire complet (le script l’améliore sur place) :",
            "embed.origins": "Sites autorisés (HEBDO_ALLOWED_ORIGINS) : le formulaire n’est accepté, et la page d’origine n’est enregistrée, que pour eux.",
            "embed.defences": "Protections en vigueur",
            "embed.limit_ip": "Par adresse IP",
            "embed.limit_network": "Par réseau (/24, /64)",
            "embed.limit_address": "Par adresse e-mail visée",
            "embed.min_seconds": "Délai minimal de saisie",
            "embed.captcha": "CAPTCHA",
            "embed.captcha_none": "aucun",
            "embed.captcha_on": "{provider}, demandé au-delà de {threshold} inscriptions par minute",
            "embed.pages": "Page d’inscription hébergée, pour les liens des réseaux sociaux :",
            "embed.example": "Page d’exemple (mode local) :",
        },
        "en": {
            "embed.title": "The sign-up form on the site",
            "embed.short": "Two lines to paste at the end of article pages (the script draws the form):",
            "embed.full": "Or, so that it works without JavaScript too, the whole form (the script enhances it in place):",
            "embed.origins": "Allowed sites (HEBDO_ALLOWED_ORIGINS): the form is accepted, and the page it was on recorded, for these only.",
            "embed.defences": "Defences in force",
            "embed.limit_ip": "Per IP address",
            "embed.limit_network": "Per network (/24, /64)",
            "embed.limit_address": "Per target address",
            "embed.min_seconds": "Minimum fill time",
            "embed.captcha": "CAPTCHA",
            "embed.captcha_none": "none",
            "embed.captcha_on": "{provider}, asked above {threshold} sign-ups per minute",
            "embed.pages": "Hosted sign-up page, for links from social media:",
            "embed.example": "Sample page (local mode):",
        },
    }
)


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
