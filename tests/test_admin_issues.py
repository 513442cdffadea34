"""The admin's issues and articles, in the browser and over the API: what the pages show,
what each action changes in the database, and the mails the real SMTP server receives."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select, update

from service.digest import editorial
from service.digest.planning import get_issue, issue_articles, plan_issue
from service.extensions import db
from service.models import Article, AuditEvent, Delivery, Issue, IssueArticle, IssueStatus
from service.subscribers.suppressions import suppress
from tests.support.admin import Admin, api_token, create_admin
from tests.support.data import add_article, add_subscribers
from tests.support.smtp import SMTPSink


def _now() -> datetime:
    return datetime.now(UTC)


def _coming(app: Flask) -> str:
    with app.app_context():
        return editorial.coming_week(app.config["SETTINGS"], _now())


def _plan(app: Flask) -> str:
    week = _coming(app)
    with app.app_context():
        plan_issue(app.config["SETTINGS"], week, _now())
    return week


def _order(app: Flask, week: str) -> list[int]:
    with app.app_context():
        issue = get_issue(week)
        assert issue is not None
        return [a.article_id for a in issue_articles(issue.id)]


def _issue(app: Flask, week: str) -> Issue:
    with app.app_context():
        issue = get_issue(week)
        assert issue is not None
        db.session.expunge(issue)
        return issue


def _events(app: Flask, subject: str) -> list[tuple[str, str]]:
    with app.app_context():
        rows = db.session.execute(
            select(AuditEvent.actor, AuditEvent.action)
            .where(AuditEvent.subject == subject)
            .order_by(AuditEvent.id)
        )
        return [(a, b) for a, b in rows]


def _state(html: str, article_id: int) -> str:
    """The 'in the coming issue' cell of one article's row."""
    row = re.search(rf'<tr id="article-{article_id}">(.*?)</tr>', html, re.S)
    assert row, f"no row for article {article_id}"
    cell = re.search(r'<td class="state">(.*?)</td>', row.group(1), re.S)
    assert cell
    return re.sub(r"<[^>]+>", "", cell.group(1)).strip()


def _flashes(html: str) -> list[str]:
    return [m.strip() for m in re.findall(r'<p class="flash [^"]*">(.*?)</p>', html, re.S)]


def _three_articles(app: Flask) -> list[int]:
    now = _now()
    return [
        add_article(app, n, now - timedelta(hours=n), title=f"Titre {n}", category="Monde")
        for n in (1, 2, 3)
    ]


# ---------------------------------------------------------------- articles


def test_articles_page_shows_positions_exclusions_and_past_issues(app: Flask, admin: Admin) -> None:
    a1, a2, a3 = _three_articles(app)
    old = add_article(app, 9, _now() - timedelta(days=12), title="Ancien")
    gone = add_article(app, 10, _now() - timedelta(days=40), title="Trop ancien")
    # `old` went out in an issue three weeks ago.
    with app.app_context():
        past = Issue(
            week="2020-W01",
            subject="Ancien",
            status=IssueStatus.SENT,
            planned_at=_now() - timedelta(days=13),
            send_at=_now() - timedelta(days=13),
            started_at=_now() - timedelta(days=13),
        )
        db.session.add(past)
        db.session.flush()
        db.session.add(
            IssueArticle(issue_id=past.id, article_id=old, position=0, url="u", title="Ancien")
        )
        db.session.execute(update(Article).where(Article.id == a3).values(excluded=True))
        db.session.commit()
    week = _plan(app)
    assert _order(app, week) == [a1, a2]

    html = admin.get("/admin/articles").get_data(as_text=True)
    assert f"Numéro à venir : {week}" in html
    assert _state(html, a1) == "Position 1" and _state(html, a2) == "Position 2"
    assert _state(html, a3) == "Exclu"
    assert _state(html, old) == "Déjà envoyé dans le numéro 2020-W01"
    assert f"article-{gone}" not in html  # older than 30 days
    # Newest first.
    assert html.index(f"article-{a1}") < html.index(f"article-{a2}") < html.index(f"article-{old}")


