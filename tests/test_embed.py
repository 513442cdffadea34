"""The embeddable sign-up box over HTTP: its script and styles, the snippet a site pastes,
the hosted /subscribe page and the sample article page /exemple."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_babel import force_locale

from service.subscribers.tokens import Purpose, read_token
from service.web.embed import script_texts
from tests.support.settings import BASE_URL

# 8 KiB until the box named itself (a landmark) and said that a corrected address is unsent.
ASSET_BUDGET = 9 * 1024


class Inputs(HTMLParser):
    """The <input>s of a page (attributes), the <form>s and the tags with an aria-live."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str]] = []
        self.forms: list[dict[str, str]] = []
        self.live: list[dict[str, str]] = []
        self.hidden_wrappers: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "input":
            self.inputs.append(values)
        elif tag == "form":
            self.forms.append(values)
        if "aria-live" in values:
            self.live.append(values)
        if values.get("aria-hidden") == "true":
            self.hidden_wrappers.append(values)

    def named(self, name: str) -> dict[str, str]:
        found = [i for i in self.inputs if i.get("name") == name]
        assert len(found) == 1, f"{len(found)} input(s) named {name!r}"
        return found[0]


def parse(html: str) -> Inputs:
    parser = Inputs()
    parser.feed(html)
    return parser


def assert_box(html: str, action: str) -> Inputs:
    """The no-JavaScript form as the contract has it."""
    page = parse(html)
    assert page.forms == [
        {
            "class": "hebdo-box",
            "method": "post",
            "action": action,
            "accept-charset": "utf-8",
            "lang": page.named("locale")["value"],
            # Named by its heading: a form landmark.
            "aria-labelledby": "hebdo-heading",
        }
    ]
    email = page.named("email")
    # Never type=email: browsers refuse josé@exemple.fr.
    assert (email["type"], email["inputmode"], email["autocomplete"]) == ("text", "email", "email")
    trap = page.named("website")
    assert (trap["tabindex"], trap["autocomplete"], trap["value"]) == ("-1", "off", "")
    assert any(w.get("class") == "hebdo-hp" for w in page.hidden_wrappers)
    assert page.live == [{"class": "hebdo-msg", "role": "status", "aria-live": "polite"}]
    return page


def assert_fresh(token: str, app: Flask) -> None:
    with app.app_context():
        (issued,) = read_token(app.config["SETTINGS"], Purpose.FORM, token)
    assert time.time() - 10 < issued <= time.time()


# ---------------------------------------------------------------- assets


