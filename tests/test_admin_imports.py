"""CSV import (dry run, apply, confirmation mails) and CSV export, in the browser and the API."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import delete, func, insert, select
from werkzeug.http import parse_options_header

from service.extensions import db
from service.models import AuditEvent, ImportFile, Status, Subscriber, search_key
from service.subscribers.suppressions import suppress
from tests.support.admin import Admin, api_token, create_admin
from tests.support.data import add_subscribers
from tests.support.mail import sweep
from tests.support.smtp import SMTPSink

BIG = str(8 * 1024 * 1024)


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """Imports are files of thousands of lines: a request limit that lets them through."""
    return {**env, "HEBDO_ADMIN_MAX_REQUEST_BYTES": BIG}


def csv_bytes(rows: list[list[str]], *, delimiter: str = ",", bom: bool = False) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return (("\ufeff" if bom else "") + buffer.getvalue()).encode()


def post_csv(client: Any, headers: dict[str, str], body: bytes, dry_run: str | None = None) -> Any:
    query = "" if dry_run is None else f"?dry_run={dry_run}"
    return client.post(
        f"/api/v1/admin/imports{query}",
        data=body,
        headers={**headers, "Content-Type": "text/csv"},
    )


def count(app: Flask, model: Any, *where: Any) -> int:
    with app.app_context():
        return int(
            db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
        )


def get_sub(app: Flask, email: str) -> Subscriber:
    with app.app_context():
        sub = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
        db.session.expunge(sub)
        return sub


def suppress_address(app: Flask, email: str) -> None:
    with app.app_context():
        suppress(app.config["SETTINGS"], email, "complaint", datetime.now(UTC))
        db.session.commit()


SIX_OUTCOMES = [
    # Column order free; a BOM, `;` and CRLF in the test that uses it.
    ["consent_text", "Email", "locale", "consent_date", "source"],
    ["CGU 2024 v3", "Ancienne@Exemple.fr", "en", "2024-03-01", "salon-2024"],
    ["", "nouveau@exemple.fr", "fr", "", ""],
    ["", "reader0@exemple.fr", "", "", ""],
    ["", "banni@exemple.fr", "", "", ""],
    ["", "pas-une-adresse", "", "", ""],
    ["", "NOUVEAU@exemple.fr", "", "", ""],
]


def test_api_dry_run_reports_every_outcome_and_writes_nothing(app: Flask, client: Any) -> None:
    add_subscribers(app, 1)
    suppress_address(app, "banni@exemple.fr")
    headers = api_token(app)
    before = (count(app, Subscriber), count(app, AuditEvent))

    response = post_csv(client, headers, csv_bytes(SIX_OUTCOMES, delimiter=";", bom=True))

    assert response.status_code == 200, response.json
    body = response.json
    assert body["dry_run"] is True
    assert body["counts"] == {
        "new_active": 1,
        "new_pending": 1,
        "exists": 1,
        "suppressed": 1,
        "invalid": 1,
        "duplicate": 1,
        "total": 6,
    }
    by_line = {line["line"]: line for line in body["lines"]}
    assert set(by_line) == {4, 5, 6, 7}
    assert by_line[4]["outcome"] == "exists"
    assert by_line[5]["outcome"] == "suppressed"
    assert by_line[6]["outcome"] == "invalid"
    # The admin API speaks English (French only when Accept-Language asks for it).
    assert by_line[6]["reason"] == "The email address is missing an “@”."
    assert by_line[7]["outcome"] == "duplicate" and "(line 3)" in by_line[7]["reason"]
    assert body["truncated"] is False
    assert (count(app, Subscriber), count(app, AuditEvent)) == before


def test_browser_upload_dry_run_then_apply(app: Flask, admin: Admin) -> None:
    add_subscribers(app, 1)
    suppress_address(app, "banni@exemple.fr")
    upload = {"file": (io.BytesIO(csv_bytes(SIX_OUTCOMES)), "salon.csv")}

    report = admin.post("/admin/imports", data=upload, content_type="multipart/form-data")

    assert report.status_code == 200
    html = report.text
    assert "Simulation : salon.csv" in html
    assert 'data-outcome="new_active">1<' in html and 'data-outcome="invalid">1<' in html
    assert "Il manque le caractère « @ »" in html
    assert count(app, Subscriber) == 1
    with app.app_context():
        (file_id,) = db.session.execute(select(ImportFile.id)).scalars()
    assert f"/admin/imports/{file_id}/apply" in html

    listed = admin.get("/admin/imports")
    assert "salon.csv" in listed.text
    per_line = admin.get(f"/admin/imports/{file_id}/report.csv")
    assert per_line.headers["Content-Disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(per_line.text)))
    assert [r["outcome"] for r in rows] == [
        "new_active",
        "new_pending",
        "exists",
        "suppressed",
        "invalid",
        "duplicate",
    ]

    applied = admin.post(f"/admin/imports/{file_id}/apply")
    assert applied.status_code == 302
    flashed = admin.get(applied.headers["Location"]).text
    assert (
        "Import terminé : 1 actif, 1 en attente, 1 déjà abonné, "
        "1 sur la liste de suppression, 1 invalide, 1 doublon." in flashed
    )
    assert count(app, ImportFile) == 0

    active = get_sub(app, "ancienne@exemple.fr")
    assert active.status == Status.ACTIVE and active.locale == "en"
    assert active.consent_at.replace(tzinfo=UTC) == datetime(2024, 3, 1, tzinfo=UTC)
    assert active.consent_text_version == "CGU 2024 v3"
    assert active.consent_source == "salon-2024"
    assert active.confirm_due_at is None
    pending = get_sub(app, "nouveau@exemple.fr")
    assert pending.status == Status.PENDING and pending.confirm_due_at is not None
    assert pending.consent_source == "import:salon.csv"
    assert count(app, Subscriber) == 3

    with app.app_context():
        events = (
            db.session.execute(select(AuditEvent).where(AuditEvent.action == "import"))
            .scalars()
            .all()
        )
        per_subscriber = [e for e in events if e.subscriber_id is not None]
        assert {e.subscriber_id for e in per_subscriber} == {active.id, pending.id}
        assert all(e.actor == "admin:alice" for e in events)
        assert not any("@" in str(e.detail) for e in events)
        (summary,) = [e for e in events if e.subscriber_id is None]
        assert summary.detail is not None and summary.detail["counts"]["new_active"] == 1

    again = admin.post(f"/admin/imports/{file_id}/apply")
    assert "plus en attente" in admin.get(again.headers["Location"]).text
    assert count(app, Subscriber) == 3


def test_pending_import_gets_exactly_one_confirmation_mail(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    suppress_address(smtp_app, "banni@exemple.fr")
    rows = [
        ["email", "consent_date", "consent_text"],
        ["un@exemple.fr", "", ""],
        ["deux@exemple.fr", "", ""],
        ["actif@exemple.fr", "2025-01-15T10:00:00+01:00", "formulaire papier v2"],
        ["banni@exemple.fr", "", ""],
    ]
    client = smtp_app.test_client()
    response = post_csv(client, api_token(smtp_app), csv_bytes(rows), dry_run="0")
    assert response.status_code == 200
    assert response.json["counts"]["new_pending"] == 2

    assert sweep(smtp_app) == 2
    mails = smtp_server.wait_for(2)
    assert sorted(m.rcpt_tos[0] for m in mails) == ["deux@exemple.fr", "un@exemple.fr"]
    assert sweep(smtp_app, datetime.now(UTC) + timedelta(minutes=5)) == 0
    assert len(smtp_server.messages) == 2
    actif = get_sub(smtp_app, "actif@exemple.fr")
    assert actif.consent_at.replace(tzinfo=UTC) == datetime(2025, 1, 15, 9, tzinfo=UTC)

    # Imported again: they exist, and nobody gets a second mail.
    again = post_csv(client, api_token(smtp_app, name="again"), csv_bytes(rows), dry_run="0")
    assert again.json["counts"]["exists"] == 3
    assert sweep(smtp_app) == 0


def test_consent_claims_are_checked(app: Flask, client: Any) -> None:
    future = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    long_text = "J’accepte de recevoir L’Hebdo chaque semaine. " * 3
    rows = [
        ["email", "consent_date", "consent_text", "locale"],
        ["futur@exemple.fr", future, "v1", ""],
        ["moitie@exemple.fr", "2024-01-01", "", ""],
        ["pasdate@exemple.fr", "hier", "v1", ""],
        ["langue@exemple.fr", "", "", "de"],
        ["long@exemple.fr", "2024-01-01 08:30", long_text, "fr-CA"],
    ]
    headers = api_token(app)
    body = post_csv(client, headers, csv_bytes(rows), dry_run="0").json
    codes = {line["line"]: line["code"] for line in body["lines"]}
    assert codes == {2: "consent_future", 3: "consent_half", 4: "consent_date", 5: "locale"}
    sub = get_sub(app, "long@exemple.fr")
    assert sub.status == Status.ACTIVE and sub.locale == "fr"
    assert sub.consent_text_version.startswith("sha256:") and len(sub.consent_text_version) == 64
    with app.app_context():
        summary = db.session.execute(
            select(AuditEvent).where(AuditEvent.subject.is_not(None))
        ).scalar_one()
        assert summary.detail is not None
        assert summary.detail["consent_texts"] == {sub.consent_text_version: long_text.strip()}


@pytest.mark.slow
def test_whole_file_errors(
    app: Flask, client: Any, make_app: Callable[..., Flask], env: Any
) -> None:
    headers = api_token(app)
    unknown = post_csv(client, headers, b"email,prenom\r\na@exemple.fr,Ana\r\n")
    assert unknown.status_code == 422
    assert unknown.json["error"] == "unknown_columns" and "'prenom'" in unknown.json["message"]
    assert post_csv(client, headers, b"locale\r\nfr\r\n").json["error"] == "header"
    assert post_csv(client, headers, b"").json["error"] == "empty"
    assert post_csv(client, headers, "email\né@x.fr\n".encode("latin-1")).json["error"] == (
        "encoding"
    )
    too_many = b"email\n" + b"a@exemple.fr\n" * 100_001
    refused = post_csv(client, headers, too_many)
    assert refused.status_code == 422 and refused.json["error"] == "too_many_rows"
    wrong_type = client.post("/api/v1/admin/imports", json={"email": "a@b.fr"}, headers=headers)
    assert wrong_type.status_code == 415 and wrong_type.json["error"] == "unsupported_media_type"
    assert post_csv(client, headers, b"email\n", dry_run="peut-etre").status_code == 422

    small = make_app({**env, "HEBDO_ADMIN_MAX_REQUEST_BYTES": "65536"})
    small_headers = api_token(small, name="small")
    big_body = b"email\n" + b"quelquun@exemple.fr\n" * 5000
    too_large = post_csv(small.test_client(), small_headers, big_body)
    assert too_large.status_code == 413
    assert set(too_large.json) == {"error", "message"}
    create_admin(small, "bob")
    browser = Admin(small.test_client())
    assert browser.login("bob").status_code == 302
    upload = {"file": (io.BytesIO(big_body), "gros.csv")}
    page = browser.post("/admin/imports", data=upload, content_type="multipart/form-data")
    assert page.status_code == 413 and "Fichier trop volumineux : au plus 64 Ko" in page.text


def test_browser_upload_errors_are_shown_on_the_form(admin: Admin) -> None:
    page = admin.post(
        "/admin/imports",
        data={"file": (io.BytesIO(b"courriel\nx@y.fr\n"), "liste.csv")},
        content_type="multipart/form-data",
    )
    assert page.status_code == 422 and "Colonnes inconnues : &#39;courriel&#39;" in page.text
    assert admin.post("/admin/imports", data={}).status_code == 400


def test_export_streams_a_filtered_view_defused_and_audited(app: Flask, admin: Admin) -> None:
    rows = [
        ["email", "locale", "source", "consent_date", "consent_text"],
        ["-moins@exemple.fr", "en", '=HYPERLINK("http://x")', "2024-05-01", "+v1"],
        ["anglais@exemple.fr", "en", "@salon", "2024-05-02", "v1"],
        ["francais@exemple.fr", "fr", "", "2024-05-03", "v1"],
        ["attente@exemple.fr", "en", "", "", ""],
    ]
    post_csv(app.test_client(), api_token(app), csv_bytes(rows), dry_run="0")

    # Unbuffered, as a browser reads it: the answer comes as it is made.
    response = admin.get(
        "/admin/subscribers.csv?status=active&locale=en&sort=email", buffered=False
    )
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed
    today = datetime.now(UTC).date().isoformat()
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="hebdo-subscribers-{today}.csv"'
    )
    text = response.get_data(as_text=True)
    assert text.startswith('\ufeff"email","status","locale","created_at","confirmed_at",')
    exported = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    assert [r["email"] for r in exported] == ["'-moins@exemple.fr", "anglais@exemple.fr"]
    first = exported[0]
    assert first["consent_source"] == '\'=HYPERLINK("http://x")'
    assert first["consent_text_version"] == "'+v1"
    assert exported[1]["consent_source"] == "'@salon"
    assert first["consent_at"] == "2024-05-01T00:00:00+00:00"

    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "export")
        ).scalar_one()
        assert event.actor == "admin:alice" and event.detail is not None
        assert event.detail["rows"] == 2 and event.detail["complete"] is True
        assert event.detail["filters"]["status"] == ["active"]

    bad = admin.get("/admin/subscribers.csv?status=perdu")
    assert bad.status_code == 422


def test_export_then_import_round_trip(app: Flask, client: Any) -> None:
    headers = api_token(app)
    rows = [["email", "locale", "source", "consent_date", "consent_text"]]
    rows += [
        [f"lecteur{n}@exemple.fr", "en" if n % 2 else "fr", f"site-{n}", "2024-06-01", "v2"]
        for n in range(30)
    ]
    rows += [["=piege@exemple.fr", "fr", "-moins", "2024-06-02T12:00:00", "v2"]]
    rows += [[f"attente{n}@exemple.fr", "fr", "", "", ""] for n in range(5)]
    post_csv(client, headers, csv_bytes(rows), dry_run="0")
    add_subscribers(app, 3, status="unsubscribed", start=100)

    view = "/api/v1/admin/subscribers.csv?status=active,pending&sort=email"
    first = client.get(view, headers=headers)
    assert first.status_code == 200
    assert not first.text.startswith("\ufeff")

    with app.app_context():
        db.session.execute(delete(Subscriber).where(Subscriber.status != "unsubscribed"))
        db.session.commit()
    applied = post_csv(client, headers, first.data, dry_run="0").json
    assert applied["counts"]["new_active"] == 31
    assert applied["counts"]["new_pending"] == 5
    assert applied["ignored_columns"] == [
        "created_at",
        "confirmed_at",
        "unsubscribed_at",
        "categories",
        "paused_until",
    ]

    second = client.get(view, headers=headers)
    kept = ("email", "status", "locale", "consent_source", "consent_text_version")

    def facts(text: str) -> list[tuple[str, ...]]:
        return [
            tuple(row[c] for c in kept)
            + ((row["consent_at"],) if row["status"] == "active" else ())
            for row in csv.DictReader(io.StringIO(text))
        ]

    assert len(facts(first.text)) == 36
    assert facts(second.text) == facts(first.text)
    assert "'=piege@exemple.fr" in second.text

    # An export of unsubscribed addresses does not bring them back.
    gone = client.get("/api/v1/admin/subscribers.csv?status=unsubscribed", headers=headers)
    with app.app_context():
        db.session.execute(delete(Subscriber))
        db.session.commit()
    refused = post_csv(client, headers, gone.data).json
    assert refused["counts"]["invalid"] == 3
    assert {line["code"] for line in refused["lines"]} == {"status"}
    assert count(app, Subscriber) == 0


def test_a_formula_after_a_separator_is_defused_and_every_field_quoted(
    app: Flask, client: Any
) -> None:
    """French Excel splits a line at `;`: a formula after one must not become a cell of its
    own, nor after `,` or a tab. The export's bytes are read as a spreadsheet would."""
    headers = api_token(app)
    payload = "x;=cmd|' /C calc'!A0"
    rows = [
        ["email", "locale", "source", "consent_date", "consent_text"],
        ["piege@exemple.fr", "fr", payload, "2024-05-01", "v1,+SUM(1)\t@A1"],
    ]
    assert post_csv(client, headers, csv_bytes(rows), dry_run="0").status_code == 200
    view = "/api/v1/admin/subscribers.csv?status=active"
    exported = client.get(view, headers=headers).data
    assert b"\"x;'=cmd|' /C calc'!A0\"" in exported
    assert b"\"v1,'+SUM(1)\t'@A1\"" in exported
    for line in exported.decode().splitlines():
        # Every field quoted, the header too.
        assert line.startswith('"') and line.endswith('"'), line
        # Split as a spreadsheet that ignores the quotes would: no piece runs.
        for piece in re.split(r"[;,\t]", line):
            assert not piece.strip(' "').startswith(("=", "+", "-", "@")), (piece, line)
    # The export imports back as it was.
    with app.app_context():
        db.session.execute(delete(Subscriber))
        db.session.commit()
    assert post_csv(client, headers, exported, dry_run="0").json["counts"]["new_active"] == 1
    with app.app_context():
        sub = db.session.execute(select(Subscriber)).scalar_one()
        assert (sub.consent_source, sub.consent_text_version) == (payload, "v1,+SUM(1)\t@A1")


