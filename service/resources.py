"""Where hebdo's files that are not Python live: templates, static files, translation
catalogs, database migrations.

In a checkout they are top-level folders of the repository (`templates/`, `static/`,
`translations/`, `migrations/`); an installed wheel carries them inside the `service`
package (`setup.py` maps them there). Each path is the folder inside the package
when it exists, else the checkout's.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _folder(name: str) -> Path:
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


TEMPLATES = _folder("templates")
STATIC = _folder("static")
TRANSLATIONS = _folder("translations")
MIGRATIONS = _folder("migrations")
