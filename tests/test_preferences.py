"""The reader's preference page and its JSON twin: choices saved and audited, nothing
changed by a GET, forged links and foreign posts refused, a pause that ends by itself, a
change of address confirmed by mail to the new address (through the loopback SMTP server)
and never telling whether an address subscribes; the unsubscribe page offers the pause
first, the confirmed page links here, and the export carries the choices.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from service.extensions import db
from service.models import AuditEvent, Subscriber
from service.subscribers.lifecycle import Consent, subscribe
from service.subscribers.preferences import subscriber_for_preferences, update_preferences
from service.subscribers.suppressions import suppress
from service.subscribers.tokens import confirm_token, preferences_token_for, unsubscribe_token
from tests.support.admin import Admin
from tests.support.data import add_article, add_readers
from tests.support.settings import BASE_URL
from tests.support.smtp import SMTPSink

SAME_SITE = {"Origin": BASE_URL}


def _reader(app: Flask, email: str = "lecteur@exemple.fr", locale: str = "fr") -> tuple[int, str]:
    """One active reader and their preference token."""
    subscriber_id = add_readers(app, [email], locale=locale)[email]
    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        token = preferences_token_for(app.config["SETTINGS"], sub.id, sub.created_at)
    return subscriber_id, token


def _articles(app: Flask) -> None:
    recent = datetime.now(UTC) - timedelta(days=3)
    add_article(app, 1, recent, category="Culture")
    add_article(app, 2, recent, category="Culture")
    add_article(app, 3, recent, category="Sport")
    # Older than four weeks: not offered.
    add_article(app, 4, recent - timedelta(weeks=6), category="Jardinage")


def _row(app: Flask, subscriber_id: int) -> Subscriber:
    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        db.session.expunge(sub)
        return sub


def _events(app: Flask, subscriber_id: int) -> list[tuple[str, object]]:
    with app.app_context():
        return [
            (e.action, e.detail)
            for e in db.session.execute(
                select(AuditEvent)
                .where(AuditEvent.subscriber_id == subscriber_id)
                .order_by(AuditEvent.id)
            ).scalars()
        ]


# ---------------------------------------------------------------- the page


def test_the_page_offers_the_recent_categories_with_their_counts(
    app: Flask, client: FlaskClient
) -> None:
    _articles(app)
    _, token = _reader(app)
    page = client.get(f"/preferences/{token}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Vos préférences" in html
    assert re.search(r"Culture <span[^>]*>\(2 articles en 4 semaines\)", html)
    assert re.search(r"Sport <span[^>]*>\(1 article en 4 semaines\)", html)
    assert "Jardinage" not in html
    assert "<legend>Thèmes</legend>" in html
    assert page.headers["Referrer-Policy"] == "same-origin"


def test_choosing_categories_saves_them_audited_once_and_says_so(
    app: Flask, client: FlaskClient
) -> None:
    _articles(app)
    subscriber_id, token = _reader(app)
    form = {"action": "categories", "category": ["Sport"]}
    posted = client.post(f"/preferences/{token}", data=form, headers=SAME_SITE)
    assert posted.status_code == 303
    assert posted.headers["Location"] == f"/preferences/{token}?done=categories"
    assert _row(app, subscriber_id).categories == ["Sport"]
    shown = client.get(posted.headers["Location"]).get_data(as_text=True)
    assert "Votre choix de thèmes est enregistré." in shown
    # The same choice again changes nothing and is not audited again.
    client.post(f"/preferences/{token}", data=form, headers=SAME_SITE)
    assert _events(app, subscriber_id) == [
        ("preferences", {"field": "categories", "before": None, "after": ["Sport"]})
    ]
    # Every category ticked: back to every category (None), so new ones come too.
    every = {"action": "categories", "category": ["Sport", "Culture"]}
    client.post(f"/preferences/{token}", data=every, headers=SAME_SITE)
    assert _row(app, subscriber_id).categories is None


def test_a_get_changes_nothing_and_a_forged_link_is_refused(
    app: Flask, client: FlaskClient
) -> None:
    subscriber_id, token = _reader(app)
    before = _row(app, subscriber_id)
    for path in (f"/preferences/{token}?done=pause", f"/api/v1/preferences/{token}"):
        assert client.get(path).status_code == 200
    after = _row(app, subscriber_id)
    assert (after.categories, after.paused_until, after.locale) == (
        before.categories,
        before.paused_until,
        before.locale,
    )
    assert _events(app, subscriber_id) == []
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert client.get(f"/preferences/{forged}").status_code == 400
    assert client.post(f"/preferences/{forged}", data={"action": "resume"}).status_code == 400
    # A token of another purpose does not open the page.
    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        other = unsubscribe_token(app.config["SETTINGS"], sub)
    assert client.get(f"/preferences/{other}").status_code == 400
    assert client.get(f"/api/v1/preferences/{other}").status_code == 404


def test_a_post_from_another_site_changes_nothing(app: Flask, client: FlaskClient) -> None:
    subscriber_id, token = _reader(app)
    for origin in ("https://evil.example", "null"):
        refused = client.post(
            f"/preferences/{token}",
            data={"action": "pause", "weeks": "3"},
            headers={"Origin": origin},
        )
        assert refused.status_code == 403
    assert _row(app, subscriber_id).paused_until is None
    assert _events(app, subscriber_id) == []


def test_pause_says_until_when_and_resume_now_clears_it(app: Flask, client: FlaskClient) -> None:
    subscriber_id, token = _reader(app)
    posted = client.post(
        f"/preferences/{token}", data={"action": "pause", "weeks": "3"}, headers=SAME_SITE
    )
    until = datetime.now(UTC).date() + timedelta(weeks=3)
    assert _row(app, subscriber_id).paused_until == until
    shown = client.get(posted.headers["Location"]).get_data(as_text=True)
    assert f"suspendue jusqu’au {until.day} " in shown
    assert "Reprendre maintenant" in shown
    # Nine weeks is not a pause on offer, nor is what is not a number.
    for weeks in ("9", "0", "²", "-1", ""):
        refused = client.post(
            f"/preferences/{token}", data={"action": "pause", "weeks": weeks}, headers=SAME_SITE
        )
        assert refused.status_code == 422, weeks
    client.post(f"/preferences/{token}", data={"action": "resume"}, headers=SAME_SITE)
    assert _row(app, subscriber_id).paused_until is None
    assert [action for action, _detail in _events(app, subscriber_id)] == ["pause", "resume"]
    assert _events(app, subscriber_id)[0][1] == {"until": until.isoformat()}


def test_a_pause_in_the_past_is_no_pause(app: Flask, client: FlaskClient) -> None:
    """Readers resume by themselves: nothing needs to clear an old date."""
    subscriber_id, token = _reader(app)
    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        sub.paused_until = date(2020, 1, 6)
        db.session.commit()
    assert client.get(f"/api/v1/preferences/{token}").json["paused_until"] is None
    page = client.get(f"/preferences/{token}").get_data(as_text=True)
    assert "Reprendre maintenant" not in page


def test_switching_language_speaks_it_at_once(app: Flask, client: FlaskClient) -> None:
    subscriber_id, token = _reader(app)
    posted = client.post(
        f"/preferences/{token}", data={"action": "locale", "locale": "en"}, headers=SAME_SITE
    )
    shown = client.get(posted.headers["Location"]).get_data(as_text=True)
    assert '<html lang="en">' in shown
    assert "Your language is saved." in shown
    assert _row(app, subscriber_id).locale == "en"
    assert _events(app, subscriber_id) == [
        ("preferences", {"field": "locale", "before": "fr", "after": "en"})
    ]


# ---------------------------------------------------------------- JSON


def test_the_api_reads_and_changes_choices(app: Flask, client: FlaskClient) -> None:
    _articles(app)
    subscriber_id, token = _reader(app)
    got = client.get(f"/api/v1/preferences/{token}")
    assert got.status_code == 200
    assert got.json == {
        "categories": [],
        "locale": "fr",
        "paused_until": None,
        "available": [{"name": "Culture", "articles": 2}, {"name": "Sport", "articles": 1}],
    }
    until = (datetime.now(UTC).date() + timedelta(weeks=8)).isoformat()
    put = client.put(
        f"/api/v1/preferences/{token}",
        json={"categories": ["Culture"], "locale": "en", "paused_until": until},
    )
    assert put.status_code == 200
    assert put.json["categories"] == ["Culture"]
    assert put.json["locale"] == "en"
    assert put.json["paused_until"] == until
    assert [a for a, _d in _events(app, subscriber_id)] == ["preferences", "preferences", "pause"]
    # A field left out stays; null resumes; an empty list is every category.
    put = client.put(f"/api/v1/preferences/{token}", json={"paused_until": None, "categories": []})
    assert put.json == {**got.json, "locale": "en"}


def test_the_api_refuses_what_cannot_be_chosen(app: Flask, client: FlaskClient) -> None:
    _articles(app)
    subscriber_id, token = _reader(app)
    today = datetime.now(UTC).date()
    for body in (
        {"categories": ["Jardinage"]},
        {"locale": "de"},
        {"paused_until": (today + timedelta(weeks=8, days=1)).isoformat()},
        {"paused_until": (today - timedelta(days=1)).isoformat()},
        {"paused_until": "bientôt"},
        {"colour": "red"},
    ):
        refused = client.put(f"/api/v1/preferences/{token}", json=body)
        assert refused.status_code == 422, body
        assert refused.json["error"] == "invalid_field"
    assert client.put(f"/api/v1/preferences/{token}", data="x").status_code == 415
    assert client.put("/api/v1/preferences/pas-un-jeton", json={}).status_code == 404
    assert _events(app, subscriber_id) == []


def test_the_openapi_document_describes_the_preferences(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").json
    path = doc["paths"]["/api/v1/preferences/{token}"]
    assert set(path) >= {"get", "put"}
    schema = doc["components"]["schemas"]["PreferencesIn"]
    assert set(schema["properties"]) == {"categories", "locale", "paused_until"}


def test_update_preferences_is_a_function_of_ids(app: Flask) -> None:
    subscriber_id, _token = _reader(app)
    now = datetime.now(UTC)
    with app.app_context():
        assert update_preferences(subscriber_id, now=now, locale="en") == ["locale"]
        assert update_preferences(subscriber_id, now=now, locale="en") == []


# ---------------------------------------------------------------- unsubscribe and confirm


def test_the_unsubscribe_page_offers_a_pause_first(app: Flask, client: FlaskClient) -> None:
    subscriber_id, _token = _reader(app)
    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        token = unsubscribe_token(app.config["SETTINGS"], sub)
    html = client.get(f"/unsubscribe/{token}").get_data(as_text=True)
    pause = html.index("Plutôt faire une pause ?")
    assert pause < html.index("Me désabonner")
    action = re.search(r'<form method="post" action="(/preferences/[^"]+)"', html)
    assert action is not None
    client.post(action.group(1), data={"action": "pause", "weeks": "4"}, headers=SAME_SITE)
    row = _row(app, subscriber_id)
    assert row.status == "active"
    assert row.paused_until == datetime.now(UTC).date() + timedelta(weeks=4)


def test_the_confirmed_page_links_to_the_preferences(app: Flask, client: FlaskClient) -> None:
    settings = app.config["SETTINGS"]
    with app.app_context():
        consent = Consent("https://news.example.fr/a", "v1", None, None)
        result = subscribe(
            "nouveau@exemple.fr",
            locale="fr",
            consent=consent,
            now=datetime.now(UTC),
            settings=settings,
        )
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None
        token = confirm_token(settings, sub)
    html = client.post(f"/confirm/{token}").get_data(as_text=True)
    assert re.search(r"<title>Inscription confirmée · L(&#39;|')Hebdo</title>", html)
    # The link is signed when the page is drawn (its timestamp may be a second later than
    # one signed here): it must name this reader, whatever second it carries.
    links = re.findall(r'<a href="/preferences/([^"]+)">', html)
    assert len(links) == 1
    with app.app_context():
        assert subscriber_for_preferences(settings, links[0]).id == result.subscriber_id
    assert client.get(f"/preferences/{links[0]}").status_code == 200


# ---------------------------------------------------------------- change of address


def _ask_address(client: FlaskClient, token: str, email: str) -> str:
    posted = client.post(
        f"/preferences/{token}", data={"action": "address", "email": email}, headers=SAME_SITE
    )
    assert posted.status_code == 303
    return client.get(posted.headers["Location"]).get_data(as_text=True)


def test_a_new_address_takes_over_only_once_its_link_is_followed(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    app, client = smtp_app, smtp_client
    subscriber_id, token = _reader(app)
    shown = _ask_address(client, token, "Nouvelle@Exemple.fr")
    assert "un lien pour la confirmer est en route" in shown
    (mail,) = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["nouvelle@exemple.fr"]
    text = mail.part("plain")
    link = re.search(re.escape(BASE_URL) + r"(/preferences/address/\S+)", text)
    assert link is not None, text
    # Not yet: the old address stays until the link is followed, and a GET does nothing.
    assert _row(app, subscriber_id).email == "lecteur@exemple.fr"
    page = client.get(link.group(1))
    assert page.status_code == 200
    assert "nouvelle@exemple.fr" in page.get_data(as_text=True)
    assert _row(app, subscriber_id).email == "lecteur@exemple.fr"
    done = client.post(link.group(1))
    assert done.status_code == 200
    assert _row(app, subscriber_id).email == "nouvelle@exemple.fr"
    assert [a for a, _d in _events(app, subscriber_id)] == [
        "address_change_requested",
        "address_change",
    ]
    # The preference link still works: it names the row, not the address.
    assert client.get(f"/preferences/{token}").status_code == 200
    # A forged link changes nothing.
    assert client.post(link.group(1)[:-3] + "abc").status_code == 400


def _signed_when(page: str) -> str:
    """The page with its links' timestamps and signatures blanked (each answer signs its
    links when drawn, and two answers may fall in different seconds); the payload, the
    reader a link names, stays compared."""
    return re.sub(r"(/(?:unsubscribe|preferences)/[\w-]+)\.[\w-]+\.[\w-]+", r"\1.…", page)


def test_a_taken_or_suppressed_address_gets_the_same_answer_and_no_mail(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    app, client = smtp_app, smtp_client
    _reader(app, "autre@exemple.fr")
    subscriber_id, token = _reader(app)
    with app.app_context():
        suppress(app.config["SETTINGS"], "banni@exemple.fr", "complaint", datetime.now(UTC))
        db.session.commit()
    answers = {
        email: _signed_when(re.sub(r"\s+", " ", _ask_address(client, token, email)))
        for email in ("autre@exemple.fr", "banni@exemple.fr", "libre@exemple.fr")
    }
    assert len(set(answers.values())) == 1
    (mail,) = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["libre@exemple.fr"]
    assert _row(app, subscriber_id).email == "lecteur@exemple.fr"
    # A malformed address is told, as on the sign-up form.
    bad = client.post(
        f"/preferences/{token}",
        data={"action": "address", "email": "pas une adresse"},
        headers=SAME_SITE,
    )
    assert bad.status_code == 422


def test_a_relay_that_refuses_leaves_the_address_and_says_to_try_later(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    subscriber_id, token = _reader(smtp_app)
    smtp_server.mail_reply = "451 4.3.0 Try again later"
    refused = smtp_client.post(
        f"/preferences/{token}",
        data={"action": "address", "email": "libre@exemple.fr"},
        headers=SAME_SITE,
    )
    assert refused.status_code == 503
    assert "Le lien n’a pas pu être envoyé" in refused.get_data(as_text=True)
    assert _row(smtp_app, subscriber_id).email == "lecteur@exemple.fr"


# ---------------------------------------------------------------- export


def test_the_export_carries_the_choices(app: Flask, admin: Admin) -> None:
    _articles(app)
    subscriber_id, _token = _reader(app)
    until = datetime.now(UTC).date() + timedelta(weeks=2)
    with app.app_context():
        update_preferences(
            subscriber_id, now=datetime.now(UTC), categories=["Sport"], paused_until=until
        )
    exported = admin.get("/admin/subscribers.csv")
    lines = exported.get_data(as_text=True).splitlines()
    assert lines[0].endswith('"categories","paused_until"')
    assert lines[1].endswith(f'"Sport","{until.isoformat()}"')