def test_exclude_include_and_reorder_replan_the_coming_issue(app: Flask, editor: Admin) -> None:
    a1, a2, a3 = _three_articles(app)
    week = _plan(app)
    assert _order(app, week) == [a1, a2, a3]

    response = editor.post(f"/admin/articles/{a2}/exclude", follow_redirects=True)
    assert "Article exclu du numéro à venir." in _flashes(response.get_data(as_text=True))
    assert _order(app, week) == [a1, a3]
    with app.app_context():
        assert db.session.get(Article, a2).excluded is True  # type: ignore[union-attr]
    assert _state(response.get_data(as_text=True), a2) == "Exclu"

    editor.post(f"/admin/articles/{a2}/include")
    assert _order(app, week) == [a1, a2, a3]

    response = editor.post(f"/admin/articles/{a3}/up", follow_redirects=True)
    assert _order(app, week) == [a1, a3, a2]
    assert _state(response.get_data(as_text=True), a3) == "Position 2"
    editor.post(f"/admin/articles/{a1}/down")
    assert _order(app, week) == [a3, a1, a2]
    with app.app_context():
        pins = dict(db.session.execute(select(Article.id, Article.pinned)).tuples().all())
    assert pins == {a3: 0, a1: 1, a2: 2}
    # The pins hold when the issue is planned again (the beat does before a send), and an
    # article arriving since follows them in the automatic order.
    newest = add_article(app, 4, _now() - timedelta(minutes=5), title="Tout frais")
    _plan(app)
    assert _order(app, week) == [a3, a1, a2, newest]
    # An article outside the coming issue cannot be moved: a message, no 500.
    editor.post(f"/admin/articles/{a2}/exclude")
    assert _order(app, week) == [a3, a1, newest]
    response = editor.post(f"/admin/articles/{a2}/up", follow_redirects=True)
    assert response.status_code == 200
    assert any("pas dans le numéro à venir" in f for f in _flashes(response.get_data(as_text=True)))

    assert _events(app, f"article:{a2}") == [
        ("admin:eve", "article.exclude"),
        ("admin:eve", "article.include"),
        ("admin:eve", "article.exclude"),
    ]
    assert _events(app, f"article:{a1}") == [("admin:eve", "article.move_down")]
    assert _events(app, f"article:{a3}") == [("admin:eve", "article.move_up")]


