"""What the digest says and how it looks on the wire: the lead story, the editor's note
(written on the admin page or over the API, sanitised, re-approved in review mode), the
inbox preheader and subject, the brand settings, and the confirmation mail of the same
family. Every mail is read back from the bytes the loopback SMTP server received."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser

import pytest
from flask import Flask
from sqlalchemy import select

from service.config import ConfigError, load_settings
from service.digest import delivery, editorial
from service.digest.planning import get_issue, issue_articles, plan_issue
from service.digest.rendering import Recipient, mail_for, mail_template, render_issue
from service.extensions import db
from service.mail import brand
from service.mail.transport import open_transport
from service.models import AuditEvent
from tests.support.admin import Admin, api_token, create_admin
from tests.support.data import add_article
from tests.support.mail import sweep
from tests.support.smtp import Received, SMTPSink

LONG_LEAD = (
    "Budget 2027 : ce que le gouvernement prévoit vraiment pour les écoles, les hôpitaux "
    "et les transports du quotidien"
)


def _now() -> datetime:
    return datetime.now(UTC)


def _five_articles(app: Flask) -> list[int]:
    now = _now()
    ids = [
        add_article(
            app,
            1,
            now - timedelta(hours=1),
            title=LONG_LEAD,
            category="Politique",
            image_url="https://lhebdo.example/images/1.jpg",
        )
    ]
    for n in (2, 3, 4, 5):
        ids.append(
            add_article(
                app,
                n,
                now - timedelta(hours=n),
                title=f"Brève numéro {n}",
                category="Monde",
                image_url=f"https://lhebdo.example/images/{n}.jpg",
            )
        )
    return ids


def _coming(app: Flask) -> str:
    with app.app_context():
        week = editorial.coming_week(app.config["SETTINGS"], _now())
        plan_issue(app.config["SETTINGS"], week, _now())
        return week


def _send(app: Flask, smtp_server: SMTPSink, week: str, locale: str = "fr") -> Received:
    """The digest of `week` as one reader gets it, read back from the SMTP server."""
    before = len(smtp_server.messages)
    with app.app_context():
        settings = app.config["SETTINGS"]
        issue = get_issue(week)
        assert issue is not None
        with open_transport(settings) as transport:
            transport.send(
                mail_for(
                    settings,
                    mail_template(settings, issue, locale),
                    Recipient(1, "lectrice@exemple.fr", locale, _now()),
                    _now(),
                )
            )
    return smtp_server.wait_for(before + 1)[before]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
            if self._href is not None:
                self._text.append(dict(attrs).get("alt") or "")
        if tag == "a":
            self._href, self._text = dict(attrs).get("href") or "", []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, " ".join("".join(self._text).split())))
            self._href = None


def _body_start(html: str) -> str:
    """The body's text as an inbox preview reads it: from <body>, tags removed."""
    body = html.split("<body", 1)[1].split(">", 1)[1]
    return unescape(re.sub(r"<[^>]+>", "", body)).strip()


