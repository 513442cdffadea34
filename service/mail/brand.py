"""How every mail of hebdo looks as one family: the masthead (brand colour, logo or the
site's name) and the colours derived from HEBDO_BRAND_COLOR, shared by the confirmation
mail and the digest.

Text on the brand colour must stay readable whatever colour an operator picks, so the
text colour is computed (WCAG 2 contrast), never configured.
"""

from __future__ import annotations

from typing import Any

from service.config import Settings

# WCAG AA for body text.
AA = 4.5


def _luminance(colour: str) -> float:
    """WCAG relative luminance of `#rrggbb`."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two `#rrggbb` colours (1 to 21)."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def palette(colour: str) -> dict[str, str]:
    """The band in the brand colour with white or black text, whichever contrasts more (one
    of them always reaches AA), and headings in the brand colour only where it reads on
    white; otherwise near-black."""
    white, black = contrast(colour, "#ffffff"), contrast(colour, "#000000")
    on_brand = "#ffffff" if white >= black else "#000000"
    accent = colour if white >= AA else "#222222"
    return {"brand": colour, "on_brand": on_brand, "accent": accent}


def masthead(settings: Settings) -> dict[str, Any]:
    """What the mail templates' masthead and colours need."""
    return {
        "site": settings.site_name,
        "logo": settings.logo_url,
        "logo_width": settings.logo_width,
        "logo_height": settings.logo_height,
        **palette(settings.brand_color),
    }
