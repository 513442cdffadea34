"""The admin area in a real browser (Debian's Chromium driven by Playwright), against the
app served over real HTTP: the confirm dialog and flash messages, keyboard use, the
sandboxed issue preview, a test mail that reaches the SMTP server, and a phone-sized screen.

Skipped where Chromium or Playwright is missing, except under CI=true, where that fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select

from service.digest import editorial
from service.digest.planning import plan_issue
from service.extensions import db
from service.models import Status, Subscriber
from service.subscribers.lifecycle import Consent, subscribe
from tests.support.admin import ADMIN_PASSWORD, create_admin
from tests.support.browser import (
    TIMEOUT_MS,
    Browser,
    Dialog,
    Page,
    app_server,
    expect,
    serve,
    unready_server,
)
from tests.support.data import add_article, add_subscribers
from tests.support.smtp import SMTPSink

# Real processes, browsers or many requests: the full suite's, not the fast lane's.
pytestmark = [pytest.mark.slow, pytest.mark.backend_neutral]


@dataclass
class LiveServer:
    app: Flask
    url: str


@pytest.fixture
def live(
    smtp_env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]
) -> Iterator[LiveServer]:
    """The app over real HTTP on a loopback port, sending through aiosmtpd.

    The server binds first so the app can be built with its own http:// address as
    HEBDO_BASE_URL (the session cookie is then not Secure-only, which http would drop)."""
    server, url = unready_server()
    app = make_app({**smtp_env, "HEBDO_BASE_URL": url})
    app_server(app, server)
    stop = serve(server, "admin-browser-http")
    try:
        yield LiveServer(app, url)
    finally:
        stop()


@pytest.fixture
def page(browser: Browser, live: LiveServer) -> Iterator[Page]:
    """A fresh French-speaking browser tab on the live server; alice (admin) exists."""
    create_admin(live.app)
    context = browser.new_context(base_url=live.url, locale="fr-FR")
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        yield tab
    finally:
        context.close()


def login(page: Page, next_path: str = "/admin/subscribers") -> None:
    page.goto(f"/admin/login?next={next_path}")
    page.fill("#name", "alice")
    page.fill("#password", ADMIN_PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    expect(page).to_have_url(re.compile(re.escape(next_path) + r"$"))
    # The page's stylesheet too (its load event): the URL changes once the answer's first
    # bytes are read, and a layout measured before admin.css is applied is another page's
    # (CI measured a 375-pixel phone page 835 pixels wide, while both test suites ran).
    page.wait_for_load_state("load")


def tab_to(page: Page, selector: str, presses: int = 8) -> None:
    """Press Tab until `selector` has the focus (none if it has it already)."""
    target = page.locator(selector)
    for _ in range(presses):
        if target.evaluate("element => element === document.activeElement"):
            return
        page.keyboard.press("Tab")
    expect(target).to_be_focused()


def sign_up(app: Flask, email: str) -> int:
    """A subscriber as the public form makes one (consent recorded), then confirmed."""
    now = datetime.now(UTC)
    with app.app_context():
        consent = Consent("https://news.example.fr/article-1", "v3", "203.0.113.7", "Firefox/140")
        result = subscribe(
            email, locale="fr", consent=consent, now=now, settings=app.config["SETTINGS"]
        )
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None
        sub.status = Status.ACTIVE
        sub.confirmed_at = now
        sub.confirm_due_at = None
        db.session.commit()
        return result.subscriber_id


def status_of(app: Flask, subscriber_id: int) -> str:
    with app.app_context():
        status = db.session.execute(
            select(Subscriber.status).where(Subscriber.id == subscriber_id)
        ).scalar_one()
        db.session.remove()
        return str(status)


# ---------------------------------------------------------------- tests


def test_search_open_unsubscribe_with_confirm_and_see_it_audited(
    page: Page, live: LiveServer
) -> None:
    add_subscribers(live.app, 3)
    jose = sign_up(live.app, "josé@exemple.fr")
    login(page)

    # An accent-free query finds the accented address, and only it.
    page.fill("#q", "jose@exemple")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]q=jose%40exemple"))
    links = page.locator("tbody a")
    expect(links).to_have_count(1)
    expect(links.first).to_have_text("josé@exemple.fr")
    links.first.click()
    expect(page).to_have_url(re.compile(rf"/admin/subscribers/{jose}$"))
    expect(page.locator("h1 .badge")).to_have_text("actif")

    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.fill("#reason", "demande par téléphone")
    page.get_by_role("button", name="Désinscrire", exact=True).click()
    expect(page.locator(".flash.info")).to_have_text("Désinscrire : fait.")
    assert dialogs == ["Désinscrire cet abonné ?"]
    expect(page.locator("h1 .badge")).to_have_text("désinscrit")
    assert status_of(live.app, jose) == "unsubscribed"

    page.goto("/admin/audit")
    row = page.locator("tbody tr").filter(
        has=page.locator("td", has_text=re.compile("^désinscription$"))
    )
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_have_text("admin:alice")
    expect(row.get_by_role("link", name=f"#{jose}")).to_be_visible()
    expect(row).to_contain_text("actif → désinscrit")


def test_keyboard_only_login_and_skip_link(page: Page) -> None:
    page.goto("/admin/login?next=/admin/subscribers")
    # The name field has the focus on load (autofocus), or a few Tabs reach it.
    tab_to(page, "#name")
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    expect(page.locator("#password")).to_be_focused()
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/admin/subscribers$"))
    expect(page.get_by_role("heading", level=1)).to_be_visible()

    # On an admin page the first Tab lands on the skip link, and Enter moves to the content.
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Aller au contenu")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("main#main")).to_be_focused()


def test_issue_page_previews_in_a_sandbox_and_sends_a_test_to_me(
    page: Page, live: LiveServer, smtp_server: SMTPSink
) -> None:
    now = datetime.now(UTC)
    add_article(live.app, 1, now - timedelta(hours=5), title="Grand titre de la semaine")
    with live.app.app_context():
        week = editorial.coming_week(live.app.config["SETTINGS"], now)
        plan_issue(live.app.config["SETTINGS"], week, now)
    login(page, "/admin/issues")
    page.get_by_role("link", name=week).click()
    expect(page).to_have_url(re.compile(rf"/admin/issues/{week}$"))

    frame = page.locator("iframe.preview")
    # Sandboxed, and never with both scripts and same-origin (that pair undoes the sandbox).
    sandbox = frame.get_attribute("sandbox")
    assert sandbox is not None
    assert not {"allow-scripts", "allow-same-origin"} <= set(sandbox.split()), sandbox
    inside = page.frame_locator("iframe.preview")
    expect(inside.get_by_role("heading", name="Grand titre de la semaine")).to_be_visible()
    # The sandboxed frame is an opaque origin: the page's scripts cannot reach into it.
    assert page.evaluate("document.querySelector('iframe.preview').contentDocument") is None

    assert smtp_server.messages == []
    page.get_by_role("button", name="M’envoyer un test").click()
    expect(page.locator(".flash.info")).to_have_text(
        f"Test du numéro {week} envoyé à alice@exemple.fr."
    )
    sent = smtp_server.wait_for(1, timeout=10)
    assert len(sent) == 1
    assert sent[0].rcpt_tos == ["alice@exemple.fr"]
    assert sent[0].message["Subject"].startswith("[TEST] ")
    assert "Grand titre de la semaine" in sent[0].part("plain")


def test_subscribers_page_fits_a_phone_screen(browser: Browser, live: LiveServer) -> None:
    create_admin(live.app)
    add_subscribers(live.app, 20)
    sign_up(live.app, "une.adresse.vraiment.tres.longue.pour.un.telephone@exemple.fr")
    context = browser.new_context(
        base_url=live.url, locale="fr-FR", viewport={"width": 375, "height": 700}
    )
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        login(page)
        expect(page.locator("tbody tr")).to_have_count(21)
        widths = page.evaluate(
            "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
        )
        assert widths["inner"] == 375
        assert widths["scroll"] <= widths["inner"], widths
    finally:
        context.close()