def test_the_lead_preheader_and_subject_on_the_wire(smtp_app: Flask, smtp_server: SMTPSink) -> None:
    _five_articles(smtp_app)
    week = _coming(smtp_app)
    mail = _send(smtp_app, smtp_server, week)

    # Subject: the lead's title cut on a word, and the count; 70 characters at most; no
    # sender name (it is in From); encoded on the wire (RFC 2047), ASCII only.
    head = mail.data.split(b"\r\n\r\n", 1)[0]
    head.decode("ascii")
    raw_subject = re.search(rb"^Subject: (.*(?:\r\n[ \t].*)*)", head, re.M)
    assert raw_subject and b"=?utf-8?" in raw_subject.group(1).lower()
    subject = str(mail.message["Subject"])
    assert len(subject) <= 70, subject
    assert subject.startswith("«\u00a0Budget 2027 : ce que le gouvernement prévoit…")
    assert subject.endswith("…\u00a0» et 4 autres articles"), subject
    assert "L'Hebdo" not in subject

    html, text = mail.part("html"), mail.part("plain")
    # The preheader is the first thing in the body, hidden, ≤ 110 characters, padded.
    body = html.split("<body", 1)[1].split(">", 1)[1].lstrip()
    assert body.startswith('<div class="preheader" style="display: none;')
    preview = _body_start(html)
    headline = preview.split("\u200c", 1)[0]
    assert headline.startswith("Budget 2027") and len(headline) <= 110
    assert "\u200c\u00a0\u200c\u00a0" in preview[:200]
    assert "Voir la version en ligne" not in preview[: len(headline) + 150]

    # Every image: width, height and the title as alt text, inside its title's link.
    tags = _Tags()
    tags.feed(html)
    assert tags.images, "the lead has its picture"
    for image in tags.images:
        assert image.get("width") and image.get("height") and image.get("alt"), image
    assert [i["alt"] for i in tags.images] == [LONG_LEAD]  # the others stay compact
    assert all(name for _href, name in tags.links), tags.links
    # One quiet "Lire" per article, no red buttons; the lead first.
    reads = [name for _href, name in tags.links if name == "Lire"]
    assert len(reads) == 5 and "Lire l’article" not in html
    assert html.index(LONG_LEAD) < html.index("Brève numéro 2")
    # Forwarded? Subscribe; preferences next to the unsubscribe link.
    hrefs = dict((name, href) for href, name in tags.links)
    assert hrefs["Abonnez-vous"].endswith("/subscribe")
    assert "/preferences/" in hrefs["Gérer mes préférences"]
    assert "/unsubscribe/" in hrefs["Se désabonner en un clic"]
    assert "Transféré par un ami\u00a0?" in unescape(html)
    # The layout holds between 600 and 620 px: the picture never narrower than the text.
    assert ".lead-image { max-width: 100% !important; }" in html
    # The text part: the lead first, the same links.
    assert text.index(LONG_LEAD[:40]) < text.index("Brève numéro 2")
    assert "Gérer mes préférences\u00a0:" in text and "/preferences/" in text