def test_editors_may_neither_import_nor_export(app: Flask, editor: Admin) -> None:
    assert editor.get("/admin/imports").status_code == 403
    upload = {"file": (io.BytesIO(b"email\na@exemple.fr\n"), "a.csv")}
    assert (
        editor.post("/admin/imports", data=upload, content_type="multipart/form-data").status_code
        == 403
    )
    assert editor.get("/admin/subscribers.csv").status_code == 403
    headers = api_token(app, "editor")
    client = app.test_client()
    assert post_csv(client, headers, b"email\na@exemple.fr\n").status_code == 403
    assert client.get("/api/v1/admin/subscribers.csv", headers=headers).status_code == 403
    assert client.post("/api/v1/admin/imports", data=b"email\n").status_code == 401
    assert count(app, Subscriber) == 0


def test_two_thousand_line_import_on_sqlite(app: Flask, admin: Admin) -> None:
    rows = [["email", "consent_date", "consent_text"]]
    rows += [[f"masse{n}@exemple.fr", "2024-01-01", "v1"] for n in range(1000)]
    rows += [[f"masse{n}@exemple.fr", "", ""] for n in range(1000, 2000)]
    upload = {"file": (io.BytesIO(csv_bytes(rows)), "masse.csv")}
    report = admin.post("/admin/imports", data=upload, content_type="multipart/form-data")
    assert 'data-outcome="total">2000<' in report.text
    with app.app_context():
        (file_id,) = db.session.execute(select(ImportFile.id)).scalars()
    admin.post(f"/admin/imports/{file_id}/apply")
    assert count(app, Subscriber, Subscriber.status == Status.ACTIVE) == 1000
    assert count(app, Subscriber, Subscriber.status == Status.PENDING) == 1000
    assert count(app, AuditEvent, AuditEvent.subscriber_id.is_not(None)) == 2000