def test_a_change_makes_an_approved_issue_a_draft_again_in_review_mode(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    app = make_app({**env, "HEBDO_REVIEW": "1"})
    create_admin(app)
    admin = Admin(app.test_client())
    assert admin.login().status_code == 302
    a1, a2, _a3 = _three_articles(app)
    week = _plan(app)
    assert _issue(app, week).status == IssueStatus.DRAFT
    admin.post(f"/admin/issues/{week}/approve")
    assert _issue(app, week).status == IssueStatus.SCHEDULED

    response = admin.post(f"/admin/articles/{a1}/exclude", follow_redirects=True)
    html = response.get_data(as_text=True)
    assert f"Le numéro {week} a été préparé de nouveau (brouillon)." in _flashes(html)
    assert "il redevient un brouillon" in html
    issue = _issue(app, week)
    assert issue.status == IssueStatus.DRAFT and _order(app, week)[0] == a2


def test_articles_need_a_session_and_a_csrf_token(app: Flask, admin: Admin) -> None:
    (a1, *_rest) = _three_articles(app)
    anonymous = app.test_client()
    response = anonymous.get("/admin/articles")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    response = anonymous.post(f"/admin/articles/{a1}/exclude")
    assert response.status_code in (302, 400)
    # Signed in, but the form lacks its token.
    response = admin.client.post(f"/admin/articles/{a1}/exclude")
    assert response.status_code == 400
    with app.app_context():
        assert db.session.get(Article, a1).excluded is False  # type: ignore[union-attr]
        assert (
            db.session.execute(
                select(AuditEvent.id).where(AuditEvent.action.startswith("article."))
            ).first()
            is None
        )


def test_articles_are_paginated(app: Flask, admin: Admin) -> None:
    now = _now()
    ids = [add_article(app, n, now - timedelta(minutes=n)) for n in range(55)]
    first = admin.get("/admin/articles").get_data(as_text=True)
    assert f"article-{ids[0]}" in first and f"article-{ids[54]}" not in first
    assert "Page 1 sur 2" in first
    second = admin.get("/admin/articles?page=2").get_data(as_text=True)
    assert f"article-{ids[54]}" in second and f'"article-{ids[0]}"' not in second


# ---------------------------------------------------------------- issues in the browser


@pytest.fixture
def smtp_admin(smtp_app: Flask) -> Admin:
    create_admin(smtp_app)
    signed_in = Admin(smtp_app.test_client())
    assert signed_in.login().status_code == 302
    return signed_in


def test_issue_list_and_page_show_figures_articles_and_preview(app: Flask, admin: Admin) -> None:
    _three_articles(app)
    add_subscribers(app, 3)
    week = _plan(app)
    html = admin.get("/admin/issues").get_data(as_text=True)
    row = re.search(rf'<tr id="issue-{week}">(.*?)</tr>', html, re.S)
    assert row and "Titre 1" in row.group(1) and 'class="badge scheduled"' in row.group(1)

    page = admin.get(f"/admin/issues/{week}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html.index("Titre 1") < html.index("Titre 2") < html.index("Titre 3")
    assert f'<iframe class="preview" sandbox src="/admin/issues/{week}/preview.html"' in html
    text = re.search(r'<pre class="text">(.*?)</pre>', html, re.S)
    assert text and "Titre 2" in text.group(1) and "alice@exemple.fr" in text.group(1)
    assert f'data-progress-url="/admin/issues/{week}/progress.json"' in html
    assert 'data-confirm="' in html  # send and cancel ask first
    assert "style=" not in html  # the admin CSP forbids inline styles

    preview = admin.get(f"/admin/issues/{week}/preview.html")
    csp = preview.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and "img-src * data:" in csp and "script" not in csp
    body = preview.get_data(as_text=True)
    assert "Titre 3" in body and "alice@exemple.fr" in body and "reader0@" not in body
    english = admin.get(f"/admin/issues/{week}/preview.html?locale=en").get_data(as_text=True)
    assert ">Read</a>" in english and "Manage my preferences" in english

    progress = admin.get(f"/admin/issues/{week}/progress.json").get_json()
    assert progress["status"] == "scheduled" and progress["pending"] == 0
    assert progress["eta_seconds"] is None
    assert admin.get("/admin/issues/2001-W01").status_code == 404
    assert admin.get("/admin/issues/pas-une-semaine/progress.json").status_code == 404


def test_send_a_test_to_me_and_to_a_typed_address(
    smtp_app: Flask, smtp_admin: Admin, smtp_server: SMTPSink
) -> None:
    _three_articles(smtp_app)
    week = _plan(smtp_app)
    response = smtp_admin.post(f"/admin/issues/{week}/test", follow_redirects=True)
    assert f"Test du numéro {week} envoyé à alice@exemple.fr." in _flashes(
        response.get_data(as_text=True)
    )
    mail = smtp_server.wait_for(1)[0]
    assert mail.rcpt_tos == ["alice@exemple.fr"]
    assert mail.message["Subject"].startswith("[TEST] ") and "Titre 1" in mail.part("plain")

    smtp_admin.post(f"/admin/issues/{week}/test", {"to": "Redaction@Exemple.fr"})
    assert smtp_server.wait_for(2)[1].rcpt_tos == ["redaction@exemple.fr"]
    response = smtp_admin.post(
        f"/admin/issues/{week}/test", {"to": "pas une adresse"}, follow_redirects=True
    )
    assert "Adresse de test invalide." in _flashes(response.get_data(as_text=True))
    # Never to a suppressed address, not even a test.
    with smtp_app.app_context():
        suppress(smtp_app.config["SETTINGS"], "parti@exemple.fr", "erased", _now())
        db.session.commit()
    response = smtp_admin.post(
        f"/admin/issues/{week}/test", {"to": "Parti@exemple.fr"}, follow_redirects=True
    )
    assert (
        "Cette adresse est sur la liste de suppression"
        in _flashes(response.get_data(as_text=True))[0]
    )
    assert len(smtp_server.messages) == 2
    with smtp_app.app_context():
        assert db.session.execute(select(Delivery.id)).first() is None
    assert _issue(smtp_app, week).status == IssueStatus.SCHEDULED
    assert _events(smtp_app, f"issue:{week}") == [("admin:alice", "issue.test")] * 2


def test_send_pause_resume_cancel_from_the_issue_page(app: Flask, admin: Admin) -> None:
    # No worker: the batch tasks wait in the broker, which is what pausing needs.
    _three_articles(app)
    add_subscribers(app, 5)
    week = _plan(app)
    url = f"/admin/issues/{week}"

    response = admin.post(f"{url}/send", follow_redirects=True)
    assert f"Envoi du numéro {week} lancé vers 5 abonnés." in _flashes(
        response.get_data(as_text=True)
    )
    assert _issue(app, week).status == IssueStatus.SENDING
    progress = admin.get(f"{url}/progress.json").get_json()
    assert (progress["recipients"], progress["pending"], progress["percent"]) == (5, 5, 0.0)
    # Two of them went out within the last minute: 2/60 msg/s, 3 left, 90 s to go.
    with app.app_context():
        first_two = select(Delivery.id).order_by(Delivery.id).limit(2).scalar_subquery()
        db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(first_two))
            .values(status="sent", sent_at=_now() - timedelta(seconds=10))
        )
        db.session.commit()
    progress = admin.get(f"{url}/progress.json").get_json()
    assert progress["sent"] == 2 and progress["percent"] == 40.0
    assert progress["rate"] == round(2 / 60, 2) and progress["eta_seconds"] == 90

    # Sending twice starts nothing: an error message, not a 500.
    response = admin.post(f"{url}/send", follow_redirects=True)
    assert response.status_code == 200
    assert "Impossible : le numéro" in _flashes(response.get_data(as_text=True))[-1]

    admin.post(f"{url}/pause")
    assert _issue(app, week).status == IssueStatus.PAUSED
    response = admin.post(f"{url}/pause", follow_redirects=True)
    assert f"Impossible : le numéro {week} est « en pause »." in _flashes(
        response.get_data(as_text=True)
    )
    admin.post(f"{url}/resume")
    assert _issue(app, week).status == IssueStatus.SENDING
    admin.post(f"{url}/cancel")
    assert _issue(app, week).status == IssueStatus.CANCELLED
    with app.app_context():
        statuses = sorted(db.session.execute(select(Delivery.status)).scalars())
    assert statuses == ["sent", "sent", "skipped", "skipped", "skipped"]
    response = admin.post(f"{url}/approve", follow_redirects=True)
    assert "Impossible" in _flashes(response.get_data(as_text=True))[-1]
    assert [a for _who, a in _events(app, f"issue:{week}")] == [
        "issue.send",
        "issue.pause",
        "issue.resume",
        "issue.cancel",
    ]
    # Without a CSRF token: refused, nothing changed.
    assert admin.client.post(f"{url}/resume").status_code == 400