def test_a_subject_template_with_its_placeholders(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    app = make_app({**smtp_env, "HEBDO_SUBJECT_TEMPLATE": "{site} · {lead} (+{others})"})
    _five_articles(app)
    subject = str(_send(app, smtp_server, _coming(app)).message["Subject"])
    assert subject.startswith("L'Hebdo · Budget 2027") and subject.endswith("… (+4)")
    assert len(subject) <= 70


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("HEBDO_SUBJECT_TEMPLATE", "{lead} — {author}", "unknown placeholder {author}"),
        ("HEBDO_SUBJECT_TEMPLATE", "{lead", "not a valid template"),
        ("HEBDO_BRAND_COLOR", "red", "must be a colour like #b3122e"),
        ("HEBDO_LOGO_URL", "http://cdn.example.fr/logo.png", "must be an https:// URL"),
    ],
)
def test_bad_mail_settings_are_one_line_at_load(
    env: dict[str, str], name: str, value: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({**env, name: value})
    message = str(refused.value)
    assert name in message and complaint in message and "\n" not in message


def test_brand_colour_logo_and_the_confirmation_mail_of_the_same_family(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    # A light brand colour gets black text; headings fall back to near-black on white.
    light = brand.palette("#ffd400")
    assert light["on_brand"] == "#000000" and light["accent"] == "#222222"
    assert brand.contrast(light["brand"], light["on_brand"]) >= 4.5
    dark = brand.palette("#1a3c8f")
    assert dark["on_brand"] == "#ffffff" and dark["accent"] == "#1a3c8f"
    app = make_app(
        {
            **smtp_env,
            "HEBDO_BRAND_COLOR": "#FFD400",
            "HEBDO_LOGO_URL": "https://cdn.example.fr/logo.png",
            "HEBDO_LOGO_WIDTH": "180",
            "HEBDO_LOGO_HEIGHT": "48",
        }
    )
    _five_articles(app)
    html = _send(app, smtp_server, _coming(app)).part("html")
    logo = 'src="https://cdn.example.fr/logo.png" width="180" height="48"'
    assert logo in html and 'alt="L\'Hebdo"' in html
    assert re.search(r'class="masthead"[^>]*background-color: ?#ffd400', html)
    # The confirmation mail: same masthead and colours, narrow-screen padding, dark palette.
    response = app.test_client().post(
        "/api/v1/subscriptions", json={"email": "nouvelle@exemple.fr"}
    )
    assert response.status_code in (200, 202)
    sweep(app)
    confirm = smtp_server.wait_for(2)[1]
    assert confirm.rcpt_tos == ["nouvelle@exemple.fr"]
    html = confirm.part("html")
    assert logo in html and "background-color:#ffd400" in html and "color:#000000" in html
    assert "@media only screen and (max-width: 620px)" in html
    assert "prefers-color-scheme: dark" in html


def test_the_intro_over_the_api_sanitised_in_both_parts_and_the_archive(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    _five_articles(smtp_app)
    week = _coming(smtp_app)
    client, headers = smtp_app.test_client(), api_token(smtp_app, "editor")
    intro = (
        "Bonjour à toutes et à tous ! Cette semaine, le budget.\n\n"
        '<script>alert("x")</script>Lisez [notre dossier](https://lhebdo.example/dossier) '
        'et pas [ceci](javascript:alert(1)) ni <a href="javascript:alert(2)">cela</a>.'
    )
    response = client.patch(f"/api/v1/admin/issues/{week}", headers=headers, json={"intro": intro})
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["week"] == week and "<script" not in answer["intro"]
    assert answer["needs_approval"] is False
    assert client.get(f"/api/v1/admin/issues/{week}", headers=headers).get_json()["intro"]

    mail = _send(smtp_app, smtp_server, week)
    html, text = mail.part("html"), mail.part("plain")
    for part in (html, text):
        assert "Bonjour à toutes et à tous" in part
        assert "<script" not in part and 'alert("x")' not in part
    assert "javascript:" not in html and "javascript:" not in text and "alert(" not in text
    assert '<a href="https://lhebdo.example/dossier"' in html and "notre dossier</a>" in html
    assert "notre dossier (https://lhebdo.example/dossier)" in text
    # The intro sits at the top: before the lead, in both parts.
    assert html.index("Bonjour à toutes") < html.index(LONG_LEAD)
    assert text.index("Bonjour à toutes") < text.index(LONG_LEAD[:30])
    # The preheader is now the intro's opening sentences, as many as fit in 110 characters.
    preheader = _body_start(html).split("\u200c", 1)[0]
    assert preheader == "Bonjour à toutes et à tous ! Cette semaine, le budget."

    # The archive page (the web version) opens with it too, sanitised alike.
    with smtp_app.app_context():
        issue = get_issue(week)
        assert issue is not None
        delivery.start_send(smtp_app.config["SETTINGS"], issue.id, _now())
    archive = client.get(f"/archive/{week}").get_data(as_text=True)
    assert "Bonjour à toutes et à tous" in archive and "<script" not in archive
    assert archive.index("Bonjour à toutes") < archive.index(LONG_LEAD)
    assert '<a href="https://lhebdo.example/dossier"' in archive

    # Once it went out, the note stays as readers got it.
    late = client.patch(f"/api/v1/admin/issues/{week}", headers=headers, json={"intro": "Non."})
    assert late.status_code == 409

    # Over 1,000 characters: a clear 422, nothing changed.
    too_long = client.patch(
        f"/api/v1/admin/issues/{week}", headers=headers, json={"intro": "x" * 1001}
    )
    assert too_long.status_code == 422
    assert "intro" in too_long.get_json()["message"] and "1000" in too_long.get_json()["message"]
    with smtp_app.app_context():
        issue = get_issue(week)
        assert issue is not None and issue.intro and issue.intro.startswith("Bonjour")
        events = db.session.execute(
            select(AuditEvent.action).where(AuditEvent.subject == f"issue:{week}")
        ).scalars()
        assert list(events) == ["issue.intro"]


def test_a_default_intro_per_locale_and_none_without_it(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    app = make_app(
        {
            **env,
            "HEBDO_DEFAULT_INTRO_FR": "Bonne lecture, la rédaction.",
            "HEBDO_DEFAULT_INTRO_EN": "Happy reading, the newsroom.",
        }
    )
    _five_articles(app)
    week = _coming(app)
    with app.app_context():
        issue = get_issue(week)
        assert issue is not None
        settings = app.config["SETTINGS"]
        assert "Bonne lecture, la rédaction." in render_issue(settings, issue, "fr").text
        assert "Happy reading, the newsroom." in render_issue(settings, issue, "en").html


def test_changing_the_intro_needs_approval_again_in_review_mode(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    app = make_app({**env, "HEBDO_REVIEW": "1"})
    _five_articles(app)
    week = _coming(app)
    client, headers = app.test_client(), api_token(app, "editor")
    assert client.post(f"/api/v1/admin/issues/{week}/approve", headers=headers).status_code == 200
    changed = client.patch(
        f"/api/v1/admin/issues/{week}", headers=headers, json={"intro": "Un mot."}
    ).get_json()
    assert changed["status"] == "draft" and changed["needs_approval"] is True
    with app.app_context():
        issue = get_issue(week)
        assert issue is not None and issue.approved_at is None
    # Saving the same note again changes nothing: still a draft, no new approval needed.
    assert client.post(f"/api/v1/admin/issues/{week}/approve", headers=headers).status_code == 200
    again = client.patch(
        f"/api/v1/admin/issues/{week}", headers=headers, json={"intro": "Un mot."}
    ).get_json()
    assert again["status"] == "scheduled" and again["needs_approval"] is False


def test_the_editor_chooses_the_lead_on_the_articles_page_and_over_the_api(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    ids = _five_articles(smtp_app)
    week = _coming(smtp_app)
    create_admin(smtp_app, "eve", "editor", "eve@exemple.fr")
    editor = Admin(smtp_app.test_client())
    assert editor.login("eve").status_code == 302
    page = editor.get("/admin/articles").get_data(as_text=True)
    assert "Mettre «\u00a0Brève numéro 4\u00a0» à la une" in page
    done = editor.post(f"/admin/articles/{ids[3]}/lead", follow_redirects=True)
    assert "Cet article ouvre désormais le prochain numéro." in done.get_data(as_text=True)
    with smtp_app.app_context():
        issue = get_issue(week)
        assert issue is not None
        assert issue_articles(issue.id)[0].article_id == ids[3]
    mail = _send(smtp_app, smtp_server, week)
    assert str(mail.message["Subject"]) == "«\u00a0Brève numéro 4\u00a0» et 4 autres articles"
    tags = _Tags()
    tags.feed(mail.part("html"))
    assert [i["alt"] for i in tags.images] == ["Brève numéro 4"]

    client, headers = smtp_app.test_client(), api_token(smtp_app, "editor")
    lead = client.patch(f"/api/v1/admin/issues/{week}", headers=headers, json={"lead": ids[1]})
    assert lead.status_code == 200
    with smtp_app.app_context():
        issue = get_issue(week)
        assert issue is not None and issue_articles(issue.id)[0].article_id == ids[1]
        actions = db.session.execute(
            select(AuditEvent.action).where(AuditEvent.action == "article.lead")
        ).scalars()
        assert len(list(actions)) == 2
    unknown = client.patch(f"/api/v1/admin/issues/{week}", headers=headers, json={"lead": 999})
    assert unknown.status_code == 422


def test_the_admin_issue_page_writes_the_intro_with_a_csrf_token(app: Flask, admin: Admin) -> None:
    _five_articles(app)
    week = _coming(app)
    page = admin.get(f"/admin/issues/{week}").get_data(as_text=True)
    assert '<textarea id="intro-text" name="intro"' in page and 'maxlength="1000"' in page
    refused = app.test_client().post(f"/admin/issues/{week}/intro", data={"intro": "x"})
    assert refused.status_code in (302, 400, 403)
    saved = admin.post(
        f"/admin/issues/{week}/intro", {"intro": "Le mot de la semaine."}, follow_redirects=True
    )
    html = saved.get_data(as_text=True)
    assert "Mot de la rédaction enregistré." in html
    assert "Le mot de la semaine.</textarea>" in html
    preview = admin.get(f"/admin/issues/{week}/preview.html").get_data(as_text=True)
    assert "Le mot de la semaine." in preview
    too_long = admin.post(
        f"/admin/issues/{week}/intro", {"intro": "y" * 1200}, follow_redirects=True
    )
    assert "Le mot fait 1200\u00a0caractères" in too_long.get_data(
        as_text=True
    ) or "Le mot fait 1200 caractères" in too_long.get_data(as_text=True)