def test_files_older_than_a_day_are_deleted(app: Flask, admin: Admin) -> None:
    with app.app_context():
        old = datetime.now(UTC) - timedelta(hours=25)
        db.session.add(ImportFile(created_at=old, created_by="x", filename="vieux.csv", content=""))
        db.session.commit()
    assert "vieux.csv" not in admin.get("/admin/imports").text
    assert count(app, ImportFile) == 0


# ---------------------------------------------------------------- review fixes


def upload_file(app: Flask, admin: Admin, body: bytes, name: str) -> int:
    """Upload a file in the browser (its dry run); return the waiting file's id."""
    upload = {"file": (io.BytesIO(body), name)}
    report = admin.post("/admin/imports", data=upload, content_type="multipart/form-data")
    assert report.status_code == 200, report.text
    with app.app_context():
        return int(
            db.session.execute(
                select(ImportFile.id).order_by(ImportFile.id.desc()).limit(1)
            ).scalar_one()
        )


@pytest.mark.parametrize(
    ("upload_name", "download_name"),
    [
        ('x"; filename=evil.exe; a=".csv', 'x"; filename=evil.exe; a="-report.csv'),
        ("abonnés 数据.csv", "abonnés 数据-report.csv"),
    ],
)
def test_report_download_name_is_one_safe_header_parameter(
    app: Flask, admin: Admin, upload_name: str, download_name: str
) -> None:
    # Stored as an upload keeps its name (the test client cannot send such a name as a
    # browser does, percent-encoded or escaped in the multipart header).
    with app.app_context():
        stored = ImportFile(
            created_at=datetime.now(UTC),
            created_by="admin:alice",
            filename=upload_name,
            content="email\na@exemple.fr\n",
        )
        db.session.add(stored)
        db.session.commit()
        file_id = stored.id

    header = admin.get(f"/admin/imports/{file_id}/report.csv").headers["Content-Disposition"]

    # Latin-1 at most in a header (gunicorn refuses more): plain ASCII, the name in filename*.
    assert header.isascii()
    # One parameter, the whole name: no `filename=evil.exe` slipped in beside it.
    assert parse_options_header(header) == ("attachment", {"filename": download_name})
    # The ASCII fallback alone (for clients that ignore filename*) holds no quote either.
    fallback = header.split("; filename*=", 1)[0]
    disposition, params = parse_options_header(fallback)
    assert disposition == "attachment" and set(params) == {"filename"}
    assert params["filename"].isascii() and '"' not in params["filename"]


