"""The digest and its editor in a real browser (Debian's Chromium driven by Playwright):
the admin intro editor over real HTTP, and the mail itself at 600, 610 and 375 px, light
and dark. The mail screenshots in docs/images come from here: SAVE_DIGEST_SCREENSHOTS=1
copies them there (they are always written to the test's temporary folder).

Skipped where Chromium or Playwright is missing, except under CI=true, where that fails.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask

from service.digest import editorial
from service.digest.planning import get_issue, plan_issue
from service.digest.previews import mail_part
from service.digest.rendering import Recipient, mail_for, mail_template
from tests.support.admin import ADMIN_PASSWORD, create_admin
from tests.support.browser import (
    TIMEOUT_MS,
    Browser,
    Page,
    app_server,
    expect,
    serve,
    unready_server,
)
from tests.support.data import add_article

pytestmark = [pytest.mark.slow, pytest.mark.backend_neutral]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "images"
# A stand-in picture for the articles' images (the mail's are on the news site).
PICTURE = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="1072" height="604" viewBox="0 0 1072 604">'
    '<rect width="1072" height="604" fill="#5b7083"/><circle cx="800" cy="180" r="90" '
    'fill="#f2c14e"/><path d="M0 604 L360 250 L620 480 L820 340 L1072 604 Z" fill="#2f4454"/>'
    "</svg>"
)


def _issue(app: Flask) -> str:
    now = datetime.now(UTC)
    add_article(
        app,
        1,
        now - timedelta(hours=1),
        title="Budget 2027 : ce que le gouvernement prévoit pour les écoles",
        summary="Un budget présenté comme celui de la rentrée : classes moins chargées, "
        "bâtiments rénovés, et des questions sur le financement des cantines.",
        category="Politique",
        author="Claire Dubois",
        image_url="https://lhebdo.example/images/1.jpg",
    )
    for n, (title, category) in enumerate(
        [
            ("Sécheresse : les nappes phréatiques au plus bas depuis 1976", "Environnement"),
            ("Les communes rurales misent sur le covoiturage solidaire", "Environnement"),
            ("Intelligence artificielle : ce que change la nouvelle loi européenne", "Tech"),
            ("Rugby : Toulouse reprend la tête du championnat", "Sport"),
        ],
        start=2,
    ):
        add_article(
            app,
            n,
            now - timedelta(hours=n),
            title=title,
            category=category,
            image_url=f"https://lhebdo.example/images/{n}.jpg",
        )
    with app.app_context():
        settings = app.config["SETTINGS"]
        week = editorial.coming_week(settings, now)
        plan_issue(settings, week, now)
        issue = get_issue(week)
        assert issue is not None
        issue.intro = (
            "Bonjour ! Cette semaine, l’argent des écoles et l’eau qui manque.\n\n"
            "Notre dossier complet : [lire en ligne](https://lhebdo.example/dossier)."
        )
        from service.extensions import db

        db.session.commit()
    return week


def _mail_html(app: Flask, week: str) -> str:
    with app.app_context():
        settings = app.config["SETTINGS"]
        issue = get_issue(week)
        assert issue is not None
        now = datetime.now(UTC)
        mail = mail_for(
            settings,
            mail_template(settings, issue, "fr"),
            Recipient(1, "lectrice@exemple.fr", "fr", now),
            now,
        )
        return mail_part(mail, "html")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_mail_at_600_610_and_375_px(
    app: Flask, browser: Browser, tmp_path: Path, scheme: str
) -> None:
    html = _mail_html(app, _issue(app))
    shots = []
    for width in (600, 610, 375):
        context = browser.new_context(
            viewport={"width": width, "height": 900},
            color_scheme=scheme,  # type: ignore[arg-type]
        )
        try:
            page = context.new_page()
            page.route(
                re.compile(r"^https://lhebdo\.example/images/"),
                lambda route: route.fulfill(content_type="image/svg+xml", body=PICTURE),
            )
            page.set_content(html, wait_until="load")
            # Nothing wider than the screen.
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            image = page.locator("img.lead-image").bounding_box()
            summary = page.locator("td.lead p.summary").bounding_box()
            assert image and summary
            # The picture is exactly as wide as the text under it (600–620 px included).
            assert abs(image["width"] - summary["width"]) <= 1, (width, image, summary)
            assert image["height"] > 100
            # The preheader never shows.
            assert not page.locator(".preheader").is_visible()
            if scheme == "dark":
                background = page.evaluate(
                    "getComputedStyle(document.querySelector('.sheet')).backgroundColor"
                )
                assert background == "rgb(31, 31, 31)"
            if width != 610:
                shot = tmp_path / f"digest-{width}-{scheme}.png"
                page.screenshot(path=str(shot), full_page=True)
                shots.append(shot)
        finally:
            context.close()
    if os.environ.get("SAVE_DIGEST_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copyfile(shot, DOCS / shot.name)


@pytest.fixture
def live(
    env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]
) -> Iterator[tuple[Flask, str]]:
    server, url = unready_server()
    app = make_app({**env, "HEBDO_BASE_URL": url, "HEBDO_REVIEW": "1"})
    app_server(app, server)
    stop = serve(server, "digest-mail-browser-http")
    try:
        yield app, url
    finally:
        stop()


def test_the_editor_writes_the_intro_and_sees_it_in_the_preview(
    browser: Browser, live: tuple[Flask, str]
) -> None:
    app, url = live
    week = _issue(app)
    create_admin(app)
    context = browser.new_context(base_url=url, locale="fr-FR")
    try:
        page: Page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"/admin/login?next=/admin/issues/{week}")
        page.fill("#name", "alice")
        page.fill("#password", ADMIN_PASSWORD)
        page.get_by_role("button", name="Se connecter").click()
        expect(page).to_have_url(re.compile(re.escape(f"/admin/issues/{week}") + r"$"))
        page.get_by_role("button", name="Approuver").click()
        expect(page.locator(".flash.info")).to_be_visible()

        field = page.get_by_label(re.compile("^Mot en tête de la lettre"))
        expect(field).to_have_attribute("maxlength", "1000")
        field.fill("Chère lectrice, cher lecteur : <b>trois</b> sujets cette semaine.")
        page.get_by_role("button", name="Enregistrer le mot").click()
        expect(page.locator(".flash.info")).to_have_text("Mot de la rédaction enregistré.")
        expect(page.locator(".flash").nth(1)).to_contain_text("de nouveau un brouillon")
        expect(page.locator("h1 .badge")).to_have_text("brouillon")
        expect(field).to_have_value("Chère lectrice, cher lecteur : trois sujets cette semaine.")
        preview = page.frame_locator("iframe.preview")
        expect(preview.locator("td.intro")).to_contain_text("Chère lectrice, cher lecteur")
    finally:
        context.close()
