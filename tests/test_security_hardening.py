"""What an outsider or an editor could learn or do that they should not (issue 16, security):
old unsubscribe links, IP addresses, suppressions, weak keys and passwords, tokens that
never expire, the development mailbox and the readiness detail."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from service.config import load_settings
from service.digest import editorial
from service.digest.planning import plan_issue
from service.extensions import db
from service.models import AdminUser, AuditEvent, Status, Subscriber
from service.subscribers.lifecycle import Consent, confirm, subscribe, unsubscribe
from service.subscribers.suppressions import suppress
from service.subscribers.tokens import (
    confirm_token,
    resubscribe_token,
    unsubscribe_token,
)
from tests.support.admin import Admin, api_token, create_admin
from tests.support.data import add_article
from tests.support.processes import Process, http, wait_until
from tests.support.smtp import SMTPSink, free_port

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- 1. old unsubscribe links

READER_CONSENT = Consent(
    source="https://news.example.fr/article/7",
    text_version="form-2026-11",
    ip="198.51.100.20",
    user_agent="Reader's browser/1.0",
)


def _unsubscribed_reader(app: Flask, email: str, unsubscribed: datetime) -> tuple[int, str]:
    """A reader who signed up, confirmed and unsubscribed at `unsubscribed`; returns the id
    and the unsubscribe link every digest they got carries."""
    settings = app.config["SETTINGS"]
    signed_up = unsubscribed - timedelta(days=30)
    with app.app_context():
        result = subscribe(
            email, locale="fr", consent=READER_CONSENT, now=signed_up, settings=settings
        )
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None
        confirm(settings, confirm_token(settings, sub), ip=None, now=signed_up)
        unsubscribe(result.subscriber_id, channel="one-click", now=unsubscribed)
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None
        return result.subscriber_id, f"/unsubscribe/{unsubscribe_token(settings, sub)}"


def _status(app: Flask, subscriber_id: int) -> str:
    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        return sub.status


def test_an_old_unsubscribe_link_no_longer_offers_or_allows_a_resubscription(
    app: Flask, client: FlaskClient
) -> None:
    """Eight days after the unsubscription, a forwarded digest's link shows no resubscribe
    button, and a resubscribe link signed just now (as every view used to sign one) is
    refused as expired: the reader stays unsubscribed."""
    subscriber_id, path = _unsubscribed_reader(
        app, "parti@exemple.fr", datetime.now(UTC) - timedelta(days=8)
    )

    page = client.get(path)
    assert page.status_code == 200 and "désabonné" in page.text
    assert "/resubscribe/" not in page.text
    assert "Me réabonner" not in page.text

    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None
        fresh = resubscribe_token(app.config["SETTINGS"], sub)
    refused = client.post(f"/resubscribe/{fresh}")
    assert refused.status_code == 400 and "Lien expiré" in refused.text
    assert _status(app, subscriber_id) == Status.UNSUBSCRIBED


def test_a_recent_resubscription_keeps_the_proof_of_consent_and_is_its_own_event(
    app: Flask, client: FlaskClient
) -> None:
    """Within the week the button works; the original proof of consent (source, browser,
    IP) is kept, and the resubscription is recorded as a new event with its own."""
    subscriber_id, path = _unsubscribed_reader(
        app, "retour@exemple.fr", datetime.now(UTC) - timedelta(days=6)
    )
    page = client.get(path)
    button = re.search(r'action="(/resubscribe/[^"]+)"', page.text)
    assert button, page.text

    done = client.post(
        button.group(1),
        headers={"User-Agent": "Somebody else's browser/2.0"},
        environ_base={"REMOTE_ADDR": "203.0.113.77"},
    )
    assert done.status_code == 200

    with app.app_context():
        sub = db.session.get(Subscriber, subscriber_id)
        assert sub is not None and sub.status == Status.ACTIVE
        assert sub.consent_source == READER_CONSENT.source
        assert sub.consent_user_agent == READER_CONSENT.user_agent
        assert sub.consent_ip == READER_CONSENT.ip
        assert sub.consent_text_version == READER_CONSENT.text_version
        event = db.session.execute(
            select(AuditEvent).where(
                AuditEvent.subscriber_id == subscriber_id, AuditEvent.action == "resubscribe"
            )
        ).scalar_one()
        assert event.ip == "203.0.113.77"
        assert event.detail == {
            "source": "resubscribe-link",
            "text_version": app.config["SETTINGS"].consent_version,
            "user_agent": "Somebody else's browser/2.0",
        }


# ---------------------------------------------------------------- 2. editors see no IP


def test_editors_see_no_ip_or_browser_on_the_page_nor_in_the_api(
    app: Flask, client: FlaskClient, admin: Admin, editor: Admin
) -> None:
    """The same rule for both faces: an editor's API answer and page hold none of the
    reader's IP addresses or browsers (consent, history, resubscription); an admin's do."""
    subscriber_id, path = _unsubscribed_reader(
        app, "trace@exemple.fr", datetime.now(UTC) - timedelta(days=1)
    )
    button = re.search(r'action="(/resubscribe/[^"]+)"', client.get(path).text)
    assert button
    client.post(
        button.group(1),
        headers={"User-Agent": "Clicking browser/3.0"},
        environ_base={"REMOTE_ADDR": "203.0.113.78"},
    )
    traces = ("198.51.100.20", "203.0.113.78", "Reader's browser", "Clicking browser")

    as_editor = client.get(
        f"/api/v1/admin/subscribers/{subscriber_id}", headers=api_token(app, "editor")
    )
    assert as_editor.status_code == 200
    assert not [t for t in traces if t in as_editor.text], as_editor.text
    record = as_editor.get_json()
    assert record["history"] and all("ip" not in e for e in record["history"])
    assert "ip" not in record["consent"]
    page = editor.get(f"/admin/subscribers/{subscriber_id}")
    assert page.status_code == 200
    assert not [t for t in traces if t in page.text.replace("&#39;", "'")]

    as_admin = client.get(
        f"/api/v1/admin/subscribers/{subscriber_id}", headers=api_token(app, "admin", "a")
    )
    assert all(t in as_admin.text for t in traces)
    resubscribed = next(e for e in as_admin.get_json()["history"] if e["action"] == "resubscribe")
    assert resubscribed["ip"] == "203.0.113.78"
    admin_page = admin.get(f"/admin/subscribers/{subscriber_id}").text.replace("&#39;", "'")
    assert "198.51.100.20" in admin_page and "203.0.113.78" in admin_page


# ---------------------------------------------------------------- 3. weak secret keys


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize(
    ("key", "complaint"),
    [
        ("changeme", "HEBDO_SECRET_KEY is too short for HEBDO_ENV=production (8 characters"),
        ("secret", "HEBDO_SECRET_KEY is too short"),
        ("x" * 31, "HEBDO_SECRET_KEY is too short"),
        ("dev-secret-key-change-me-please-0000", "HEBDO_SECRET_KEY is a placeholder"),
        ("CHANGEME_CHANGEME_CHANGEME_CHANGEME", "HEBDO_SECRET_KEY is a placeholder"),
    ],
)
def test_production_refuses_a_weak_secret_key_in_one_line(
    tmp_path: Path, key: str, complaint: str
) -> None:
    environ = {
        "PATH": "/usr/bin:/bin",
        "HEBDO_ENV": "production",
        "HEBDO_SMTP_HOST": "smtp.example.fr",
        "HEBDO_DATA_DIR": str(tmp_path),
        "HEBDO_SECRET_KEY": key,
    }
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "config"],
        env=environ,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout
    assert "configuration error: " + complaint in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "token_urlsafe(48)" in result.stderr
    assert repr(key) not in result.stderr and (len(key) < 8 or key not in result.stderr)


def test_a_strong_secret_key_and_development_keys_still_start(tmp_path: Path) -> None:
    strong = {"HEBDO_SMTP_HOST": "smtp.example.fr", "HEBDO_DATA_DIR": str(tmp_path)}
    production = {**strong, "HEBDO_ENV": "production"}
    assert load_settings({**production, "HEBDO_SECRET_KEY": "k3-" + "Zq9" * 15}).env == "production"
    # Outside production a short key is the developer's business (the doctor still warns).
    assert load_settings({**strong, "HEBDO_ENV": "test", "HEBDO_SECRET_KEY": "changeme"})


# ---------------------------------------------------------------- 7. suppressions and editors


def test_an_editors_test_send_does_not_tell_whether_an_address_is_suppressed(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    """An editor's test to a suppressed address gets the same answer as any other (page and
    API), and nothing is mailed; an admin, who may look the list up, is still told."""
    now = datetime.now(UTC)
    for n in (1, 2):
        add_article(smtp_app, n, now - timedelta(hours=n), title=f"Titre {n}")
    with smtp_app.app_context():
        week = editorial.coming_week(smtp_app.config["SETTINGS"], now)
        plan_issue(smtp_app.config["SETTINGS"], week, now)
        suppress(smtp_app.config["SETTINGS"], "parti@exemple.fr", "erased", now)
        db.session.commit()
    create_admin(smtp_app, "eve", "editor", "eve@exemple.fr")
    eve = Admin(smtp_app.test_client())
    assert eve.login("eve").status_code == 302

    def page_answer(to: str) -> str:
        html = eve.post(f"/admin/issues/{week}/test", {"to": to}, follow_redirects=True).text
        found = re.search(rf"Test du numéro {week} envoyé à {to}[^<]*", html.replace("’", "'"))
        assert found, html
        assert "suppression" not in html
        return found.group(0).replace(to, "<to>")

    assert page_answer("parti@exemple.fr") == page_answer("present@exemple.fr")

    client = smtp_app.test_client()
    token = api_token(smtp_app, "editor")

    def api_answer(to: str) -> tuple[int, dict[str, object]]:
        response = client.post(f"/api/v1/admin/issues/{week}/test", json={"to": to}, headers=token)
        body = response.get_json()
        assert body["to"] == to
        return response.status_code, {k: v for k, v in body.items() if k != "to"}

    assert api_answer("parti@exemple.fr") == api_answer("present@exemple.fr")
    assert api_answer("parti@exemple.fr")[0] == 200

    smtp_server.wait_for(2)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == ["present@exemple.fr"] * 2
    with smtp_app.app_context():
        withheld = db.session.execute(
            select(AuditEvent.detail)
            .where(AuditEvent.action == "issue.test")
            .order_by(AuditEvent.id)
        ).scalars()
        assert [d.get("withheld") for d in withheld] == ["suppressed", None] * 2 + ["suppressed"]

    refused = client.post(
        f"/api/v1/admin/issues/{week}/test",
        json={"to": "parti@exemple.fr"},
        headers=api_token(smtp_app, "admin", "root"),
    )
    assert refused.status_code == 422 and refused.get_json()["error"] == "suppressed_address"
    assert len(smtp_server.messages) == 2


# ---------------------------------------------------------------- 10. readiness detail


def test_readyz_shows_its_detail_to_private_networks_only(smtp_app: Flask) -> None:
    """The SMTP host and the schema version are for operators: a client from a public
    address gets the verdict and the status code alone, as /metrics shows nothing to it."""
    client = smtp_app.test_client()
    outside = client.get("/readyz", environ_base={"REMOTE_ADDR": "8.8.8.8"})
    assert outside.status_code == 200 and outside.json == {"status": "ready"}
    assert "127.0.0.1" not in outside.text and "schema" not in outside.text

    inside = client.get("/readyz", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert inside.status_code == 200
    assert set(inside.json["checks"]) == {"database", "broker", "smtp"}
    assert "schema at" in inside.json["checks"]["database"]["detail"]


# ---------------------------------------------------------------- 10. the development mailbox


@pytest.mark.slow
def test_the_dev_mailbox_is_off_when_the_server_listens_beyond_loopback(
    env: dict[str, str], spawn: Callable[..., Process]
) -> None:
    """gunicorn on 0.0.0.0 (what the image used to run in development mode): the mailbox
    answers 403 with the reason, and the log says it once; on 127.0.0.1 it is served."""
    answers = {}
    for host in ("0.0.0.0", "127.0.0.1"):
        port = free_port()
        gunicorn = ["gunicorn", "--bind", f"{host}:{port}", "--workers", "1", "service.wsgi:app"]
        process = spawn([sys.executable, "-m", *gunicorn], env, ready="Booting worker")
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda url=base: http(f"{url}/healthz")[0] == 200, 30, "gunicorn")
        answers[host] = http(f"{base}/dev/mailbox/")
        http(f"{base}/dev/mailbox/")
        process.stop()
        if host == "0.0.0.0":
            assert process.output().count("/dev/mailbox is off: hebdo listens on 0.0.0.0") == 1

    status, page = answers["0.0.0.0"]
    assert status == 403 and "adresse de bouclage" in page
    assert answers["127.0.0.1"][0] == 200


def test_the_image_defaults_to_production() -> None:
    """The image listens on 0.0.0.0: it must not start in development mode by default."""
    run_stage = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    assert re.search(r"^ENV [^\n]*(\\\n[^\n]*)*HEBDO_ENV=production", run_stage, re.M)
    assert "0.0.0.0:8000" in run_stage


# ---------------------------------------------------------------- 10. common passwords


@pytest.mark.parametrize(
    "password", ["qwerty123456", "1qaz2wsx3edc", "Password2024!", "  Sunshine123456"]
)
def test_a_common_password_is_refused_for_a_new_user_and_a_new_password(
    app: Flask, password: str
) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(
        args=["admin", "create-user", "bob", "--password-stdin"], input=password + "\n"
    )
    assert created.exit_code == 1
    assert "one of the most common" in created.output or "plus courants" in created.output
    with app.app_context():
        assert db.session.execute(select(AdminUser.id)).first() is None

    create_admin(app, "carl")
    changed = runner.invoke(
        args=["admin", "set-password", "carl", "--password-stdin"], input=password + "\n"
    )
    assert changed.exit_code == 1
    assert Admin(app.test_client()).login("carl").status_code == 302
    assert Admin(app.test_client()).login("carl", password).status_code != 302


def test_an_uncommon_password_is_accepted(app: Flask) -> None:
    created = app.test_cli_runner().invoke(
        args=["admin", "create-user", "bob", "--password-stdin"], input="table-lampe 7 orge\n"
    )
    assert created.exit_code == 0, created.output


# ---------------------------------------------------------------- 10. token lifetimes


def test_a_token_with_a_lifetime_is_refused_once_it_is_over(app: Flask) -> None:
    """An expired token gets the 401 a revoked one gets; the list says which is which."""
    from service.admin import apitokens

    runner = app.test_cli_runner()
    made = runner.invoke(
        args=["admin", "token", "create", "cms", "--role", "editor", "--expires-in", "90d"]
    )
    assert made.exit_code == 0, made.output
    live = {"Authorization": f"Bearer {made.stdout.splitlines()[0]}"}
    client = app.test_client()
    assert client.get("/api/v1/admin/subscribers", headers=live).status_code == 200

    now = datetime.now(UTC)
    with app.app_context():
        old = apitokens.create_token(
            "old-script", "editor", now - timedelta(days=91), expires_in=timedelta(days=90)
        )
        revoked = apitokens.create_token("gone", "editor", now)
        apitokens.revoke_token("gone", now)
    expired_answer = client.get(
        "/api/v1/admin/subscribers", headers={"Authorization": f"Bearer {old}"}
    )
    revoked_answer = client.get(
        "/api/v1/admin/subscribers", headers={"Authorization": f"Bearer {revoked}"}
    )
    assert expired_answer.status_code == revoked_answer.status_code == 401
    assert expired_answer.get_json() == revoked_answer.get_json()

    listing = runner.invoke(args=["admin", "token", "list"]).output
    lines = {line.split("\t")[0]: line for line in listing.splitlines() if "\t" in line}
    assert set(lines) == {"cms", "old-script", "gone"}, listing
    expires = (now + timedelta(days=90)).strftime("%Y-%m-%d")
    assert expires in lines["cms"] and expires not in lines["gone"]
    assert (now - timedelta(days=1)).strftime("%Y-%m-%d") in lines["old-script"]
    assert len({lines[n].split("\t")[2].split(" ")[0] for n in lines}) == 3

    for wrong in ("90", "0d", "forever", "99999w"):
        bad = runner.invoke(args=["admin", "token", "create", "x", "--expires-in", wrong])
        assert bad.exit_code == 1 and "lifetime" in bad.output, (wrong, bad.output)


def test_the_token_lifetime_migration_goes_down_and_up(app: Flask) -> None:
    """0008 on this run's database (SQLite, or PostgreSQL with HEBDO_DATABASE_URL): down to
    0007 drops the column, up again adds it, and tokens made before it never expire."""
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import inspect, text

    from service.admin import apitokens

    with app.app_context():
        downgrade(revision="0007")
        db.engine.dispose()
        columns = {c["name"] for c in inspect(db.engine).get_columns("api_tokens")}
        assert "expires_at" not in columns
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_tokens (name, token_hash, role, created_at) "
                    "VALUES ('before', :hash, 'editor', :now)"
                ),
                {"hash": "0" * 64, "now": datetime.now(UTC)},
            )
        upgrade()
        db.engine.dispose()
        columns = {c["name"] for c in inspect(db.engine).get_columns("api_tokens")}
        assert "expires_at" in columns
        (before,) = apitokens.list_tokens()
        assert before.name == "before" and before.expires_at is None
