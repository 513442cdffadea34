"""The admin area's access rules and its subscriber management, through HTTP: the login
form, sessions, CSRF, roles, the list and its keyset pages, one subscriber's record,
actions on one, a selection and a pasted list, erasure, the audit log, and the API."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text, update

from service.extensions import db
from service.models import AdminSession, AuditEvent, ImportFile, Status, Subscriber, Suppression
from service.subscribers.lifecycle import Consent, subscribe
from tests.support.admin import ADMIN_PASSWORD, Admin, api_token, create_admin, page_csrf
from tests.support.data import add_subscribers
from tests.support.mail import sweep
from tests.support.settings import BASE_URL


def sign_up(app: Flask, email: str, *, ip: str = "203.0.113.7", confirm: bool = True) -> int:
    """A subscriber as the form makes one (consent recorded), optionally confirmed."""
    settings = app.config["SETTINGS"]
    with app.app_context():
        consent = Consent("https://news.example.fr/article-1", "v3", ip, "Firefox/140")
        result = subscribe(
            email, locale="fr", consent=consent, now=datetime.now(UTC), settings=settings
        )
        if confirm:
            sub = db.session.get(Subscriber, result.subscriber_id)
            assert sub is not None
            sub.status = Status.ACTIVE
            sub.confirmed_at = datetime.now(UTC)
            sub.confirm_due_at = None
            db.session.commit()
        return result.subscriber_id


def row(app: Flask, subscriber_id: int) -> Subscriber | None:
    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        if sub is not None:
            db.session.expunge(sub)
        return sub


def events(app: Flask, action: str) -> list[AuditEvent]:
    with app.app_context():
        found = list(
            db.session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        )
        db.session.expunge_all()
        return found


# ---------------------------------------------------------------- access


def _admin_rules(app: Flask, prefix: str) -> list[tuple[str, str]]:
    """Every (method, concrete path) under a prefix, with sample values for the variables."""
    samples = {"subscriber_id": "1", "week": "2026-W48", "name": "unsubscribe", "id": "1"}
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix) or rule.endpoint in ("admin.login", "admin.asset"):
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<int:{arg}>", samples.get(arg, "1")).replace(
                f"<{arg}>", samples.get(arg, "x")
            )
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, path))
    return found


def test_every_admin_page_and_action_needs_a_session(app: Flask, client: FlaskClient) -> None:
    rules = _admin_rules(app, "/admin")
    assert len(rules) > 10
    for method, path in rules:
        response = client.open(path, method=method)
        assert response.status_code == 302, (method, path, response.status_code)
        assert response.headers["Location"].startswith("/admin/login?next="), (method, path)
        assert "Access-Control-Allow-Origin" not in response.headers


def test_every_admin_api_route_needs_an_editor_or_admin_token(
    app: Flask, client: FlaskClient
) -> None:
    rules = _admin_rules(app, "/api/v1/admin")
    assert len(rules) > 5
    publisher = api_token(app, "publisher")
    forged = {"Authorization": "Bearer hebdo_" + "x" * 43}
    for method, path in rules:
        for headers, status in (({}, 401), (forged, 401), (publisher, 403)):
            response = client.open(path, method=method, headers=headers, json={})
            assert response.status_code == status, (method, path, headers, response.status_code)
            assert response.is_json
            assert "Access-Control-Allow-Origin" not in response.headers


def test_login_makes_a_new_server_side_session_with_safe_cookie_flags(
    app: Flask, client: FlaskClient
) -> None:
    create_admin(app)
    token = page_csrf(client)
    wrong = client.post(
        "/admin/login", data={"name": "alice", "password": "nope-nope-nope", "csrf_token": token}
    )
    assert wrong.status_code == 401
    assert "Identifiant ou mot de passe incorrect" in wrong.get_data(as_text=True)
    unknown = client.post(
        "/admin/login", data={"name": "mallory", "password": ADMIN_PASSWORD, "csrf_token": token}
    )
    # The same answer for an unknown name: no account enumeration.
    assert unknown.status_code == 401

    def without_tokens(html: str) -> str:
        # A fresh CSRF token is signed with the current second: compare the pages without it,
        # and without the name typed, which the page keeps in its field.
        return re.sub(
            r'(csrf-token" content|name="csrf_token" value|required value)="[^"]+"', "", html
        )

    assert without_tokens(unknown.get_data(as_text=True)) == without_tokens(
        wrong.get_data(as_text=True)
    )

    ok = client.post(
        "/admin/login?next=/admin/subscribers",
        data={"name": "alice", "password": ADMIN_PASSWORD, "csrf_token": token},
    )
    assert ok.status_code == 302 and ok.headers["Location"] == "/admin/subscribers"
    cookie = ok.headers["Set-Cookie"]
    assert "hebdo_session=" in cookie
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    with app.app_context():
        first = db.session.execute(select(AdminSession.token_hash)).scalars().all()
    assert len(first) == 1

    # Logging in again (same browser) replaces the session: the old id is gone.
    token = page_csrf(client, "/admin/subscribers")
    again = client.post(
        "/admin/login", data={"name": "alice", "password": ADMIN_PASSWORD, "csrf_token": token}
    )
    assert again.status_code == 302
    with app.app_context():
        second = db.session.execute(select(AdminSession.token_hash)).scalars().all()
    assert len(second) == 1 and second != first

    # Logging out ends it on the server.
    token = page_csrf(client, "/admin/subscribers")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    with app.app_context():
        assert db.session.execute(select(AdminSession)).first() is None
    assert client.get("/admin/subscribers").status_code == 302
    logins = [(e.actor, e.subject) for e in events(app, "admin.login")]
    assert logins == [("admin:alice", "user:alice")] * 2  # failed attempts are not events
    assert [e.actor for e in events(app, "admin.logout")] == ["admin:alice"]


def test_login_redirects_only_inside_the_admin_area(app: Flask, client: FlaskClient) -> None:
    create_admin(app)
    for target in ("https://evil.example/", "//evil.example/admin", "/\\evil.example", "/x"):
        token = page_csrf(client)
        response = client.post(
            "/admin/login",
            query_string={"next": target},
            data={"name": "alice", "password": ADMIN_PASSWORD, "csrf_token": token},
        )
        assert response.status_code == 302
        assert response.headers["Location"] == "/admin/", target


def test_sessions_end_after_idle_and_absolute_timeouts(app: Flask, admin: Admin) -> None:
    assert admin.get("/admin/subscribers").status_code == 200
    with app.app_context():
        db.session.execute(
            update(AdminSession).values(last_seen_at=datetime.now(UTC) - timedelta(minutes=31))
        )
        db.session.commit()
    expired = admin.get("/admin/subscribers")
    assert expired.status_code == 302 and "/admin/login" in expired.headers["Location"]

    assert admin.login().status_code == 302
    assert admin.get("/admin/subscribers").status_code == 200
    with app.app_context():
        db.session.execute(
            update(AdminSession).values(created_at=datetime.now(UTC) - timedelta(hours=13))
        )
        db.session.commit()
    assert admin.get("/admin/subscribers").status_code == 302


@pytest.mark.slow
def test_failed_logins_are_limited_per_account_and_per_ip(
    app: Flask, make_app: Any, env: dict[str, str]
) -> None:
    create_admin(app)
    client = app.test_client()
    for _ in range(5):
        token = page_csrf(client)
        data = {"name": "alice", "password": "wrong password!", "csrf_token": token}
        assert client.post("/admin/login", data=data).status_code == 401
    # The account is locked for the window, even with the right password, from another IP.
    other = app.test_client()
    token = page_csrf(other)
    locked = other.post(
        "/admin/login",
        data={"name": "alice", "password": ADMIN_PASSWORD, "csrf_token": token},
        environ_base={"REMOTE_ADDR": "198.51.100.9"},
    )
    assert locked.status_code == 429 and locked.headers["Retry-After"]
    assert "Trop de tentatives" in locked.get_data(as_text=True)

    # Per IP: any names, one address.
    limited = make_app({**env, "HEBDO_LOGIN_RATE_LIMIT": "3/minute"})
    client = limited.test_client()
    codes = []
    for n in range(4):
        token = page_csrf(client)
        data = {"name": f"user{n}", "password": "whatever-it-is", "csrf_token": token}
        codes.append(client.post("/admin/login", data=data).status_code)
    assert codes == [401, 401, 401, 429]


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(
    app: Flask, admin: Admin
) -> None:
    subscriber_id = sign_up(app, "lea@exemple.fr")
    response = admin.client.post(f"/admin/subscribers/{subscriber_id}/unsubscribe", data={})
    assert response.status_code == 400
    stale = admin.client.post(
        f"/admin/subscribers/{subscriber_id}/unsubscribe", data={"csrf_token": "forged"}
    )
    assert stale.status_code == 400
    sub = row(app, subscriber_id)
    assert sub is not None and sub.status == Status.ACTIVE


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "https://hebdo.example.fr.evil.example",
        "https://news.example.fr",
    ],
)
def test_a_post_from_another_origin_is_refused_even_with_a_valid_csrf_token(
    app: Flask, admin: Admin, origin: str
) -> None:
    """A page of another site (even the news site the box is embedded in) cannot make a
    signed-in admin's browser act: a valid CSRF token is not enough without our Origin."""
    subscriber_id = sign_up(app, "lea@exemple.fr")
    path = f"/admin/subscribers/{subscriber_id}/unsubscribe"
    refused = admin.post(path, headers={"Origin": origin})
    assert refused.status_code == 403
    sub = row(app, subscriber_id)
    assert sub is not None and sub.status == Status.ACTIVE
    # The same post from our own pages goes through: our base URL, or the host the browser
    # talks to (the test client's is `localhost`).
    assert admin.post(path, headers={"Origin": "http://localhost"}).status_code == 302
    assert admin.post(path, headers={"Origin": BASE_URL}).status_code == 302
    assert row(app, subscriber_id).status == Status.UNSUBSCRIBED  # type: ignore[union-attr]