# ---------------------------------------------------------------- the admin API


def test_api_lists_and_steers_issues(smtp_app: Flask, smtp_server: SMTPSink) -> None:
    app = smtp_app
    headers = api_token(app, "editor", "cms-editor")
    _three_articles(app)
    add_subscribers(app, 2)
    week = _plan(app)
    client = app.test_client()

    items = client.get("/api/v1/admin/issues", headers=headers).get_json()["items"]
    assert [(i["week"], i["status"], i["pending"]) for i in items] == [(week, "scheduled", 0)]
    one = client.get(f"/api/v1/admin/issues/{week}", headers=headers).get_json()
    assert one["status"] == "scheduled" and [a["title"] for a in one["articles"]] == [
        "Titre 1",
        "Titre 2",
        "Titre 3",
    ]

    response = client.post(
        f"/api/v1/admin/issues/{week}/test", headers=headers, json={"to": "chef@exemple.fr"}
    )
    assert response.status_code == 200 and response.get_json()["to"] == "chef@exemple.fr"
    assert smtp_server.wait_for(1)[0].message["Subject"].startswith("[TEST] ")
    bad = client.post(f"/api/v1/admin/issues/{week}/test", headers=headers, json={"to": "nope"})
    assert bad.status_code == 422 and bad.get_json()["error"] == "invalid_address"
    german = client.post(
        f"/api/v1/admin/issues/{week}/test",
        headers=headers,
        json={"to": "chef@exemple.fr", "locale": "de"},
    )
    assert german.status_code == 422 and german.get_json()["error"] == "invalid_locale"
    assert client.post(f"/api/v1/admin/issues/{week}/test", headers=headers).status_code == 422

    sent = client.post(f"/api/v1/admin/issues/{week}/send", headers=headers)
    assert sent.status_code == 200
    assert sent.get_json() == {"week": week, "status": "sending", "recipients": 2, "queued": 1}
    conflict = client.post(f"/api/v1/admin/issues/{week}/approve", headers=headers)
    assert conflict.status_code == 409 and "cannot approve" in conflict.get_json()["message"]
    for action, status in (("pause", "paused"), ("resume", "sending"), ("cancel", "cancelled")):
        response = client.post(f"/api/v1/admin/issues/{week}/{action}", headers=headers)
        assert response.status_code == 200 and response.get_json()["status"] == status
    one = client.get(f"/api/v1/admin/issues/{week}", headers=headers).get_json()
    assert one["status"] == "cancelled" and one["skipped"] == 2

    missing = client.post("/api/v1/admin/issues/2001-W01/pause", headers=headers)
    assert missing.status_code == 404 and set(missing.get_json()) == {"error", "message"}
    assert client.get("/api/v1/admin/issues/2001-W01", headers=headers).status_code == 404
    unknown_test = client.post(
        "/api/v1/admin/issues/2001-W01/test", headers=headers, json={"to": "chef@exemple.fr"}
    )
    assert unknown_test.status_code == 404 and len(smtp_server.messages) == 1
    assert client.post(f"/api/v1/admin/issues/{week}/explode", headers=headers).status_code == 404

    assert _events(app, f"issue:{week}") == [
        ("token:cms-editor", "issue.test"),
        ("token:cms-editor", "issue.send"),
        ("token:cms-editor", "issue.pause"),
        ("token:cms-editor", "issue.resume"),
        ("token:cms-editor", "issue.cancel"),
    ]


