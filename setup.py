"""What goes into the wheel, and one build step; pyproject.toml holds hebdo's metadata.

Packages are discovered (`service`, `worker` and every package below them), and the
top-level folders that are not Python (`templates/`, `static/`, `translations/`,
`migrations/`) ship inside the `service` package as data, where `service.resources` finds
them once installed; in a checkout they stay at the top of the repository.

`build_py` compiles every `translations/*/LC_MESSAGES/messages.po` to its `.mo` (with
Babel's API, as `pybabel compile` does) before the usual build, so `pip install .`,
`python -m build` and `pip install -e .` (setuptools runs `build_py` in editable mode
too) all end with compiled catalogs. The `.mo` files are never committed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def compile_catalogs(translations: Path) -> list[Path]:
    """Write the `.mo` beside each `.po` under `translations`; a broken catalog stops
    the build rather than shipping an app that falls back to English ids."""
    written = []
    for po in sorted(translations.glob("*/LC_MESSAGES/messages.po")):
        with po.open("rb") as source:
            catalog = read_po(source, locale=po.parent.parent.name)
        errors = [(message.id, error) for message, errs in catalog.check() for error in errs]
        if errors:
            raise SystemExit(f"{po}: {errors}")
        mo = po.with_suffix(".mo")
        with mo.open("wb") as target:
            # Fuzzy entries stay out, as with `pybabel compile`: an unchecked translation
            # shows the English id instead.
            write_mo(target, catalog, use_fuzzy=False)
        written.append(mo)
    if not written:
        raise SystemExit(f"no catalog under {translations}: the app would show English ids")
    return written


class BuildWithCatalogs(build_py):
    """The usual build_py, after compiling the gettext catalogs."""

    def run(self) -> None:
        for mo in compile_catalogs(ROOT / "translations"):
            self.announce(f"compiled {mo.relative_to(ROOT)}", level=logging.INFO)
        super().run()


# Top-level folder → the package it becomes in the wheel.
DATA = {
    "service.templates": "templates",
    "service.static": "static",
    "service.translations": "translations",
    "service.migrations": "migrations",
}

setup(
    packages=[*find_packages(include=["service", "service.*", "worker", "worker.*"]), *DATA],
    package_dir=DATA,
    package_data={
        "service": ["digest/sample/*.xml"],
        **{package: ["**/*"] for package in DATA},
    },
    exclude_package_data={package: ["**/__pycache__/*", "**/*.pyc"] for package in DATA},
    cmdclass={"build_py": BuildWithCatalogs},
)