def test_an_editor_reads_subscribers_but_may_not_change_them(
    app: Flask, editor: Admin, client: FlaskClient
) -> None:
    subscriber_id = sign_up(app, "lea@exemple.fr")
    assert editor.get("/admin/subscribers").status_code == 200
    page = editor.get(f"/admin/subscribers/{subscriber_id}")
    assert page.status_code == 200 and "lea@exemple.fr" in page.get_data(as_text=True)
    assert 'name="confirm"' not in page.get_data(as_text=True)  # no erase form shown
    assert "203.0.113.7" not in page.get_data(as_text=True)  # nor the consent IP
    for name in ("unsubscribe", "resubscribe", "bounce", "erase"):
        response = editor.post(f"/admin/subscribers/{subscriber_id}/{name}", {"confirm": "yes"})
        assert response.status_code == 403
    assert editor.get("/admin/audit").status_code == 403
    headers = api_token(app, "editor")
    one = client.get(f"/api/v1/admin/subscribers/{subscriber_id}", headers=headers)
    assert one.status_code == 200 and "ip" not in one.json["consent"]
    patch = client.patch(
        f"/api/v1/admin/subscribers/{subscriber_id}",
        headers=headers,
        json={"status": "unsubscribed"},
    )
    assert patch.status_code == 403
    assert (
        client.delete(f"/api/v1/admin/subscribers/{subscriber_id}", headers=headers).status_code
        == 403
    )
    sub = row(app, subscriber_id)
    assert sub is not None and sub.status == Status.ACTIVE