def test_api_needs_an_editor_or_admin_token(app: Flask) -> None:
    _three_articles(app)
    week = _plan(app)
    client = app.test_client()
    assert client.get("/api/v1/admin/issues").status_code == 401
    assert client.post(f"/api/v1/admin/issues/{week}/cancel").status_code == 401
    publisher = api_token(app, "publisher")
    assert client.get("/api/v1/admin/issues", headers=publisher).status_code == 403
    assert client.post(f"/api/v1/admin/issues/{week}/cancel", headers=publisher).status_code == 403
    assert _issue(app, week).status == IssueStatus.SCHEDULED
    # Browser pages: a session or the login page.
    for path in ("/admin/issues", f"/admin/issues/{week}", f"/admin/issues/{week}/progress.json"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_the_coming_issue_can_be_planned_ahead_from_the_list_and_the_api(
    app: Flask, admin: Admin
) -> None:
    """A newcomer on a Thursday: nothing planned yet, one button plans the coming issue."""
    ids = _three_articles(app)
    week = _coming(app)
    listing = admin.get("/admin/issues").get_data(as_text=True)
    assert f"/admin/issues/{week}/plan" in listing
    response = admin.post(f"/admin/issues/{week}/plan")
    assert response.status_code == 302 and response.headers["Location"].endswith(week)
    page = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert any(f"Numéro {week} préparé : 3 articles" in f for f in _flashes(page))
    assert sorted(_order(app, week)) == sorted(ids)
    assert _issue(app, week).status == IssueStatus.SCHEDULED
    assert f"/admin/issues/{week}/plan" not in admin.get("/admin/issues").get_data(as_text=True)
    assert ("admin:alice", "issue.plan") in _events(app, f"issue:{week}")
    assert admin.post("/admin/issues/not-a-week/plan").status_code == 404

    client = app.test_client()
    headers = api_token(app, "editor")
    again = client.post(f"/api/v1/admin/issues/{week}/plan", headers=headers)
    assert again.status_code == 200 and again.json["articles"] == 3
    assert client.post("/api/v1/admin/issues/2026-W99/plan", headers=headers).status_code == 404
    sent = client.post(f"/api/v1/admin/issues/{week}/send", headers=headers)
    assert sent.status_code == 200
    refused = client.post(f"/api/v1/admin/issues/{week}/plan", headers=headers)
    assert refused.status_code == 409


def test_test_sends_are_capped_per_client(app: Flask, admin: Admin) -> None:
    _three_articles(app)
    week = _plan(app)
    codes = [
        admin.post(f"/admin/issues/{week}/test", {"to": f"r{n}@exemple.fr"}).status_code
        for n in range(31)
    ]
    assert codes == [302] * 30 + [429]
    # Other actions are not counted against the cap.
    assert admin.post(f"/admin/issues/{week}/pause").status_code == 302


@pytest.mark.parametrize("face", ["page", "api", "cli"])
def test_every_face_leaves_the_same_audit_events(app: Flask, face: str) -> None:
    """The admin page's buttons, the admin API and `hebdo digest …` call the same domain
    actions, which write the audit events: the same events, whoever steers the issue."""
    _three_articles(app)
    add_subscribers(app, 3)
    week = _plan(app)
    if face == "page":
        create_admin(app, "alice", "admin")
        admin = Admin(app.test_client())
        admin.login("alice")

        def act(action: str) -> None:
            admin.post(f"/admin/issues/{week}/{action}")

        actor = "admin:alice"
    elif face == "api":
        headers = api_token(app, "editor", "cms-editor")
        client = app.test_client()

        def act(action: str) -> None:
            response = client.post(f"/api/v1/admin/issues/{week}/{action}", headers=headers)
            assert response.status_code == 200, response.get_json()

        actor = "token:cms-editor"
    else:
        runner = app.test_cli_runner()

        def act(action: str) -> None:
            now = ["--now", "--yes"] if action == "send" else []
            args = ["digest", action, "--week", week, *now]
            result = runner.invoke(args=args)
            assert result.exit_code == 0, result.output

        actor = "cli:"
    for action in ("send", "pause", "cancel"):
        act(action)
    assert _issue(app, week).status == IssueStatus.CANCELLED
    with app.app_context():
        events = db.session.execute(
            select(AuditEvent.actor, AuditEvent.action, AuditEvent.detail)
            .where(AuditEvent.subject == f"issue:{week}")
            .order_by(AuditEvent.id)
        ).all()
    assert [(action, detail) for _who, action, detail in events] == [
        ("issue.send", {"recipients": 3, "approved": False}),
        ("issue.pause", None),
        ("issue.cancel", None),
    ]
    assert all(who.startswith(actor) and len(who) > len("cli:") for who, _a, _d in events)
