"""Languages: which locale a page, a mail or a command speaks, and the Flask-Babel wiring.

The texts themselves are gettext catalogs in the top-level `translations/` folder; the
message ids are the English texts, French (the default locale) translates every one.
Code marks a text with `_()` (`flask_babel.gettext`), `ngettext` when a number goes with
a noun (French counts 0 and 1 as singular), `pgettext` when one English text needs two
French ones, and the `lazy_` forms for tables built at import time (code → label).
Placeholders are `%(name)s`; a literal percent sign in a text with placeholders, and in
any template text, is `%%`.

Who chooses the locale:
- a page: `set_locale()` from the view (`?lang=`, what the page knows, Accept-Language);
  the admin area: the signed-in user's choice;
- a mail: rendered inside `flask_babel.force_locale(locale)`, once per locale (a digest
  is never rendered per reader);
- a `hebdo …` command: `LC_ALL`, `LC_MESSAGES` or `LANG` when it names a supported
  language, else English.

Updating the catalogs after changing a text (from the repository's root; the `.mo` files
are compiled by `pip install` (setup.py) and by the tests, never committed):

    pybabel extract -F translations/babel.cfg --no-location --sort-output \\
        -o translations/messages.pot service templates
    pybabel update -i translations/messages.pot -d translations --no-fuzzy-matching
    # translate the new entries of translations/fr/LC_MESSAGES/messages.po (and copy
    # the English ones into translations/en/LC_MESSAGES/messages.po), then:
    pybabel compile -d translations --statistics
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from datetime import date

from babel import Locale
from babel.dates import get_month_names
from flask import Flask, g, has_request_context
from flask_babel import Babel, get_locale, refresh

from service.resources import TRANSLATIONS

LOCALES = ("fr", "en")
DEFAULT_LOCALE = "fr"
# A command's language when the environment names none that hebdo speaks.
CLI_DEFAULT_LOCALE = "en"

log = logging.getLogger(__name__)


# Parsed once: the locale selector runs on every request that shows a text (the sign-up
# endpoint among them), and handing Flask-Babel a Locale skips its parsing.
_PARSED = {code: Locale.parse(code) for code in LOCALES}


def pick_locale(*candidates: object, accept: Iterable[str] = ()) -> str:
    """First supported locale among explicit candidates ('fr', 'en-GB', ...), then
    Accept-Language."""
    for candidate in (*candidates, *accept):
        if isinstance(candidate, str) and candidate:
            base = candidate.strip().lower().replace("_", "-").split("-", 1)[0]
            if base in LOCALES:
                return base
    return DEFAULT_LOCALE


def environment_locale(environ: Mapping[str, str] | None = None) -> str:
    """A command's locale: the first of LC_ALL, LC_MESSAGES, LANG that is set (as the C
    library reads them) when it names a supported language, else English."""
    environ = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name)
        if value:
            base = value.split(".", 1)[0].split("@", 1)[0].lower().replace("_", "-")
            base = base.split("-", 1)[0]
            return base if base in LOCALES else CLI_DEFAULT_LOCALE
    return CLI_DEFAULT_LOCALE


def set_locale(locale: str) -> str:
    """Make `locale` the request's language for every text from now on (a view may learn
    it late: the subscriber's own locale, the admin user's)."""
    if g.get("locale") != locale:
        g.locale = locale
        # Texts already looked up in this request cached the previous choice.
        refresh()
    return locale


def current_locale() -> str:
    """The locale texts are looked up in right now (forced, chosen by the request, or the
    command's)."""
    found = get_locale()
    return found.language if found is not None else DEFAULT_LOCALE


def _select_locale() -> Locale:
    chosen = g.get("locale")
    if chosen in _PARSED:
        return _PARSED[chosen]
    if has_request_context():
        return _PARSED[DEFAULT_LOCALE]
    return _PARSED[environment_locale()]


def init_app(app: Flask) -> None:
    """Flask-Babel on the app: catalogs from the top-level translations/ folder, the
    locale chosen as above, `_`/`gettext`/`ngettext`/`pgettext` in templates."""
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    app.config["BABEL_DEFAULT_LOCALE"] = DEFAULT_LOCALE
    Babel(app, locale_selector=_select_locale)
    missing = [
        code
        for code in LOCALES
        if not (TRANSLATIONS / code / "LC_MESSAGES" / "messages.mo").exists()
    ]
    if missing:
        # Flask-Babel then shows the English ids everywhere, French pages included.
        log.warning(
            "no compiled catalog for %s in %s: run `pybabel compile -d translations` "
            "(or pip install -e .)",
            ", ".join(missing),
            TRANSLATIONS,
        )


def format_date(locale: str, day: date) -> str:
    """`23 novembre 2026`, `1er mars 2027` / `23 November 2026`."""
    month = get_month_names("wide", locale=_PARSED.get(locale, _PARSED[DEFAULT_LOCALE]))
    # French writes the first of the month as an ordinal: « 1er mars ».
    number = "1er" if day.day == 1 and locale != "en" else str(day.day)
    return f"{number} {month[day.month]} {day.year}"
