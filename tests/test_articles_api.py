"""POST /api/v1/articles: a CMS pushes articles with a bearer token (stored hashed)."""

from __future__ import annotations

import hashlib

from flask import Flask
from sqlalchemy import select

from service.extensions import db
from service.models import ApiToken, Article


def _token(app: Flask, name: str = "cms", role: str = "publisher") -> str:
    result = app.test_cli_runner().invoke(args=["admin", "token", "create", name, "--role", role])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


ARTICLE = {
    "id": "cms-4521",
    "url": "https://lhebdo.example/startups/levee",
    "title": "Levée de fonds record",
    "summary": "<p>Une <b>jeune pousse</b> lève 12 M€.</p><script>steal()</script>",
    "category": "Startups",
    "author": "Sophie Lambert",
    "image_url": "https://lhebdo.example/img/levee.jpg",
    "published_at": "2026-11-24T09:30:00+01:00",
    "language": "fr",
}


def test_push_is_authenticated_idempotent_and_sanitised(app: Flask) -> None:
    client = app.test_client()
    token = _token(app)
    with app.app_context():
        stored = db.session.execute(select(ApiToken.token_hash)).scalar_one()
    assert token.startswith("hebdo_") and stored == hashlib.sha256(token.encode()).hexdigest()

    auth = {"Authorization": f"Bearer {token}"}
    created = client.post("/api/v1/articles", json=ARTICLE, headers=auth)
    assert created.status_code == 201 and created.json["created"] is True
    again = client.post(
        "/api/v1/articles", json={**ARTICLE, "title": "Levée de fonds record !"}, headers=auth
    )
    assert again.status_code == 200 and again.json == {"id": created.json["id"], "created": False}
    with app.app_context():
        rows = db.session.execute(select(Article)).scalars().all()
        assert len(rows) == 1
        article = rows[0]
        assert article.title == "Levée de fonds record !"
        assert article.summary == "Une jeune pousse lève 12 M€."
        assert article.source == "api:cms"
        assert article.published_at.isoformat() == "2026-11-24T08:30:00+00:00"


def test_push_refuses_missing_bad_revoked_and_underprivileged_tokens(app: Flask) -> None:
    client = app.test_client()
    token = _token(app)
    nobody = client.post("/api/v1/articles", json=ARTICLE)
    assert nobody.status_code == 401 and nobody.headers["WWW-Authenticate"].startswith("Bearer")
    forged = client.post(
        "/api/v1/articles", json=ARTICLE, headers={"Authorization": "Bearer hebdo_forged"}
    )
    assert forged.status_code == 401
    revoked = app.test_cli_runner().invoke(args=["admin", "token", "revoke", "cms"])
    assert revoked.exit_code == 0
    assert (
        client.post(
            "/api/v1/articles", json=ARTICLE, headers={"Authorization": f"Bearer {token}"}
        ).status_code
        == 401
    )
    listing = app.test_cli_runner().invoke(args=["admin", "token", "list"])
    assert "cms\tpublisher\trevoked" in listing.output and token not in listing.output
    duplicate = app.test_cli_runner().invoke(args=["admin", "token", "create", "cms"])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    with app.app_context():
        assert db.session.execute(select(Article)).first() is None


def test_push_rejects_bad_articles_with_clear_errors(app: Flask) -> None:
    client = app.test_client()
    auth = {"Authorization": f"Bearer {_token(app)}"}
    cases = [
        ({**ARTICLE, "url": "javascript:alert(1)"}, 422, "url"),
        ({**ARTICLE, "url": "/relative"}, 422, "url"),
        ({k: v for k, v in ARTICLE.items() if k != "title"}, 422, "title"),
        ({**ARTICLE, "title": "<b></b>"}, 422, "title"),
        ({**ARTICLE, "published_at": "lundi"}, 422, "published_at"),
        ({**ARTICLE, "published_at": "2026-11-24T09:30:00"}, 422, "time zone"),
        ({**ARTICLE, "published_at": "0001-01-01T00:00:00+01:00"}, 422, "between 1970"),
        ({**ARTICLE, "title": 12}, 422, "title must be a string"),
        ({**ARTICLE, "surprise": 1}, 422, "unknown field"),
        ({**ARTICLE, "summary": "x" * 20001}, 422, "longer than"),
        ({**ARTICLE, "title": "x\ud800"}, 422, "not valid Unicode"),
        ({**ARTICLE, "id": "\udfff"}, 422, "not valid Unicode"),
    ]
    for body, status, words in cases:
        response = client.post("/api/v1/articles", json=body, headers=auth)
        assert response.status_code == status, body
        assert words in response.json["message"], (body, response.json)
    form = client.post("/api/v1/articles", data={"url": "x"}, headers=auth)
    assert form.status_code == 415
    broken = client.post(
        "/api/v1/articles", data=b"{", content_type="application/json", headers=auth
    )
    assert broken.status_code == 400
    with app.app_context():
        assert db.session.execute(select(Article)).first() is None
