"""`hebdo digest …` as an editor uses it: plan, preview, test, send, status, steer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

from flask import Flask

from service.digest.planning import get_issue, upcoming_week
from service.extensions import db
from service.models import Subscriber
from tests.support.data import add_article, add_subscribers
from tests.support.smtp import SMTPSink


def _cli(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=list(args))
    return result.exit_code, result.output


def test_plan_preview_and_test_show_exactly_what_subscribers_get(
    smtp_app: Flask, smtp_server: SMTPSink, tmp_path: Path
) -> None:
    app = smtp_app
    now = datetime.now(UTC)
    add_article(app, 1, now - timedelta(hours=5), title="Grand titre de la semaine")
    ids = add_subscribers(app, 1, locale="en")
    week = upcoming_week(app.config["SETTINGS"], now)

    code, out = _cli(app, "digest", "plan")
    assert code == 0 and out.startswith(f"{week}: scheduled, 1 article,")
    code, out = _cli(app, "digest", "plan", "--week", "2026-W60")
    assert code == 2 and "2026 has no week 60" in out

    code, text = _cli(app, "digest", "preview")
    assert code == 0 and "Grand titre de la semaine" in text and "Lire l’article" in text
    # As one subscriber: their locale, their address, their working unsubscribe link.
    eml = tmp_path / "reader.eml"
    code, _ = _cli(app, "digest", "preview", "--email", "READER0@exemple.fr", "--out", str(eml))
    assert code == 0
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["To"] == "reader0@exemple.fr"
    plain = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Read the article: " in plain and "reader0@exemple.fr" in plain
    unsubscribe = message["List-Unsubscribe"].split("<", 1)[1].split(">", 1)[0]
    # The preview's link is this subscriber's own: its one-click POST unsubscribes them.
    one_click = app.test_client().post(
        unsubscribe.removeprefix("https://hebdo.example.fr"),
        data={"List-Unsubscribe": "One-Click"},
    )
    assert one_click.status_code == 200
    with app.app_context():
        assert db.session.get(Subscriber, ids[0]).status == "unsubscribed"  # type: ignore[union-attr]
    html = tmp_path / "reader.html"
    assert _cli(app, "digest", "preview", "--out", str(html))[0] == 0
    assert html.read_text().startswith("<!DOCTYPE html>") and "Grand titre" in html.read_text()

    code, out = _cli(app, "digest", "test", "--to", "redaction@exemple.fr")
    assert code == 0 and "sent to redaction@exemple.fr" in out
    sent = smtp_server.wait_for(1)[0]
    assert sent.rcpt_tos == ["redaction@exemple.fr"]
    assert sent.message["Subject"].startswith("[TEST] ")
    code, out = _cli(app, "digest", "test", "--to", "pas une adresse")
    assert code == 2 and "invalid address" in out
    with app.app_context():
        issue = get_issue(week)
        assert issue is not None and issue.status == "scheduled" and issue.recipients == 0


def test_send_status_pause_resume_cancel_from_the_command_line(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    # No worker here: the batch tasks wait in the broker, which is what pausing needs.
    app = make_app({**env, "HEBDO_SEND_BATCH": "2"})
    now = datetime.now(UTC)
    add_article(app, 1, now - timedelta(hours=5))
    add_subscribers(app, 5)
    week = upcoming_week(app.config["SETTINGS"], now)

    code, out = _cli(app, "digest", "send")
    assert code == 0 and "scheduled" in out  # without --now: at the scheduled time
    code, out = _cli(app, "digest", "send", "--now", "--yes")
    assert code == 0 and "sending to 5 subscribers (3 batch tasks queued)" in out
    code, out = _cli(app, "digest", "status")
    assert code == 0 and f"{week} sending: 0/5 done (0.0 %)" in out and "queued 5" in out
    assert _cli(app, "digest", "pause") == (0, f"{week}: paused\n")
    code, out = _cli(app, "digest", "pause")
    assert code == 1 and "cannot pause" in out
    assert _cli(app, "digest", "resume")[0] == 0
    assert _cli(app, "digest", "cancel")[0] == 0
    code, out = _cli(app, "digest", "status")
    assert "cancelled" in out and "skipped 5" in out
    code, out = _cli(app, "digest", "send", "--now", "--yes")
    assert code == 1 and "cancelled" in out
    code, out = _cli(app, "digest", "status", "--week", "2026-W01")
    assert code == 1 and "no issue for 2026-W01" in out
    with app.app_context():
        db.session.remove()
