"""The sign-up box in a real browser (Debian's Chromium driven by Playwright), embedded in a
news site's article page served from another origin, exactly as the snippet is pasted:
a sign-up whose confirmation mail reaches the SMTP server, the same without JavaScript,
keyboard-only use, a refused address, a typo's suggestion, English and the consent line,
too many attempts and a service that does not answer; screenshots at 375 and 1280 px.

Skipped where Chromium or Playwright is missing, except under CI=true, where that fails.
Set SAVE_EMBED_SCREENSHOTS=1 to refresh docs/embed-375.png and docs/embed-1280.png.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from service.extensions import db
from service.mail.transport import open_transport
from service.models import Subscriber
from service.subscribers.confirmations import send_due_confirmations
from tests.support.browser import (
    TIMEOUT_MS,
    Browser,
    BrowserContext,
    Page,
    app_server,
    expect,
    serve,
    unready_server,
)
from tests.support.smtp import SMTPSink

# Real processes, browsers or many requests: the full suite's, not the fast lane's.
pytestmark = [pytest.mark.slow, pytest.mark.backend_neutral]

DOCS = Path(__file__).resolve().parent.parent / "docs"


ARTICLE = """<!doctype html>
<html lang="{lang}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Le Courrier du Val</title>
<style>
  body {{ margin: 0; font: 18px/1.6 Georgia, serif; color: #222; background: #fff; }}
  nav, article {{ max-width: 42rem; margin: 0 auto; padding: 1rem; }}
  :root {{ --hebdo-accent: #0b5c8e; }}
</style></head>
<body>
<nav><a href="/">Le Courrier du Val</a> · <a href="/sports">Sports</a></nav>
<article>
<h1>Le marché couvert change d’horaires</h1>
<p>Dès le mois prochain, les étals ouvriront une heure plus tôt le samedi, à la demande
des producteurs qui viennent des villages voisins.</p>
<p>La municipalité promet aussi de nouveaux bancs sur la place, et un parc à vélos
couvert devant l’entrée principale.</p>
{snippet}
</article>
</body>
</html>
"""


# ---------------------------------------------------------------- fixtures


@dataclass
class Site:
    """hebdo on one loopback port, a news site's article pages on another."""

    app: Flask
    hebdo: str
    host: str

    def sweep(self) -> int:
        """What the worker's sweep task does, in-process: send the owed confirmations."""
        settings = self.app.config["SETTINGS"]
        with self.app.app_context(), open_transport(settings) as transport:
            return send_due_confirmations(
                transport=transport, settings=settings, now=datetime.now(UTC)
            )

    def consent_source(self, email: str) -> str | None:
        with self.app.app_context():
            source = db.session.execute(
                select(Subscriber.consent_source).where(Subscriber.email == email)
            ).scalar_one()
            db.session.remove()
            return source


def _host_server(pages: dict[str, bytes]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path.split("?", 1)[0])
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


@pytest.fixture
def make_site(
    smtp_env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]
) -> Iterator[Callable[..., Site]]:
    """Start hebdo (sending through aiosmtpd) and a news site that pastes its snippet."""
    stops: list[Callable[[], None]] = []

    def start(**settings: str) -> Site:
        hebdo_server, hebdo = unready_server()
        pages: dict[str, bytes] = {}
        host_server = _host_server(pages)
        host = f"http://127.0.0.1:{host_server.server_port}"
        app = make_app(
            {
                **smtp_env,
                "HEBDO_BASE_URL": hebdo,
                "HEBDO_ALLOWED_ORIGINS": host,
                "HEBDO_FORM_MIN_SECONDS": "0",
                **settings,
            }
        )
        app_server(app, hebdo_server)
        # What the site's developer copies from hebdo, pasted as is.
        snippet = app.test_client().get("/embed/snippet").get_data(as_text=True)
        pages["/article"] = ARTICLE.format(lang="fr", snippet=snippet).encode()
        pages["/en/article"] = ARTICLE.format(lang="en", snippet=snippet).encode()
        # The least a site can paste: an empty div (its language set on it) and the script.
        bare = f'<div data-hebdo-form data-lang="en"></div><script src="{hebdo}/embed.js"></script>'
        pages["/bare"] = ARTICLE.format(lang="fr", snippet=bare).encode()
        stops.append(serve(hebdo_server, "hebdo"))
        stops.append(serve(host_server, "news-site"))
        return Site(app, hebdo, host)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()


def _context(browser: Browser, **options: Any) -> BrowserContext:
    context = browser.new_context(locale="fr-FR", **options)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = _context(browser)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def open_article(page: Page, site: Site, path: str = "/article") -> None:
    """The article page, the box enhanced (its form token fetched from hebdo)."""
    with page.expect_response(re.compile(r"/api/v1/subscriptions/form\?lang=")) as answer:
        page.goto(site.host + path)
    assert answer.value.status == 200
    expect(page.locator("[data-hebdo-form] form")).to_be_visible()


def message(page: Page) -> Any:
    return page.locator("[data-hebdo-form] [aria-live=polite]")


def field(page: Page) -> Any:
    return page.get_by_label("Votre adresse e-mail")


def tab_to(page: Page, locator: Any, presses: int = 10) -> None:
    """Press Tab until `locator` has the focus."""
    for _ in range(presses):
        if locator.evaluate("element => element === document.activeElement"):
            return
        page.keyboard.press("Tab")
    expect(locator).to_be_focused()


# ---------------------------------------------------------------- tests


def test_box_on_a_news_site_signs_up_and_the_confirmation_arrives(
    site: Site, context: BrowserContext, page: Page, smtp_server: SMTPSink
) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    open_article(page, site)
    expect(page.get_by_role("heading", name="Rejoignez gratuitement la communauté")).to_be_visible()
    expect(page.get_by_text("et suivez chaque semaine l’actualité")).to_be_visible()
    # The host page's fonts and theme reach the box.
    box = page.locator(".hebdo-box")
    assert "Georgia" in box.evaluate("e => getComputedStyle(e).fontFamily")
    button = page.get_by_role("button", name="S’inscrire")
    assert button.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(11, 92, 142)"

    field(page).fill("josé@exemple.fr")
    button.click()
    expect(message(page)).to_have_text(re.compile(r"^Merci ! Vérifiez votre boîte de réception"))

    assert site.sweep() == 1
    (mail,) = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["josé@exemple.fr"]
    assert site.consent_source("josé@exemple.fr") == site.host + "/article"
    # Nothing but the page itself and hebdo; no cookie on either.
    assert {re.sub(r"(https?://[^/]+).*", r"\1", url) for url in requests} == {
        site.host,
        site.hebdo,
    }
    assert context.cookies() == []


def test_without_javascript_the_same_markup_posts_and_lands_on_the_thank_you_page(
    site: Site, browser: Browser, smtp_server: SMTPSink
) -> None:
    context = _context(browser, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(site.host + "/article")
        # The honeypot stays out of sight without the stylesheet too.
        expect(page.get_by_label("Ne pas remplir ce champ")).not_to_be_in_viewport()
        field(page).fill("marie@exemple.fr")
        page.get_by_role("button", name="S’inscrire").click()
        expect(page).to_have_url(re.compile(re.escape(site.hebdo) + r"/merci\?lang=fr"))
        expect(page.get_by_role("heading", name="Plus qu’une étape")).to_be_visible()
        back = page.get_by_role("link", name="Revenir à la page précédente")
        # Chromium's default Referrer-Policy sends the origin only across origins.
        assert (back.get_attribute("href") or "").startswith(site.host + "/")
        back.click()
        expect(page).to_have_url(re.compile("^" + re.escape(site.host)))
        assert context.cookies() == []
    finally:
        context.close()
    assert site.sweep() == 1
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["marie@exemple.fr"]


def test_keyboard_only(site: Site, page: Page, smtp_server: SMTPSink) -> None:
    open_article(page, site)
    tab_to(page, field(page))
    page.keyboard.type("paul@exemple.fr")
    # The honeypot is out of the tab order: next comes the button.
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="S’inscrire")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(field(page)).to_be_focused()
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text(re.compile(r"^Merci !"))
    expect(field(page)).to_be_focused()
    assert site.sweep() == 1
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["paul@exemple.fr"]


def test_a_refused_address_shows_the_reason(site: Site, page: Page) -> None:
    expected = (
        site.app.test_client()
        .post("/api/v1/subscriptions", json={"email": "jean.dupont@", "locale": "fr"})
        .get_json()
    )
    assert expected["error"] == "invalid_email"
    open_article(page, site)
    field(page).fill("jean.dupont@")
    page.get_by_role("button", name="S’inscrire").click()
    expect(message(page)).to_have_text(expected["message"])
    expect(field(page)).to_have_attribute("aria-invalid", "true")
    expect(field(page)).to_be_focused()
    # Fixed and sent again: the error goes away.
    field(page).fill("jean.dupont@exemple.fr")
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text(re.compile(r"^Merci !"))
    expect(field(page)).not_to_have_attribute("aria-invalid", "true")


def test_a_typo_is_offered_its_fix_in_one_click(site: Site, page: Page) -> None:
    open_article(page, site)
    field(page).fill("lea@gmial.com")
    page.get_by_role("button", name="S’inscrire").click()
    expect(message(page)).to_contain_text("Vouliez-vous dire lea@gmail.com ?")
    page.get_by_role("button", name="Corriger en lea@gmail.com").click()
    expect(field(page)).to_have_value("lea@gmail.com")
    expect(field(page)).to_be_focused()
    # The corrected address is not sent yet, and the box says so (in its live region).
    expect(message(page)).to_have_text(
        "Adresse corrigée : appuyez sur « S’inscrire » pour l’envoyer."
    )


def test_english_page_with_a_consent_line(make_site: Callable[..., Site], page: Page) -> None:
    site = make_site(
        HEBDO_CONSENT_TEXT="J’accepte de recevoir la lettre.",
        HEBDO_CONSENT_TEXT_EN="I agree to receive the weekly newsletter.",
    )
    # The French snippet pasted on an English page: the box follows <html lang="en">.
    open_article(page, site, "/en/article")
    expect(page.get_by_role("heading", name="Join the community for free")).to_be_visible()
    consent = page.get_by_label("I agree to receive the weekly newsletter.")
    expect(consent).not_to_be_checked()
    page.get_by_label("Your email address").fill("sam@example.org")
    page.get_by_role("button", name="Subscribe").click()
    expect(message(page)).to_have_text("Tick the box to agree to receive the newsletter.")
    expect(consent).to_be_focused()
    page.keyboard.press("Space")
    page.get_by_role("button", name="Subscribe").click()
    expect(message(page)).to_have_text(re.compile(r"^Thank you! Check your inbox"))


def test_too_many_attempts_and_a_service_that_does_not_answer(
    make_site: Callable[..., Site], page: Page
) -> None:
    site = make_site(HEBDO_SUBSCRIBE_RATE_LIMIT="1/minute")
    open_article(page, site)
    field(page).fill("une@exemple.fr")
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text(re.compile(r"^Merci !"))
    field(page).fill("deux@exemple.fr")
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text("Trop de tentatives. Réessayez dans quelques minutes.")

    page.route(site.hebdo + "/api/v1/subscriptions", lambda route: route.abort())
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text(
        "Le service est momentanément indisponible. Réessayez dans un instant."
    )


def test_an_empty_div_and_the_script_are_enough(site: Site, page: Page) -> None:
    open_article(page, site, "/bare")
    expect(page.get_by_role("heading", name="Join the community for free")).to_be_visible()
    page.get_by_label("Your email address").fill("kim@example.org")
    page.get_by_role("button", name="Subscribe").click()
    expect(message(page)).to_have_text(re.compile(r"^Thank you! Check your inbox"))
    assert site.consent_source("kim@example.org") == site.host + "/bare"


@pytest.mark.parametrize("width", [375, 1280])
def test_screenshots_phone_and_desktop(
    site: Site, browser: Browser, tmp_path: Path, width: int
) -> None:
    context = _context(browser, viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        open_article(page, site)
        field(page).fill("lea@gmial.com")
        page.get_by_role("button", name="S’inscrire").click()
        expect(page.get_by_role("button", name="Corriger en lea@gmail.com")).to_be_visible()
        # Nothing wider than the screen, the field and the button within the box.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        box = page.locator(".hebdo-box").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
        shot = tmp_path / f"embed-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()
    if os.environ.get("SAVE_EMBED_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / shot.name)


@pytest.mark.parametrize("path", ["/exemple", "/subscribe?lang=fr"])
def test_hebdo_own_pages_run_the_box_under_their_csp(site: Site, page: Page, path: str) -> None:
    """The sample article page and the hosted page load embed.js and call the API from
    hebdo itself: their Content-Security-Policy lets exactly that through."""
    errors: list[str] = []
    # CSP violations are console errors; the browser's own /favicon.ico 404 is not ours.
    page.route(re.compile(r"/favicon\.ico$"), lambda route: route.fulfill(status=204))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with page.expect_response(re.compile(r"/api/v1/subscriptions/form\?lang=fr")):
        page.goto(site.hebdo + path)
    expect(page.locator(".hebdo-box")).to_have_css("border-top-left-radius", "8px")
    field(page).fill("ines@exemple.fr")
    page.get_by_role("button", name="S’inscrire").click()
    expect(message(page)).to_have_text(re.compile(r"^Merci ! Vérifiez"))
    assert errors == []


FAKE_TURNSTILE = """
document.querySelectorAll(".cf-turnstile").forEach((w) => {
  w.append(Object.assign(document.createElement("input"),
    {type: "hidden", name: "cf-turnstile-response", value: "solved-" + w.dataset.sitekey}));
});
window.turnstile = {render() {}};
"""


def test_a_captcha_asked_for_under_load_is_shown_and_its_token_sent(
    make_site: Callable[..., Site], page: Page
) -> None:
    """Above the threshold the server answers 400 captcha_required: the box loads the
    provider's script (a stand-in here: no network), shows its widget and sends its token."""
    site = make_site(
        HEBDO_CAPTCHA_PROVIDER="turnstile",
        HEBDO_CAPTCHA_SITE_KEY="site-key",
        HEBDO_CAPTCHA_SECRET="secret",
        HEBDO_CAPTCHA_THRESHOLD="1",
    )
    tokens: list[str] = []
    site.app.extensions["hebdo.captcha"] = lambda provider, secret, token, ip: (
        tokens.append(token) or token == "solved-site-key"
    )
    page.route(
        "https://challenges.cloudflare.com/**",
        lambda route: route.fulfill(body=FAKE_TURNSTILE, content_type="text/javascript"),
    )
    open_article(page, site)
    field(page).fill("une@exemple.fr")
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text(re.compile(r"^Merci !"))
    # One sign-up in the last minute: the threshold is reached.
    field(page).fill("deux@exemple.fr")
    page.keyboard.press("Enter")
    expect(message(page)).to_have_text(
        "Une vérification est nécessaire : complétez-la, puis validez à nouveau."
    )
    expect(page.locator(".hebdo-box .cf-turnstile[data-sitekey=site-key]")).to_have_count(1)
    page.get_by_role("button", name="S’inscrire").click()
    expect(message(page)).to_have_text(re.compile(r"^Merci !"))
    assert tokens == ["solved-site-key"]