def test_consent_date_out_of_utc_range_is_invalid(app: Flask, client: Any) -> None:
    rows = [
        ["email", "consent_date", "consent_text"],
        ["tot@exemple.fr", "0001-01-01T00:00:00+05:00", "v1"],
        ["tard@exemple.fr", "9999-12-31T23:00:00-05:00", "v1"],
    ]
    response = post_csv(client, api_token(app), csv_bytes(rows))
    assert response.status_code == 200, response.text
    lines = {line["line"]: (line["outcome"], line["code"]) for line in response.json["lines"]}
    assert lines == {2: ("invalid", "consent_date"), 3: ("invalid", "consent_date")}
    assert "not a valid ISO date" in response.json["lines"][0]["reason"]


def test_apply_when_others_subscribed_a_whole_batch_meanwhile(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.subscribers import csv_io as subscriber_io

    emails = [f"course{n}@exemple.fr" for n in range(4)]
    real_plan = subscriber_io.plan_import

    def plan_then_others_subscribe(*args: Any, **kwargs: Any) -> subscriber_io.Plan:
        plan = real_plan(*args, **kwargs)
        db.session.rollback()
        # Between the plan and the first batch, someone else subscribes the first batch.
        now = datetime.now(UTC)
        db.session.execute(
            insert(Subscriber),
            [
                {
                    "email": email,
                    "search_key": search_key(email),
                    "status": Status.PENDING,
                    "locale": "fr",
                    "created_at": now,
                    "optin_serial": 1,
                    "consent_at": now,
                    "consent_text_version": "form",
                    "confirm_attempts": 0,
                }
                for email in emails[:2]
            ],
        )
        db.session.commit()
        return plan

    monkeypatch.setattr(subscriber_io, "plan_import", plan_then_others_subscribe)
    content = "email\n" + "\n".join(emails) + "\n"
    with app.app_context():
        plan = subscriber_io.apply_import(
            content,
            filename="course.csv",
            settings=app.config["SETTINGS"],
            now=datetime.now(UTC),
            actor="test",
            batch_size=2,
        )
    assert plan.counts["exists"] == 2 and plan.counts["new_pending"] == 2
    assert count(app, Subscriber) == 4
    assert count(app, AuditEvent, AuditEvent.subscriber_id.is_not(None)) == 2


def test_a_failed_apply_keeps_the_file_for_another_try(
    app: Flask, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.subscribers import csv_io

    file_id = upload_file(app, admin, b"email\nessai@exemple.fr\n", "essai.csv")

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(csv_io, "apply_import", broken)
        failed = admin.post(f"/admin/imports/{file_id}/apply")
    assert failed.status_code == 302
    assert (
        "L’import a échoué ; le fichier est conservé" in admin.get(failed.headers["Location"]).text
    )
    with app.app_context():
        kept = db.session.get(ImportFile, file_id)
        assert (
            kept is not None and kept.filename == "essai.csv" and kept.created_by == "admin:alice"
        )
    assert admin.get(f"/admin/imports/{file_id}").status_code == 200

    applied = admin.post(f"/admin/imports/{file_id}/apply")
    assert "Import terminé : 0 actif, 1 en attente" in admin.get(applied.headers["Location"]).text
    assert count(app, ImportFile) == 0 and count(app, Subscriber) == 1
    # A second click still finds nothing to import.
    again = admin.post(f"/admin/imports/{file_id}/apply")
    assert "plus en attente" in admin.get(again.headers["Location"]).text
    assert count(app, Subscriber) == 1


def test_export_audit_keeps_which_filters_not_their_text(app: Flask, admin: Admin) -> None:
    add_subscribers(app, 2)
    response = admin.get(
        "/admin/subscribers.csv?q=reader0&source=admin:bob&status=active&locale=fr&sort=email"
    )
    assert response.status_code == 200
    response.get_data()
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "export")
        ).scalar_one()
        assert event.detail is not None
        assert event.detail["filters"] == {
            "q": True,
            "source": True,
            "status": ["active"],
            "locale": "fr",
            "since": None,
            "until": None,
            "sort": "email",
        }
        assert "reader0" not in str(event.detail) and "bob" not in str(event.detail)


