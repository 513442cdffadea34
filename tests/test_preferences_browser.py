"""The preference page in a real browser (Debian's Chromium under Playwright): with
JavaScript off, a reader chooses topics, pauses and switches language, each form post
announced by a status message; the page fits a phone and passes axe at WCAG 2.1 AA in both
colour schemes; screenshots for the docs (SAVE_PREFERENCE_SCREENSHOTS=1 copies them to
docs/images/).

Skipped where Chromium or Playwright is missing, except under CI=true, where that fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service.extensions import db
from service.models import Subscriber
from service.subscribers.tokens import preferences_token_for
from tests.support.browser import (
    TIMEOUT_MS,
    Browser,
    BrowserContext,
    app_server,
    expect,
    serve,
    unready_server,
)
from tests.support.data import add_article, add_readers

pytestmark = [pytest.mark.slow, pytest.mark.backend_neutral]

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


class Live:
    def __init__(self, app: Flask, url: str) -> None:
        self.app = app
        self.url = url


@pytest.fixture
def live(env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]) -> Iterator[Live]:
    """The app over real HTTP on a loopback port, with a reader and a month of articles."""
    server, url = unready_server()
    app = make_app({**env, "HEBDO_BASE_URL": url})
    app_server(app, server)
    stop = serve(server, "preferences-http")
    recent = datetime.now(UTC) - timedelta(days=2)
    for n, category in enumerate(["Culture", "Culture", "Sport", "Vie locale", "Vie locale"]):
        add_article(app, n, recent - timedelta(days=n), category=category)
    try:
        yield Live(app, url)
    finally:
        stop()


def _reader(live: Live) -> tuple[int, str]:
    email = "camille.dupont@exemple.fr"
    subscriber_id = add_readers(live.app, [email])[email]
    with live.app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        token = preferences_token_for(live.app.config["SETTINGS"], sub.id, sub.created_at)
    return subscriber_id, token


def _row(live: Live, subscriber_id: int) -> Subscriber:
    with live.app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        db.session.expunge(sub)
        return sub


def _context(browser: Browser, live: Live, **options: Any) -> BrowserContext:
    context = browser.new_context(base_url=live.url, locale="fr-FR", **options)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


def test_without_javascript_a_reader_chooses_topics_pauses_and_switches_language(
    browser: Browser, live: Live
) -> None:
    subscriber_id, token = _reader(live)
    context = _context(browser, live, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"/preferences/{token}")
        topics = page.get_by_role("group", name="Thèmes")
        expect(
            topics.get_by_role("checkbox", name="Culture (2 articles en 4 semaines)")
        ).to_be_checked()
        topics.get_by_role("checkbox", name="Culture (2 articles en 4 semaines)").uncheck()
        topics.get_by_role("checkbox", name="Sport (1 article en 4 semaines)").uncheck()
        topics.get_by_role("button", name="Enregistrer mes thèmes").click()
        expect(page.get_by_role("status")).to_have_text("Votre choix de thèmes est enregistré.")
        expect(page).to_have_title("Enregistré : Vos préférences · L'Hebdo")
        assert _row(live, subscriber_id).categories == ["Vie locale"]
        expect(
            page.get_by_role("checkbox", name="Sport (1 article en 4 semaines)")
        ).not_to_be_checked()

        pause = page.get_by_role("group", name="Faire une pause")
        pause.get_by_label("Suspendre la lettre pendant").select_option(label="3 semaines")
        pause.get_by_role("button", name="Suspendre").click()
        until = datetime.now(UTC).date() + timedelta(weeks=3)
        expect(page.get_by_role("status")).to_contain_text("Votre lettre est suspendue jusqu’au")
        assert _row(live, subscriber_id).paused_until == until
        page.get_by_role("button", name="Reprendre maintenant").click()
        expect(page.get_by_role("status")).to_have_text(
            "Votre lettre reprend : vous recevrez le prochain numéro."
        )
        assert _row(live, subscriber_id).paused_until is None

        page.get_by_role("group", name="Langue").get_by_label("English").check()
        page.get_by_role("button", name="Enregistrer ma langue").click()
        expect(page.get_by_role("status")).to_have_text("Your language is saved.")
        expect(page.get_by_role("heading", level=1)).to_have_text("Your preferences")
        assert _row(live, subscriber_id).locale == "en"
    finally:
        context.close()


def _violations(page: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": AA}})
    return [
        f"{violation['id']}: {node['target']}"
        for violation in results.response["violations"]
        for node in violation["nodes"]
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [375, 1280])
def test_the_page_fits_a_phone_passes_axe_and_is_pictured(
    browser: Browser, live: Live, tmp_path: Path, width: int, scheme: str
) -> None:
    _subscriber_id, token = _reader(live)
    context = _context(browser, live, viewport={"width": width, "height": 900}, color_scheme=scheme)
    try:
        page = context.new_page()
        page.goto(f"/preferences/{token}")
        page.get_by_role("checkbox", name="Sport (1 article en 4 semaines)").uncheck()
        page.get_by_role("button", name="Enregistrer mes thèmes").click()
        expect(page.get_by_role("status")).to_have_text("Votre choix de thèmes est enregistré.")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert _violations(page) == []
        shot = tmp_path / f"preferences-{width}-{scheme}.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()
    if os.environ.get("SAVE_PREFERENCE_SCREENSHOTS") == "1":
        IMAGES.mkdir(exist_ok=True)
        shutil.copyfile(shot, IMAGES / shot.name)
