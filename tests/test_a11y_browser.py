"""Accessibility in a real browser (Debian's Chromium driven by Playwright): axe-core finds
nothing at WCAG 2.1 AA on any public or admin page in either colour scheme; the sign-up
form posts without JavaScript from every hebdo page that carries it; admin messages are
announced and take the focus; buttons keep a border in forced colours; the tables fit a
phone.

Skipped where Chromium or Playwright is missing, except under CI=true, where that fails.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from service.digest import delivery
from service.digest.planning import get_issue, plan_issue
from service.extensions import db
from service.mail.transport import open_transport
from service.models import Subscriber
from service.subscribers.lifecycle import Consent, subscribe
from service.subscribers.tokens import confirm_token, preferences_token_for, unsubscribe_token
from tests.support.admin import ADMIN_PASSWORD, Admin, create_admin
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
from tests.support.data import add_article, add_subscribers
from tests.support.inbound import BOUNCES, dsn, take

# Real browsers: the full suite's, not the fast lane's.
pytestmark = [pytest.mark.slow, pytest.mark.backend_neutral]

AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
WEEK = "2026-W48"
SENT_AT = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


@dataclass
class LiveServer:
    app: Flask
    url: str
    paths: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def live(env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]) -> Iterator[LiveServer]:
    """The app over real HTTP on a loopback port (mail captured for /dev/mailbox)."""
    server, url = unready_server()
    app = make_app({**env, "HEBDO_BASE_URL": url, "HEBDO_BOUNCE_ADDRESS": BOUNCES})
    app_server(app, server)
    stop = serve(server, "a11y-http")
    try:
        yield LiveServer(app, url)
    finally:
        stop()


def context_for(browser: Browser, live: LiveServer, **options: Any) -> BrowserContext:
    context = browser.new_context(base_url=live.url, locale="fr-FR", **options)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


def login(page: Page, next_path: str = "/admin/", name: str = "alice") -> None:
    page.goto(f"/admin/login?next={next_path}")
    page.fill("#name", name)
    page.fill("#password", ADMIN_PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    expect(page).to_have_url(re.compile(re.escape(next_path) + r"$"))


def fail_login(page: Page) -> None:
    page.goto("/admin/login")
    page.fill("#name", "alice")
    page.fill("#password", "pas le bon mot de passe")
    page.get_by_role("button", name="Se connecter").click()
    expect(page.get_by_role("alert")).to_have_text("Identifiant ou mot de passe incorrect.")


# ---------------------------------------------------------------- every page, axe-core


def _send_issue(app: Flask) -> None:
    """Issue WEEK, with a picture, sent (captured) to three readers: the archive shows it."""
    settings = app.config["SETTINGS"]
    add_article(
        app,
        1,
        SENT_AT - timedelta(days=1),
        title="La passerelle du Moulin rouvre",
        image_url="https://lhebdo.example/images/passerelle.jpg",
    )
    add_article(app, 2, SENT_AT - timedelta(days=2), title="Le marché change d’horaires")
    add_subscribers(app, 3)
    queued: list[int] = []
    with app.app_context():
        plan_issue(settings, WEEK, SENT_AT)
        issue = get_issue(WEEK)
        assert issue is not None
        delivery.start_send(settings, issue.id, SENT_AT)
        delivery.dispatch(settings, issue.id, SENT_AT, lambda i: queued.append(i) or True)
        with open_transport(settings) as transport:
            for issue_id in queued:
                delivery.send_batch(settings, issue_id, transport=transport, clock=lambda: SENT_AT)


def _every_page(live: LiveServer) -> tuple[list[str], list[str]]:
    """Data for every page of the route map, and the public and admin paths that show it."""
    app = live.app
    settings = app.config["SETTINGS"]
    create_admin(app)
    _send_issue(app)
    add_article(app, 3, datetime.now(UTC) - timedelta(hours=3), title="Article de la semaine")
    with app.app_context():
        consent = Consent("https://news.example.fr/article-1", "v3", "203.0.113.7", "Firefox")
        signed = subscribe(
            "attente@exemple.fr", locale="fr", consent=consent, now=SENT_AT, settings=settings
        )
        pending = db.session.get(Subscriber, signed.subscriber_id)
        assert pending is not None
        reader = db.session.execute(
            select(Subscriber).where(Subscriber.email == "reader1@exemple.fr")
        ).scalar_one()
        confirm_path = f"/confirm/{confirm_token(settings, pending)}"
        unsubscribe_path = f"/unsubscribe/{unsubscribe_token(settings, reader)}"
        preferences_token = preferences_token_for(settings, reader.id, reader.created_at)
        preferences_path = f"/preferences/{preferences_token}"
        subscriber_id = reader.id
        db.session.remove()
    bounce = take(app, dsn(BOUNCES, "reader2@exemple.fr"), recipients=[BOUNCES])
    admin = Admin(app.test_client())
    assert admin.login().status_code == 302
    upload = {"file": (io.BytesIO(b"email\r\nnouveau@exemple.fr\r\n"), "l.csv")}
    imported = admin.post("/admin/imports", data=upload, content_type="multipart/form-data")
    import_path = re.search(r"/admin/imports/\d+", imported.get_data(as_text=True))
    assert import_path is not None, imported.get_data(as_text=True)[:2000]
    mails = sorted((settings.mail_capture_dir).glob("*.eml"))
    assert mails
    public = [
        "/exemple",
        "/subscribe",
        "/subscribe?lang=en",
        "/merci?domain=gmail.com",
        confirm_path,
        unsubscribe_path,
        preferences_path,
        f"{preferences_path}?done=pause",
        "/confirm/pas-un-jeton",
        "/archive",
        f"/archive/{WEEK}",
        "/page-inconnue",
        "/dev/mailbox/",
        f"/dev/mailbox/{mails[0].name}",
    ]
    admin_paths = [
        "/admin/",
        "/admin/subscribers",
        f"/admin/subscribers/{subscriber_id}",
        "/admin/subscribers/bulk",
        "/admin/suppressions",
        "/admin/audit",
        "/admin/imports",
        import_path.group(0),
        "/admin/issues",
        f"/admin/issues/{WEEK}",
        "/admin/articles",
        "/admin/inbound",
        f"/admin/inbound/{bounce.id}",
        "/admin/embed",
    ]
    return public, admin_paths


def _violations(page: Page) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": AA}})
    found = []
    for violation in results.response["violations"]:
        for node in violation["nodes"]:
            found.append(f"{violation['id']}: {node['target']} {node.get('failureSummary', '')}")
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_at_wcag_21_aa_on_any_page(
    browser: Browser, live: LiveServer, scheme: str
) -> None:
    public, admin_paths = _every_page(live)
    context = context_for(browser, live, color_scheme=scheme)
    found: dict[str, list[str]] = {}
    try:
        page = context.new_page()
        for path in [*public, "/admin/login"]:
            page.goto(path)
            found[path] = _violations(page)
        fail_login(page)
        found["/admin/login (refused)"] = _violations(page)
        login(page)
        for path in admin_paths:
            page.goto(path)
            found[path] = _violations(page)
        create_admin(live.app, "bob", "editor", "bob@exemple.fr")
        page.context.clear_cookies()
        login(page, name="bob")
        page.goto("/admin/imports")
        found["/admin/imports (editor: forbidden)"] = _violations(page)
    finally:
        context.close()
    # The digest as mailed (the issue page's preview): its CSP sandbox forbids scripts, so
    # axe runs there with CSP bypassed, in a context of its own.
    context = context_for(browser, live, color_scheme=scheme, bypass_csp=True)
    try:
        page = context.new_page()
        login(page)
        preview = f"/admin/issues/{WEEK}/preview.html"
        page.goto(preview)
        found[preview] = _violations(page)
    finally:
        context.close()
    bad = {path: items for path, items in found.items() if items}
    assert not bad, "\n".join(f"{p}:\n  " + "\n  ".join(items) for p, items in bad.items())


# ---------------------------------------------------------------- the form without JavaScript


@pytest.mark.parametrize(
    ("path", "label", "button"),
    [
        ("/subscribe", "Votre adresse e-mail", "S’inscrire"),
        ("/subscribe?lang=en", "Your email address", "Subscribe"),
        ("/exemple", "Votre adresse e-mail", "S’inscrire"),
    ],
)
def test_the_form_posts_without_javascript_from_every_page_that_carries_it(
    browser: Browser, live: LiveServer, path: str, label: str, button: str
) -> None:
    context = context_for(browser, live, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(path)
        email = f"sans.js.{len(path)}@exemple.fr"
        page.get_by_label(label).fill(email)
        page.get_by_role("button", name=button).click()
        # The browser sent the page's Origin (not "null"): accepted, then the thank-you page.
        expect(page).to_have_url(re.compile(r"/merci\?"))
    finally:
        context.close()
    with live.app.app_context():
        sub = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
        assert sub.status == "pending"
        assert sub.consent_source == live.url + path
        db.session.remove()


def test_a_post_from_an_opaque_origin_is_still_refused(live: LiveServer) -> None:
    """The fix is the page's referrer policy: `Origin: null` (a sandboxed frame, a page of
    another site under `no-referrer`) stays refused."""
    refused = live.app.test_client().post(
        "/api/v1/subscriptions",
        data={"email": "nul@exemple.fr", "locale": "fr"},
        headers={"Origin": "null"},
    )
    assert refused.status_code == 403
    assert "n’est pas accepté" in refused.get_data(as_text=True)


# ---------------------------------------------------------------- admin messages


def test_admin_messages_are_announced_and_take_the_focus(
    browser: Browser, live: LiveServer
) -> None:
    create_admin(live.app)
    add_article(live.app, 1, datetime.now(UTC) - timedelta(hours=2), title="À la une")
    context = context_for(browser, live)
    try:
        page = context.new_page()
        fail_login(page)
        alert = page.get_by_role("alert")
        expect(alert).to_be_focused()
        # The name typed stays; both fields say they were refused, and why.
        expect(page.locator("#name")).to_have_value("alice")
        for field_id in ("#name", "#password"):
            expect(page.locator(field_id)).to_have_attribute("aria-invalid", "true")
            expect(page.locator(field_id)).to_have_accessible_description(
                "Identifiant ou mot de passe incorrect."
            )

        login(page, "/admin/articles")
        page.get_by_role("button", name="Exclure « À la une »").click()
        done = page.get_by_role("status").filter(has_text="Article exclu du numéro à venir.")
        expect(done).to_be_focused()
        expect(page.get_by_role("alert")).to_have_count(0)
    finally:
        context.close()


# ---------------------------------------------------------------- forced colours, names


def test_buttons_keep_a_border_in_forced_colours(browser: Browser, live: LiveServer) -> None:
    create_admin(live.app)
    add_article(live.app, 1, datetime.now(UTC) - timedelta(hours=2), title="À la une")
    with live.app.app_context():
        consent = Consent("https://news.example.fr/a", "v3", "203.0.113.7", "Firefox")
        signed = subscribe(
            "bord@exemple.fr",
            locale="fr",
            consent=consent,
            now=datetime.now(UTC),
            settings=live.app.config["SETTINGS"],
        )
        sub = db.session.get(Subscriber, signed.subscriber_id)
        assert sub is not None
        confirm = f"/confirm/{confirm_token(live.app.config['SETTINGS'], sub)}"
        db.session.remove()
    context = context_for(browser, live)
    try:
        page = context.new_page()
        page.emulate_media(forced_colors="active")
        seen = 0
        for path in ["/subscribe", confirm, "/admin/login", "/admin/articles"]:
            if path == "/admin/articles":
                login(page, path)
            else:
                page.goto(path)
            borders = page.eval_on_selector_all(
                "button",
                """buttons => buttons.filter(b => b.offsetParent && !b.matches('.link'))
                    .map(b => [b.textContent.trim(), getComputedStyle(b).borderTopStyle,
                               parseFloat(getComputedStyle(b).borderTopWidth)])""",
            )
            assert borders, path
            seen += len(borders)
            for text, style, width in borders:
                assert style != "none" and width >= 1, (path, text, style, width)
        assert seen >= 4
    finally:
        context.close()


def test_names_for_buttons_progress_scrolling_boxes_and_a_favicon(
    browser: Browser, live: LiveServer
) -> None:
    create_admin(live.app)
    _send_issue(live.app)
    add_article(live.app, 3, datetime.now(UTC) - timedelta(hours=2), title="À la une")
    add_article(live.app, 4, datetime.now(UTC) - timedelta(hours=3), title="En bref")
    icon = live.app.test_client().get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    context = context_for(browser, live, viewport={"width": 375, "height": 700})
    try:
        page = context.new_page()
        login(page, "/admin/articles")
        assert page.locator("link[rel=icon]").get_attribute("href") == "/favicon.ico"
        # Two "Exclure" buttons, each named by its article.
        expect(page.get_by_role("button", name="Exclure « À la une »")).to_have_count(1)
        expect(page.get_by_role("button", name="Exclure « En bref »")).to_have_count(1)

        page.goto(f"/admin/issues/{WEEK}")
        expect(page.get_by_role("progressbar", name="Progression")).to_be_visible()
        # The text preview scrolls on a phone: a named region the keyboard reaches.
        preview = page.locator("pre.text")
        expect(preview).to_have_attribute("tabindex", "0")
        expect(preview).to_have_role("region")
        expect(preview).to_have_accessible_name("Version texte")
        preview.press("End")  # focuses it, then the key
        # The key scrolls it (smoothly, where the browser animates: wait for it).
        page.wait_for_function(
            "box => box.scrollTop > 0", arg=preview.element_handle(), timeout=TIMEOUT_MS
        )
    finally:
        context.close()


# ---------------------------------------------------------------- phones (375 px)


def test_admin_tables_and_chart_fit_a_phone_and_the_archive_says_dates(
    browser: Browser, live: LiveServer
) -> None:
    create_admin(live.app)
    _send_issue(live.app)
    with live.app.app_context():
        consent = Consent("https://news.example.fr/a", "v3", "203.0.113.7", "Firefox")
        subscribe(
            "une.adresse.vraiment.tres.longue.pour.un.telephone@exemple.fr",
            locale="fr",
            consent=consent,
            now=datetime.now(UTC),
            settings=live.app.config["SETTINGS"],
        )
        db.session.remove()
    now = datetime.now(UTC)
    add_article(live.app, 3, now - timedelta(hours=2), title="À la une")
    add_article(live.app, 4, now - timedelta(days=20), title="Trop ancien pour ce numéro")
    context = context_for(browser, live, viewport={"width": 375, "height": 700})
    try:
        page = context.new_page()
        login(page, "/admin/subscribers")
        for path in ["/admin/subscribers", "/admin/issues", "/admin/"]:
            page.goto(path)
            clipped = page.eval_on_selector_all(
                ".table-wrap",
                "boxes => boxes.filter(b => b.offsetParent && b.scrollWidth > b.clientWidth + 1)"
                ".map(b => [b.scrollWidth, b.clientWidth])",
            )
            assert clipped == [], (path, clipped)

        # The dashboard chart's labels: at least 11 px high and none on another.
        labels = page.eval_on_selector_all(
            "svg.chart text",
            """texts => texts.map(t => t.getBoundingClientRect())
                .filter(r => r.width > 0).map(r => [r.left, r.right, r.height])""",
        )
        assert labels
        assert min(height for _l, _r, height in labels) >= 11, labels
        spans = sorted((left, right) for left, right, _h in labels)
        assert all(a[1] <= b[0] for a, b in pairwise(spans)), spans

        # An article the issue did not select has nothing to exclude.
        page.goto("/admin/articles")
        old = page.locator("tr").filter(has_text="Trop ancien pour ce numéro")
        expect(old).to_contain_text("Non retenu")
        expect(old.get_by_role("button")).to_have_count(0)
        placed = page.locator("tr").filter(has_text="À la une")
        expect(placed.get_by_role("button", name=re.compile("^Exclure"))).to_have_count(1)

        page.goto("/archive")
        expect(page.get_by_role("main")).to_contain_text("Semaine du 23 novembre 2026")
    finally:
        context.close()