@pytest.mark.slow
def test_french_texts_count_as_french_does(app: Flask, admin: Admin, client: Any) -> None:
    form = admin.get("/admin/imports").text
    assert "Au plus 100\u202f000 lignes et 8\u202f192 Ko par fichier." in form
    headers = {**api_token(app), "Accept-Language": "fr"}
    refused = post_csv(client, headers, b"email\n" + b"a@exemple.fr\n" * 100_001)
    assert refused.json["message"] == "Plus de 100\u202f000 lignes : découpez le fichier."
    english = post_csv(client, api_token(app, name="en"), b"email\n" + b"a@exemple.fr\n" * 100_001)
    assert english.json["message"] == "More than 100,000 lines: split the file."


def test_blank_lines_before_the_header_are_skipped(app: Flask, client: Any) -> None:
    headers = api_token(app)
    body = b"\r\n  \r\n\nemail;locale\r\nun@exemple.fr;en\r\n\r\npas-une-adresse;fr\r\n"
    response = post_csv(client, headers, body)
    assert response.status_code == 200, response.json
    assert response.json["counts"]["new_pending"] == 1 and response.json["counts"]["invalid"] == 1
    # Line numbers stay those of the file.
    assert [line["line"] for line in response.json["lines"]] == [7]
    assert post_csv(client, headers, b"\n \r\n\t\n").json["error"] == "empty"