@pytest.mark.parametrize(
    ("path", "mimetype"), [("/embed.js", "text/javascript"), ("/embed.css", "text/css")]
)
def test_assets_are_served_cacheable_with_their_types(
    client: FlaskClient, path: str, mimetype: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == f"{mimetype}; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "Set-Cookie" not in response.headers
    assert "Content-Security-Policy" not in response.headers
    # Revalidation works (ETag), so an hourly expiry costs a 304, not the file.
    again = client.get(path, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_script_and_styles_weigh_a_few_kilobytes(client: FlaskClient) -> None:
    total = sum(len(client.get(path).data) for path in ("/embed.js", "/embed.css"))
    assert total < ASSET_BUDGET, f"embed.js + embed.css = {total} bytes"


def test_script_texts_are_the_service_texts(app: Flask, client: FlaskClient) -> None:
    """The box's own texts (an empty div, another language) match the catalogs."""
    script = client.get("/embed.js").get_data(as_text=True)
    for locale in ("fr", "en"):
        with app.app_context(), force_locale(locale):
            texts = script_texts()
        table = re.search(rf"^{locale}: \[(.*?)\]", script, re.S | re.M)
        assert table, locale
        assert re.findall(r'"([^"]*)"', table.group(1)) == texts, locale


def test_script_sends_no_cookies_and_loads_nothing_else(client: FlaskClient) -> None:
    script = client.get("/embed.js").get_data(as_text=True)
    assert script.count("fetch(") == 2
    assert script.count('credentials: "omit"') == 2
    assert "document.cookie" not in script and "localStorage" not in script
    # Absolute URLs: none but the CAPTCHA provider's, which comes from the server's answer.
    assert not re.search(r"https?://", script)


# ---------------------------------------------------------------- the snippet


def test_snippet_is_the_no_javascript_form_and_the_script_on_absolute_urls(
    client: FlaskClient,
) -> None:
    response = client.get("/embed/snippet")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "Set-Cookie" not in response.headers
    snippet = response.get_data(as_text=True)
    assert snippet.count("<div data-hebdo-form>") == 1
    assert f'<script src="{BASE_URL}/embed.js" async></script>' in snippet
    page = assert_box(snippet, f"{BASE_URL}/api/v1/subscriptions")
    assert page.named("locale")["value"] == "fr"
    # No form token: a pasted snippet is months old; the script fetches a fresh one.
    assert not [i for i in page.inputs if i.get("name") == "ts"]
    assert "Rejoignez gratuitement la communauté" in snippet
    assert "et suivez chaque semaine l’actualité" in snippet
    assert 'type="checkbox"' not in snippet  # no consent line configured


def test_snippet_in_english_with_an_unticked_consent_box(
    env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]
) -> None:
    app = make_app(
        {
            **env,
            "HEBDO_CONSENT_TEXT": "J’accepte de recevoir la lettre.",
            "HEBDO_CONSENT_TEXT_EN": "I agree to receive the newsletter.",
            "HEBDO_CONSENT_VERSION": "form-v7",
        }
    )
    snippet = app.test_client().get("/embed/snippet?lang=en").get_data(as_text=True)
    page = assert_box(snippet, f"{BASE_URL}/api/v1/subscriptions")
    assert page.named("locale")["value"] == "en"
    assert "Join the community for free" in snippet
    box = page.named("consent_given")
    assert box["type"] == "checkbox" and box["value"] == "1"
    assert "checked" not in box
    assert page.named("consent") == {"type": "hidden", "name": "consent", "value": "form-v7"}
    assert "I agree to receive the newsletter." in snippet


# ---------------------------------------------------------------- pages with the box


def test_subscribe_page_shows_the_box_with_a_fresh_token(app: Flask, client: FlaskClient) -> None:
    response = client.get("/subscribe?lang=fr")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    html = response.get_data(as_text=True)
    page = assert_box(html, "/api/v1/subscriptions")
    assert_fresh(page.named("ts")["value"], app)
    assert (
        '<h1 class="hebdo-heading" id="hebdo-heading">Rejoignez gratuitement la communauté</h1>'
        in html
    )
    # The page's own copy of the box's script: versioned, cached for a year (test_static).
    assert re.search(r'<script src="/static/embed/embed.js\?v=[0-9a-f]{12}" defer></script>', html)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' https://hebdo.example.fr;" in csp
    assert "connect-src 'self' https://hebdo.example.fr;" in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp


def test_subscribe_page_allows_the_captcha_provider_when_one_is_set(
    env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]
) -> None:
    app = make_app(
        {
            **env,
            "HEBDO_CAPTCHA_PROVIDER": "turnstile",
            "HEBDO_CAPTCHA_SITE_KEY": "site-key",
            "HEBDO_CAPTCHA_SECRET": "secret",
        }
    )
    csp = app.test_client().get("/subscribe").headers["Content-Security-Policy"]
    assert "script-src 'self' https://hebdo.example.fr https://challenges.cloudflare.com;" in csp
    assert "frame-src 'self' https://challenges.cloudflare.com;" in csp


def test_the_rendered_box_posts_as_a_plain_form(client: FlaskClient) -> None:
    """What a browser without JavaScript sends: every field of the form, form-encoded."""
    page = parse(client.get("/subscribe?lang=fr").get_data(as_text=True))
    fields = {i["name"]: i.get("value", "") for i in page.inputs}
    fields["email"] = "lea@gmial.com"
    response = client.post("/api/v1/subscriptions", data=fields)
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/merci?lang=fr&domain=gmail.com")


def test_example_page_embeds_the_snippet_with_a_fresh_token(
    app: Flask, client: FlaskClient
) -> None:
    response = client.get("/exemple")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    html = response.get_data(as_text=True)
    assert html.startswith('<!doctype html>\n<html lang="fr">')
    page = assert_box(html, f"{BASE_URL}/api/v1/subscriptions")
    assert_fresh(page.named("ts")["value"], app)
    assert f'<script src="{BASE_URL}/embed.js" async></script>' in html
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' https://hebdo.example.fr;" in csp
    assert "form-action 'self' https://hebdo.example.fr;" in csp


def test_example_page_is_not_served_in_production(
    env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]
) -> None:
    app = make_app({**env, "HEBDO_ENV": "production", "HEBDO_SMTP_HOST": "127.0.0.1"})
    client = app.test_client()
    assert client.get("/exemple").status_code == 404
    # The box itself is served in production.
    assert client.get("/embed.js").status_code == 200
    assert client.get("/embed/snippet").status_code == 200


def test_the_admin_help_page_shows_the_snippet_with_this_services_urls(
    app: Flask, editor: Any
) -> None:
    page = editor.get("/admin/embed").get_data(as_text=True)
    base = app.config["SETTINGS"].base_url
    assert f"{base}/embed.js" in page and "&lt;div data-hebdo-form&gt;&lt;/div&gt;" in page
    unescaped = page.replace("&#34;", '"').replace("&quot;", '"').replace("&lt;", "<")
    assert (
        f'<form class="hebdo-box" method="post" action="{base}/api/v1/subscriptions"' in unescaped
    )
    assert "https://news.example.fr" in page  # the allowed origins
    assert "30/minute;500/day" in page
    assert app.test_client().get("/admin/embed").status_code == 302
