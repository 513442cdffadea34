"""POST /api/v1/subscriptions: what bad input gets, and that answers reveal nothing."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from service.extensions import db
from service.models import Status, Subscriber
from tests.support.admin import api_token

URL = "/api/v1/subscriptions"


def count(app: Flask) -> int:
    with app.app_context():
        return db.session.execute(select(func.count(Subscriber.id))).scalar_one()


def post_raw(client: FlaskClient, body: bytes, content_type: str, **headers: str) -> Any:
    return client.post(URL, data=body, content_type=content_type, headers=headers)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"email": ""}', "application/json", 422, "empty"),
        (b'{"email": "   "}', "application/json", 422, "empty"),
        (b"{}", "application/json", 422, "type"),
        (b'{"email": null}', "application/json", 422, "type"),
        (b'{"email": 42}', "application/json", 422, "type"),
        (b'{"email": ["a@b.fr"]}', "application/json", 422, "type"),
        (b'{"email": {"x": 1}}', "application/json", 422, "type"),
        (
            ('{"email": "' + "a" * 250 + '@exemple.fr"}').encode(),
            "application/json",
            422,
            "too_long",
        ),
        (('{"email": "a@' + "b" * 64 + '.fr"}').encode(), "application/json", 422, "domain"),
        (
            b'{"email": "victim@exemple.fr\\r\\nBcc: all@exemple.fr"}',
            "application/json",
            422,
            "control",
        ),
        (
            b'{"email": "victim@exemple.fr\\n"}',
            "application/json",
            200,
            None,
        ),  # trailing whitespace trimmed
        (b'{"email": "sans-arobase.exemple.fr"}', "application/json", 422, "no_at"),
        (b'{"email": "a@b@exemple.fr"}', "application/json", 422, "many_at"),
        (b'{"email": "\\"john doe\\"@exemple.fr"}', "application/json", 422, "quoted"),
        (b'{"email": "user@[192.0.2.1]"}', "application/json", 422, "ip_literal"),
        (b'{"email": "user@[IPv6:2001:db8::1]"}', "application/json", 422, "ip_literal"),
        (b'{"email": "user@localhost"}', "application/json", 422, "domain"),
        (b'{"email": "user..name@exemple.fr"}', "application/json", 422, "local"),
        (b'{"email": "user@exemple"}', "application/json", 422, "domain"),
        (b'{"email": "Jean <jean@exemple.fr>"}', "application/json", 422, "local"),
        (
            "email=caf\xe9@exemple.fr".encode("latin-1"),
            "application/x-www-form-urlencoded",
            422,
            None,
        ),
        (b'{"email": "caf\xe9@exemple.fr"}', "application/json", 400, None),  # not UTF-8
        (b'{"email": ', "application/json", 400, None),
        (b'["a@exemple.fr"]', "application/json", 400, None),
        (b'"a@exemple.fr"', "application/json", 400, None),
        (b"email=a@exemple.fr", "text/plain", 415, None),
        (b'{"email": "a@exemple.fr", "source": 12}', "application/json", 422, None),
        (b'{"email": "a@exemple.fr", "consent": 12}', "application/json", 422, None),
        (
            ('{"email": "a@exemple.fr", "source": "https://x.fr/' + "a" * 3000 + '"}').encode(),
            "application/json",
            422,
            None,
        ),
    ],
)
def test_bad_input_gets_a_clear_error_and_stores_nothing(
    app: Flask, client: FlaskClient, body: bytes, content_type: str, status: int, code: str | None
) -> None:
    response = post_raw(client, body, content_type)
    if status == 200:
        assert response.status_code == 202
        assert count(app) == 1
        return
    assert response.status_code == status, response.get_data(as_text=True)
    assert count(app) == 0
    if content_type == "application/json" or status in (400, 415):
        payload = response.get_json()
        assert payload["message"]
        if code:
            assert payload["code"] == code
    else:
        assert "Adresse refusée" in response.get_data(as_text=True)


def test_a_one_megabyte_body_is_refused_with_413(app: Flask, client: FlaskClient) -> None:
    big = b'{"email": "a@exemple.fr", "pad": "' + b"x" * 1_000_000 + b'"}'
    response = post_raw(client, big, "application/json")
    assert response.status_code == 413
    assert response.get_json()["error"] == "request_entity_too_large"
    form = post_raw(
        client, b"email=a%40exemple.fr&pad=" + b"x" * 1_000_000, "application/x-www-form-urlencoded"
    )
    assert form.status_code == 413
    assert count(app) == 0


def test_validation_messages_are_localised(client: FlaskClient) -> None:
    fr = client.post(URL, json={"email": "pas-une-adresse"})
    en = client.post(URL, json={"email": "pas-une-adresse", "locale": "en"})
    browser_en = client.post(
        URL, json={"email": "pas-une-adresse"}, headers={"Accept-Language": "en-GB,en;q=0.8"}
    )
    assert fr.get_json()["message"] == "Il manque le caractère « @ » dans l’adresse e-mail."
    assert en.get_json()["message"] == "The email address is missing an “@”."
    assert browser_en.get_json()["message"] == en.get_json()["message"]


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("josé@exemple.fr", "josé@exemple.fr"),
        ("user@exämple.fr", "user@exämple.fr"),
        ("User.Name+Tag@Example.COM", "user.name+tag@example.com"),
        ("\t lecteur@exemple.fr \u00a0", "lecteur@exemple.fr"),
        ("ÉLODIE@EXEMPLE.FR", "élodie@exemple.fr"),
    ],
)
def test_addresses_are_stored_normalised(
    app: Flask, client: FlaskClient, raw: str, stored: str
) -> None:
    assert client.post(URL, json={"email": raw}).status_code == 202
    with app.app_context():
        assert db.session.execute(select(Subscriber.email)).scalar_one() == stored


def test_a_typo_of_a_major_domain_is_accepted_with_a_suggestion(
    app: Flask, client: FlaskClient
) -> None:
    response = client.post(URL, json={"email": "marie@gmial.com"})
    assert response.status_code == 202
    assert response.get_json()["suggestion"] == "marie@gmail.com"
    assert response.get_json()["suggestion_message"] == "Vouliez-vous dire marie@gmail.com ?"
    assert "suggestion" not in client.post(URL, json={"email": "marie@gmail.com"}).get_json()
    assert "suggestion" not in client.post(URL, json={"email": "marie@lemonde.fr"}).get_json()
    assert (
        client.post(URL, json={"email": "paul@hotmial.fr"}).get_json()["suggestion"]
        == "paul@hotmail.fr"
    )


def test_answers_never_reveal_whether_an_address_is_known(app: Flask, client: FlaskClient) -> None:
    """New, pending, active and unsubscribed addresses get byte-identical answers."""

    def answer(email: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        response = client.post(URL, json={"email": email})
        # Date and the request id differ per request whatever the address.
        headers = sorted(
            (k, v) for k, v in response.headers.items() if k not in ("Date", "X-Request-ID")
        )
        return response.status_code, response.get_data(), headers

    new = answer("nouveau@exemple.fr")
    pending = answer("nouveau@exemple.fr")
    client.post(URL, json={"email": "actif@exemple.fr"})
    client.post(URL, json={"email": "parti@exemple.fr"})
    with app.app_context():
        for email, status in (
            ("actif@exemple.fr", Status.ACTIVE),
            ("parti@exemple.fr", Status.UNSUBSCRIBED),
        ):
            sub = db.session.execute(
                select(Subscriber).where(Subscriber.email == email)
            ).scalar_one()
            sub.status = status
        db.session.commit()
    active = answer("actif@exemple.fr")
    unsubscribed = answer("parti@exemple.fr")
    assert new == pending
    # Only the address differs between these bodies, and it is not in them.
    assert new[1] == active[1] == unsubscribed[1]
    assert new[0] == active[0] == unsubscribed[0] == 202
    assert new[2] == active[2] == unsubscribed[2]


def test_form_posts_are_redirected_to_the_thank_you_page(app: Flask, client: FlaskClient) -> None:
    response = client.post(URL, data={"email": "forme@exemple.fr", "locale": "en"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/merci?lang=en"
    page = client.get(response.headers["Location"])
    assert page.status_code == 200 and "One more step" in page.text
    typo = client.post(URL, data={"email": "forme@gmial.com"})
    assert typo.headers["Location"] == "/merci?lang=fr&domain=gmail.com"
    assert "@gmail.com" in client.get(typo.headers["Location"]).text
    # The address itself never travels in the redirect.
    assert "forme" not in typo.headers["Location"]
    # A forged domain parameter is not echoed.
    assert "<script>" not in client.get("/merci?domain=<script>").text


def test_consent_is_recorded_from_a_form_post(app: Flask, client: FlaskClient) -> None:
    client.post(
        URL,
        data={
            "email": "preuve@exemple.fr",
            "consent": "form-2026-11",
            "source": "https://news.example.fr/a/1",
        },
        headers={"User-Agent": "Firefox"},
        environ_base={"REMOTE_ADDR": "192.0.2.44"},
    )
    client.post(URL, json={"email": "js@exemple.fr", "source": "javascript:alert(1)"})
    with app.app_context():
        preuve = db.session.execute(
            select(Subscriber).where(Subscriber.email == "preuve@exemple.fr")
        ).scalar_one()
        js = db.session.execute(
            select(Subscriber).where(Subscriber.email == "js@exemple.fr")
        ).scalar_one()
    assert (
        preuve.consent_text_version,
        preuve.consent_source,
        preuve.consent_ip,
        preuve.consent_user_agent,
    ) == (
        "form-2026-11",
        "https://news.example.fr/a/1",
        "192.0.2.44",
        "Firefox",
    )
    assert preuve.consent_at is not None
    assert js.consent_source is None and js.consent_text_version == "form-2026-11"


def test_only_the_configured_consent_version_is_recorded(app: Flask, client: FlaskClient) -> None:
    """A post naming a consent text this service never showed (an old page's, or anything
    typed in, which went into exports as it was) is refused, and nothing is stored."""
    stale = client.post(URL, json={"email": "vieux@exemple.fr", "consent": "cgu-2026-10"})
    assert stale.status_code == 422 and stale.json["error"] == "unknown_consent_version"
    assert stale.json["message"] == (
        "Ce formulaire n’est plus à jour : rechargez la page, puis envoyez-le à nouveau."
    )
    forged = client.post(URL, data={"email": "vieux@exemple.fr", "consent": "x;=cmd|' /C calc'!A0"})
    assert forged.status_code == 422 and "rechargez la page" in forged.text
    with app.app_context():
        assert db.session.execute(select(Subscriber)).first() is None


def test_api_errors_are_json_and_pages_are_html(client: FlaskClient) -> None:
    wrong_method = client.get(URL)
    assert (
        wrong_method.status_code == 405 and wrong_method.get_json()["error"] == "method_not_allowed"
    )
    assert "POST" in wrong_method.headers["Allow"]
    assert client.get("/api/v1/nothing").get_json()["error"] == "not_found"
    missing = client.get("/nulle-part")
    assert missing.status_code == 404 and "Page introuvable" in missing.text
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_hosted_subscribe_page_accepts_internationalised_addresses(client: FlaskClient) -> None:
    page = client.get("/subscribe")
    assert page.status_code == 200
    assert "Rejoignez gratuitement la communauté" in page.text
    assert 'type="text"' in page.text and 'inputmode="email"' in page.text
    assert 'type="email"' not in page.text
    assert "Join the community" in client.get("/subscribe?lang=en").text


def test_what_the_api_answered_before_its_shapes_it_still_answers(
    app: Flask, client: FlaskClient
) -> None:
    """Codes API clients rely on, kept when validation moved into pydantic shapes: an article
    the CMS cannot have (`invalid_article`), a scheme in capitals, a list past the bulk limit
    (`too_many`), a test send's bad locale (`invalid_locale`) and unknown week (404 first), a
    foreign page's post refused for its origin before its body is read."""
    articles = api_token(app, "publisher", "cms")
    pushed = client.post(
        "/api/v1/articles",
        json={"url": "HTTPS://news.example.fr/a", "title": "Titre"},
        headers=articles,
    )
    assert pushed.status_code == 201, pushed.json
    for body in ({"title": "Sans adresse"}, {"url": "https://news.example.fr/b"}):
        refused = client.post("/api/v1/articles", json=body, headers=articles)
        assert refused.status_code == 422 and refused.json["error"] == "invalid_article", body

    admin = api_token(app, "admin", "root")
    many = client.post(
        "/api/v1/admin/unsubscribes",
        json={"emails": [f"a{n}@exemple.fr" for n in range(10_001)]},
        headers=admin,
    )
    assert many.status_code == 422 and many.json["error"] == "too_many"
    unknown = client.post("/api/v1/admin/issues/2001-W01/test", json={"to": 1}, headers=admin)
    assert unknown.status_code == 404

    foreign = client.post(
        "/api/v1/subscriptions",
        json={"email": "lectrice@exemple.fr", "consent": {"a": 1}},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403 and foreign.json["error"] == "origin_not_allowed"
    number = client.post("/api/v1/subscriptions", json={"email": "l@exemple.fr", "consent": 1})
    assert number.status_code == 422 and number.json["error"] == "invalid_field"