def test_api_speaks_english_unless_asked_for_french_and_pages_the_admins_language(
    app: Flask, admin: Admin, client: Any
) -> None:
    headers = api_token(app)
    body = b"courriel\nx@exemple.fr\n"
    english = post_csv(client, headers, body).json
    assert english["message"].startswith("Unknown columns: 'courriel'.")
    lines = csv_bytes([["email", "locale"], ["sans-arobase", ""], ["a@exemple.fr", "de"]])
    reasons = [line["reason"] for line in post_csv(client, headers, lines).json["lines"]]
    assert reasons == [
        "The email address is missing an “@”.",
        "Unknown language “de” (expected: fr, en).",
    ]

    french_headers = {**headers, "Accept-Language": "fr-CA,fr;q=0.9,en;q=0.5"}
    french = post_csv(client, french_headers, body).json
    assert french["message"].startswith("Colonnes inconnues : 'courriel'.")
    german = post_csv(client, {**headers, "Accept-Language": "de"}, body).json
    assert german["message"].startswith("Unknown columns")

    # The browser: the signed-in admin's language, whatever the request's Accept-Language.
    page = admin.post(
        "/admin/imports",
        data={"file": (io.BytesIO(lines), "l.csv")},
        content_type="multipart/form-data",
        headers={"Accept-Language": "en"},
    )
    assert "Il manque le caractère « @ »" in page.text
    admin.get("/admin/imports?lang=en")
    page = admin.post(
        "/admin/imports",
        data={"file": (io.BytesIO(lines), "l.csv")},
        content_type="multipart/form-data",
    )
    assert "The email address is missing an “@”." in page.text
    assert "Unknown language “de”" in page.text