# ---------------------------------------------------------------- the list


def test_search_ignores_case_and_accents_and_filters_combine(app: Flask, admin: Admin) -> None:
    sign_up(app, "José.Martín@Exemple.fr")
    sign_up(app, "jose@autre.fr", confirm=False)
    sign_up(app, "marie@exemple.fr")
    page = admin.get("/admin/subscribers?q=JOSE").get_data(as_text=True)
    assert "josé.martín@exemple.fr" in page and "jose@autre.fr" in page
    assert "marie@exemple.fr" not in page
    page = admin.get("/admin/subscribers?q=martin@EXEMPLE").get_data(as_text=True)
    assert "josé.martín@exemple.fr" in page and "jose@autre.fr" not in page
    page = admin.get("/admin/subscribers?q=jose&status=pending").get_data(as_text=True)
    assert "jose@autre.fr" in page and "josé.martín" not in page
    # LIKE wildcards in the query are literal characters.
    assert "marie@" not in admin.get("/admin/subscribers?q=%25").get_data(as_text=True)
    source = admin.get("/admin/subscribers?source=https://news.example.fr/").get_data(as_text=True)
    assert "marie@exemple.fr" in source
    assert "marie@" not in admin.get("/admin/subscribers?source=https://other/").get_data(
        as_text=True
    )


