"""What an admin sees of the mail that came back: the page of everything received, each
one's verdict, rule, evidence and raw message, the undo of a bounce; the per-issue figures
on the issue page and the dashboard; the Prometheus series and the alert built on them.
"""

from __future__ import annotations

import re

from flask import Flask

from service.models import Status
from tests.support.admin import Admin, create_admin
from tests.support.data import metric_value
from tests.support.inbound import BOUNCES, READER, dsn, reply, take
from tests.support.mail import subscriber
from tests.support.sending import WEEK
from tests.support.smtp import Received


def signed_in(app: Flask, role: str = "admin") -> Admin:
    name = "alice" if role == "admin" else "bob"
    create_admin(app, name, role, email=f"{name}@exemple.fr")
    browser = Admin(app.test_client())
    assert browser.login(name).status_code == 302
    return browser


def test_the_page_shows_each_verdict_with_its_evidence_and_a_bounce_can_be_undone(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    mail = sent[READER]
    bounced = take(inbound_app, dsn(mail.mail_from, READER, returned=mail.data))
    forged = take(inbound_app, dsn(BOUNCES, "reader2@exemple.fr"), recipients=[BOUNCES])
    away = take(
        inbound_app,
        reply(
            "reader0@exemple.fr",
            "news@news.example.fr",
            "Réponse automatique : Hebdo",
            Auto_Submitted="auto-replied",
        ),
    )
    admin = signed_in(inbound_app)
    listing = admin.get("/admin/inbound").get_data(as_text=True)
    verdicts = re.findall(r'<tr data-verdict="([a-z_]+)">', listing)
    assert verdicts == ["auto_reply", "unattributed", "bounced"]  # newest first
    assert "dsn 5.1.1" in listing and "Réponse automatique" not in listing
    only = admin.get("/admin/inbound?verdict=unattributed").get_data(as_text=True)
    assert re.findall(r'<tr data-verdict="([a-z_]+)">', only) == ["unattributed"]

    page = admin.get(f"/admin/inbound/{bounced.id}").get_data(as_text=True)
    assert '<code data-field="rule">dsn 5.1.1</code>' in page
    assert "Recipient address rejected: User unknown" in page  # the diagnostic
    assert "VERP token" in page  # how it was matched
    assert "Final-Recipient: rfc822; reader1@exemple.fr" in page  # the raw message
    assert "Annuler le rebond" in page
    assert "Annuler le rebond" not in admin.get(f"/admin/inbound/{forged.id}").get_data(
        as_text=True
    )
    assert admin.get(f"/admin/inbound/{away.id}").status_code == 200

    # Without the form's CSRF token: refused, nothing changes.
    stolen = admin.client.post(f"/admin/inbound/{bounced.id}/undo")
    assert stolen.status_code == 400
    assert subscriber(inbound_app, READER).status == Status.BOUNCED
    undone = admin.post(f"/admin/inbound/{bounced.id}/undo", follow_redirects=True)
    assert undone.status_code == 200
    assert subscriber(inbound_app, READER).status == Status.ACTIVE
    text = undone.get_data(as_text=True)
    assert 'data-field="verdict">' in text and "Annuler le rebond" not in text
    audit = admin.get("/admin/audit?action=bounce.undo").get_data(as_text=True)
    assert "admin:alice" in audit
    assert admin.get("/admin/inbound/999999").status_code == 404


def test_editors_do_not_read_readers_mail(inbound_app: Flask, sent: dict[str, Received]) -> None:
    got = take(inbound_app, reply(READER, "news@news.example.fr", "Re: Hebdo", "Merci"))
    editor = signed_in(inbound_app, "editor")
    assert editor.get("/admin/inbound").status_code == 403
    assert editor.get(f"/admin/inbound/{got.id}").status_code == 403
    assert editor.post(f"/admin/inbound/{got.id}/undo").status_code == 403


def test_issue_page_dashboard_and_metrics_count_what_came_back(
    inbound_app: Flask, sent: dict[str, Received]
) -> None:
    take(inbound_app, dsn(sent[READER].mail_from, READER))
    zero = "reader0@exemple.fr"
    take(inbound_app, dsn(sent[zero].mail_from, zero, status="4.2.2", action="delayed"))
    header = " ".join(str(sent["reader2@exemple.fr"].message["List-Unsubscribe"]).split())
    mailto = header.split("<mailto:", 1)[1].split("?", 1)[0]
    take(inbound_app, reply("reader2@exemple.fr", mailto, "unsubscribe", ""))
    admin = signed_in(inbound_app)
    issue = admin.get(f"/admin/issues/{WEEK}").get_data(as_text=True)
    for field, value in (("hard_bounces", 1), ("soft_bounces", 1), ("mailto_unsubscribes", 1)):
        assert f'<span data-field="{field}">{value}</span>' in issue
    progress = admin.get(f"/admin/issues/{WEEK}/progress.json").get_json()
    assert (progress["hard_bounces"], progress["soft_bounces"]) == (1, 1)
    dashboard = admin.get("/admin/").get_data(as_text=True)
    assert '<td class="num" data-label="hard_bounces">1</td>' in dashboard
    assert '<td class="num" data-label="mailto_unsubscribes">1</td>' in dashboard
    # One of three readers bounced: 33 % is far above 2 %.
    assert "33.3 %" in dashboard
    metrics = inbound_app.test_client().get("/metrics").get_data(as_text=True)
    assert metric_value(metrics, "hebdo_issue_hard_bounces", week=WEEK) == 1
    assert metric_value(metrics, "hebdo_issue_soft_bounces", week=WEEK) == 1
    assert metric_value(metrics, "hebdo_issue_recipients", week=WEEK) == 3
    assert (
        metric_value(
            metrics, "hebdo_inbound_messages_total", kind="unsubscribe", verdict="unsubscribed"
        )
        >= 1
    )