def test_keyset_pages_walk_every_subscriber_once_in_each_sort(
    app: Flask, client: FlaskClient
) -> None:
    add_subscribers(app, 130)
    add_subscribers(app, 7, status="unsubscribed", start=500)
    headers = api_token(app, "editor")
    for sort in ("newest", "oldest", "email", "-email"):
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            query: dict[str, Any] = {"limit": 50, "sort": sort}
            if cursor:
                query["cursor"] = cursor
            body = client.get("/api/v1/admin/subscribers", query_string=query, headers=headers).json
            assert body is not None
            seen += [item["email"] for item in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if not cursor:
                break
        assert len(seen) == 137 and len(set(seen)) == 137, sort
        assert pages == 3
        if sort == "email":
            assert seen == sorted(seen)
    first = client.get("/api/v1/admin/subscribers?status=unsubscribed", headers=headers).json
    assert first is not None
    assert {i["status"] for i in first["items"]} == {"unsubscribed"} and len(first["items"]) == 7
    assert first["counts"]["active"] == 130 and first["counts"]["unsubscribed"] == 7
    bad = client.get("/api/v1/admin/subscribers?cursor=garbage", headers=headers)
    assert bad.status_code == 422 and "cursor" in bad.json["message"]
    assert client.get("/api/v1/admin/subscribers?status=gone", headers=headers).status_code == 422
    assert client.get("/api/v1/admin/subscribers?limit=0", headers=headers).status_code == 422
    assert (
        client.get("/api/v1/admin/subscribers?since=yesterday", headers=headers).status_code == 422
    )


def test_the_list_page_shows_counts_and_pages(app: Flask, admin: Admin) -> None:
    add_subscribers(app, 60)
    add_subscribers(app, 2, status="bounced", start=100)
    page = admin.get("/admin/subscribers").get_data(as_text=True)
    assert page.count('name="id"') == 50
    assert "actif</span> 60" in page and "en erreur (bounce)</span> 2" in page
    assert 'rel="next"' in page
    next_url = (
        page.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    )
    second = admin.get(next_url).get_data(as_text=True)
    assert second.count('name="id"') == 12
    english = admin.get("/admin/subscribers?lang=en").get_data(as_text=True)
    assert "active</span> 60" in english and '<html lang="en">' in english


# ---------------------------------------------------------------- one subscriber


def test_one_subscribers_page_shows_consent_history_and_deliveries(
    app: Flask, admin: Admin
) -> None:
    subscriber_id = sign_up(app, "lea@exemple.fr")
    page = admin.get(f"/admin/subscribers/{subscriber_id}").get_data(as_text=True)
    for fact in (
        "https://news.example.fr/article-1",
        "v3",
        "203.0.113.7",
        "Firefox/140",
        "subscribe",
    ):
        assert fact in page, fact
    assert admin.get("/admin/subscribers/999999").status_code == 404


def test_unsubscribe_one_with_a_reason_is_audited_and_shown(app: Flask, admin: Admin) -> None:
    subscriber_id = sign_up(app, "lea@exemple.fr")
    response = admin.post(
        f"/admin/subscribers/{subscriber_id}/unsubscribe", {"reason": "asked by phone"}
    )
    assert response.status_code == 302
    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert "Désinscrire : fait." in page
    sub = row(app, subscriber_id)
    assert sub is not None and sub.status == Status.UNSUBSCRIBED
    assert sub.unsubscribe_channel == "admin"
    (event,) = events(app, "unsubscribe")
    assert event.actor == "admin:alice" and event.ip == "127.0.0.1"
    assert (event.before_status, event.after_status) == ("active", "unsubscribed")
    assert event.detail == {"channel": "admin", "reason": "asked by phone"}
    audit_page = admin.get("/admin/audit").get_data(as_text=True)
    assert "admin:alice" in audit_page and f"#{subscriber_id}" in audit_page
    again = admin.post(f"/admin/subscribers/{subscriber_id}/unsubscribe")
    assert "déjà fait" in admin.get(again.headers["Location"]).get_data(as_text=True)


def test_resubscribe_makes_a_pending_subscriber_who_gets_a_new_confirmation(
    smtp_app: Flask, smtp_server: Any
) -> None:
    create_admin(smtp_app)
    admin = Admin(smtp_app.test_client())
    admin.login()
    subscriber_id = sign_up(smtp_app, "lea@exemple.fr")
    admin.post(f"/admin/subscribers/{subscriber_id}/unsubscribe")
    admin.post(f"/admin/subscribers/{subscriber_id}/resubscribe")
    sub = row(smtp_app, subscriber_id)
    assert sub is not None and sub.status == Status.PENDING  # never straight to active
    assert sub.consent_source == "admin:alice"
    assert sweep(smtp_app, datetime.now(UTC) + timedelta(days=2)) == 1
    (mail,) = smtp_server.messages
    assert mail.rcpt_tos == ["lea@exemple.fr"]
    assert "/confirm/" in mail.part("plain")


def test_mark_bounced_suppresses_the_address(app: Flask, admin: Admin) -> None:
    subscriber_id = sign_up(app, "lea@exemple.fr")
    admin.post(f"/admin/subscribers/{subscriber_id}/bounce", {"reason": "mailbox gone"})
    sub = row(app, subscriber_id)
    assert sub is not None and sub.status == Status.BOUNCED
    with app.app_context():
        assert db.session.execute(select(Suppression.reason)).scalars().all() == ["bounce"]
    (event,) = events(app, "bounce")
    assert event.actor == "admin:alice"


def _every_text_in_the_database(app: Flask) -> str:
    """Every value of every row of every table, as one string (what a dump would show)."""
    dump = []
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for values in db.session.execute(text(f"SELECT * FROM {table.name}")):
                dump.append(json.dumps([str(v) for v in values], ensure_ascii=False))
    return "\n".join(dump).casefold()


def test_erase_leaves_no_plaintext_address_and_keeps_the_address_suppressed(
    app: Flask, admin: Admin
) -> None:
    subscriber_id = sign_up(app, "Léa.Secret@Exemple.fr")
    admin.post(
        f"/admin/subscribers/{subscriber_id}/bounce", {"reason": "550 <léa.secret@exemple.fr>"}
    )
    # Without ticking the confirmation box nothing happens.
    admin.post(f"/admin/subscribers/{subscriber_id}/erase")
    assert row(app, subscriber_id) is not None
    response = admin.post(f"/admin/subscribers/{subscriber_id}/erase", {"confirm": "yes"})
    assert response.status_code == 302
    assert row(app, subscriber_id) is None
    dump = _every_text_in_the_database(app)
    assert "léa.secret" not in dump and "lea.secret" not in dump
    assert "203.0.113.7" not in dump and "firefox" not in dump
    (event,) = events(app, "erase")
    assert event.subscriber_id == subscriber_id and event.actor == "admin:alice"
    with app.app_context():
        (suppression,) = db.session.execute(select(Suppression)).scalars()
        assert suppression.reason in ("bounce", "erased")
        from service.subscribers.suppressions import is_suppressed

        assert is_suppressed(app.config["SETTINGS"], "léa.secret@exemple.fr")
    assert admin.get(f"/admin/subscribers/{subscriber_id}").status_code == 404
    listing = admin.get("/admin/suppressions?address=L%C3%A9a.Secret@exemple.fr").get_data(
        as_text=True
    )
    assert "est dans la liste de suppression" in listing


def test_an_action_on_a_selection_reports_counts(app: Flask, admin: Admin) -> None:
    ids = add_subscribers(app, 3) + add_subscribers(app, 1, status="unsubscribed", start=10)
    response = admin.post(
        "/admin/subscribers/selection",
        {"action": "unsubscribe", "id": [str(i) for i in ids], "back": "/admin/subscribers"},
    )
    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert "3 faits, 1 déjà fait, 0 inconnu, 0 invalide, 0 refusé." in page
    assert {s.status for i in ids if (s := row(app, i))} == {"unsubscribed"}


def test_a_pasted_or_uploaded_list_reports_each_line(app: Flask, admin: Admin) -> None:
    sign_up(app, "lea@exemple.fr")
    sign_up(app, "gone@exemple.fr")
    admin.post("/admin/subscribers/bulk", {"action": "unsubscribe", "addresses": "gone@exemple.fr"})
    pasted = (
        "LEA@exemple.fr\nnobody@exemple.fr\nnot an address\ngone@exemple.fr\n\nlea@exemple.fr\n"
    )
    page = admin.post(
        "/admin/subscribers/bulk", {"action": "unsubscribe", "addresses": pasted}
    ).get_data(as_text=True)
    assert "1 fait, 2 déjà faits, 1 inconnu, 1 invalide, 0 refusé." in page
    upload = "name;email\nLéa;lea@exemple.fr\nX;x@exemple.fr\n".encode()
    page = admin.post(
        "/admin/subscribers/bulk",
        {"action": "resubscribe", "file": (io.BytesIO(upload), "list.csv")},
        content_type="multipart/form-data",
    ).get_data(as_text=True)
    assert "1 fait, 0 déjà fait, 1 inconnu, 0 invalide, 0 refusé." in page
    too_many = "\n".join(f"a{n}@exemple.fr" for n in range(10_001))
    response = admin.post("/admin/subscribers/bulk", {"action": "bounce", "addresses": too_many})
    assert response.status_code == 400
    assert "La liste contient 10001 adresses : 10 000 au plus" in response.get_data(as_text=True)


# ---------------------------------------------------------------- API


def test_api_get_patch_delete_one_subscriber(app: Flask, client: FlaskClient) -> None:
    headers = api_token(app, "admin", "ops")
    subscriber_id = sign_up(app, "lea@exemple.fr")
    one = client.get(f"/api/v1/admin/subscribers/{subscriber_id}", headers=headers).json
    assert one is not None
    assert one["email"] == "lea@exemple.fr" and one["consent"]["ip"] == "203.0.113.7"
    assert [e["action"] for e in one["history"]] == ["subscribe"]
    path = f"/api/v1/admin/subscribers/{subscriber_id}"
    to_active = client.patch(path, headers=headers, json={"status": "active"})
    assert to_active.status_code == 422
    assert client.patch(path, headers=headers, json={"status": "pending"}).status_code == 409
    done = client.patch(path, headers=headers, json={"status": "unsubscribed", "reason": "api"})
    assert done.status_code == 200 and done.json["result"] == "done"
    assert done.json["subscriber"]["status"] == "unsubscribed"
    again = client.patch(path, headers=headers, json={"status": "unsubscribed"})
    assert again.status_code == 200 and again.json["result"] == "already"
    pending = client.patch(path, headers=headers, json={"status": "pending"})
    assert pending.json["subscriber"]["status"] == "pending"
    assert client.patch(path, headers=headers, json={"status": "x", "extra": 1}).status_code == 422
    assert client.patch(path, headers=headers, data="nope").status_code == 400
    assert client.delete(path, headers=headers).status_code == 204
    assert client.get(path, headers=headers).status_code == 404
    assert client.delete(path, headers=headers).status_code == 404
    actors = {e.actor for e in events(app, "erase")}
    assert actors == {"token:ops"}


def test_api_bulk_unsubscribe_answers_per_address(app: Flask, client: FlaskClient) -> None:
    headers = api_token(app)
    sign_up(app, "lea@exemple.fr")
    sign_up(app, "tom@exemple.fr")
    client.post("/api/v1/admin/unsubscribes", headers=headers, json={"emails": ["tom@exemple.fr"]})
    body = client.post(
        "/api/v1/admin/unsubscribes",
        headers=headers,
        json={
            "emails": ["Lea@Exemple.fr", "tom@exemple.fr", "who@exemple.fr", "nope"],
            "reason": "CRM sync",
        },
    ).json
    assert body is not None
    assert [r["result"] for r in body["results"]] == ["done", "already", "unknown", "invalid"]
    assert body["results"][0]["email"] == "Lea@Exemple.fr"
    assert body["counts"] == {"done": 1, "already": 1, "unknown": 1, "invalid": 1, "refused": 0}
    for bad in ({"emails": "lea@exemple.fr"}, {"emails": [1]}, {"emails": [], "x": 1}):
        assert (
            client.post("/api/v1/admin/unsubscribes", headers=headers, json=bad).status_code == 422
        )
    many = {"emails": [f"a{n}@exemple.fr" for n in range(10_001)]}
    assert client.post("/api/v1/admin/unsubscribes", headers=headers, json=many).status_code == 422


def test_the_audit_log_in_the_api_and_as_csv(app: Flask, admin: Admin, client: FlaskClient) -> None:
    subscriber_id = sign_up(app, "lea@exemple.fr")
    admin.post(f"/admin/subscribers/{subscriber_id}/unsubscribe", {"reason": "x"})
    body = client.get("/api/v1/admin/audit", headers=api_token(app)).json
    assert body is not None
    assert [e["action"] for e in body["items"]] == ["unsubscribe", "subscribe", "admin.login"]
    assert body["items"][0]["actor"] == "admin:alice"
    exported = admin.get("/admin/audit.csv")
    assert exported.mimetype == "text/csv"
    assert "attachment" in exported.headers["Content-Disposition"]
    lines = exported.get_data(as_text=True).splitlines()
    assert lines[0].startswith('"id","created_at","actor","action"')
    assert len(lines) == 4 and '"admin:alice","unsubscribe"' in lines[1]
    assert "lea@exemple.fr" not in exported.get_data(as_text=True)


def test_create_user_from_the_command_line(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["admin", "create-user", "bob", "--role", "editor", "--password-stdin"],
        input="a long enough password\n",
    )
    assert result.exit_code == 0, result.output
    short = runner.invoke(
        args=["admin", "create-user", "carl", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1 and "12" in short.output
    twice = runner.invoke(
        args=["admin", "create-user", "bob", "--password-stdin"], input="a long enough password\n"
    )
    assert twice.exit_code == 1 and "already exists" in twice.output
    bob = Admin(app.test_client())
    assert bob.login("bob", "a long enough password").status_code == 302
    with app.app_context():
        from service.models import AdminUser

        stored = db.session.execute(select(AdminUser.password_hash)).scalar_one()
    # werkzeug's full scrypt work factor (the test admins' stored hashes are lighter).
    assert stored.startswith("scrypt:32768:8:1$") and "a long enough password" not in stored


def test_odd_query_values_get_an_answer_not_a_server_error(
    app: Flask, admin: Admin, client: FlaskClient
) -> None:
    add_subscribers(app, 3)
    headers = api_token(app)

    def cursor(key: list[Any], sort: str = "newest") -> str:
        raw = json.dumps({"s": sort, "k": key}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    for query in (
        {"cursor": cursor(["2026-01-01", 1])},  # no time zone
        {"cursor": cursor(["2026-01-01T00:00:00+00:00", 10**30])},
        {"cursor": cursor(["2026-01-01T00:00:00+00:00", "1"])},
        {"cursor": cursor([["nested"]], "email"), "sort": "email"},
        {"until": "9999-12-31"},
        {"since": "0001-01-01"},
        {"limit": "²"},
        {"limit": "9" * 40},
    ):
        response = client.get("/api/v1/admin/subscribers", query_string=query, headers=headers)
        assert response.status_code == 422, (query, response.status_code)
        page = admin.get("/admin/subscribers", query_string=query)
        assert page.status_code == 200, query
        assert "n’est pas valide" in page.get_data(as_text=True) or "limit" in query
        assert client.get(
            "/api/v1/admin/subscribers.csv", query_string=query, headers=headers
        ).status_code in (200, 422), query
    for path in (
        "/admin/audit?before=99999999999999999999999&subscriber_id=²",
        "/admin/suppressions?before=99999999999999999999999",
        "/admin/audit.csv?subscriber_id=99999999999999999999999",
    ):
        assert admin.get(path).status_code == 200, path
    for path in ("/api/v1/admin/audit?before=²&limit=99999999999", "/api/v1/admin/audit?limit=²"):
        assert client.get(path, headers=headers).status_code == 200, path
    selection = admin.post(
        "/admin/subscribers/selection", {"action": "unsubscribe", "id": ["²", "9" * 23]}
    )
    assert selection.status_code == 302
    assert "Aucun abonné sélectionné" in admin.get(selection.headers["Location"]).get_data(
        as_text=True
    )


def test_a_subscriber_who_complained_is_never_invited_back(
    app: Flask, admin: Admin, client: FlaskClient
) -> None:
    (subscriber_id,) = add_subscribers(app, 1, status="complained")
    response = admin.post(f"/admin/subscribers/{subscriber_id}/resubscribe")
    assert "refusé" in admin.get(response.headers["Location"]).get_data(as_text=True)
    patch = client.patch(
        f"/api/v1/admin/subscribers/{subscriber_id}",
        headers=api_token(app),
        json={"status": "pending"},
    )
    assert patch.status_code == 409
    sub = row(app, subscriber_id)
    assert sub is not None and sub.status == "complained" and sub.confirm_due_at is None


def test_erase_discards_uploads_waiting_for_their_import(app: Flask, admin: Admin) -> None:
    subscriber_id = sign_up(app, "josé@exemple.fr")
    with app.app_context():
        # The address in another spelling (upper case, decomposed accent): still found nowhere.
        text_ = "email\nJOSE\u0301@EXEMPLE.FR\nautre@exemple.fr\n"
        db.session.add(
            ImportFile(
                created_at=datetime.now(UTC),
                created_by="admin:alice",
                filename="a.csv",
                content=text_,
            )
        )
        db.session.commit()
    admin.post(f"/admin/subscribers/{subscriber_id}/erase", {"confirm": "yes"})
    with app.app_context():
        assert db.session.execute(select(ImportFile)).first() is None


def test_bulk_report_lines_are_the_lines_of_the_text(app: Flask, admin: Admin) -> None:
    sign_up(app, "lea@exemple.fr")
    pasted = "# a comment\n\nemail\nlea@exemple.fr\n\nnot-an-address\n"
    page = admin.post(
        "/admin/subscribers/bulk", {"action": "unsubscribe", "addresses": pasted}
    ).get_data(as_text=True)
    rows = re.findall(r'<tr><td class="num">(\d+)</td><td>([^<]*)</td>', page)
    assert rows == [("4", "lea@exemple.fr"), ("6", "not-an-address")]


def test_the_audit_export_defuses_spreadsheet_formulas(app: Flask, admin: Admin) -> None:
    with app.app_context():
        db.session.add(
            AuditEvent(
                created_at=datetime.now(UTC),
                actor="system",
                action='=HYPERLINK("https://evil.example")',
                subject="+cmd",
            )
        )
        db.session.commit()
    exported = admin.get("/admin/audit.csv").get_data(as_text=True)
    assert "'=HYPERLINK" in exported and ',"\'+cmd",' in exported
