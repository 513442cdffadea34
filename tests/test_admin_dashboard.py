"""The admin dashboard: figures read back from the page, each alert from the state that
raises it (and not from the state next to it)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import insert, update

from service.extensions import db
from service.models import AuditEvent, Delivery, Feed, Issue, IssueStatus, Subscriber
from tests.support.admin import Admin
from tests.support.data import add_subscribers


def _now() -> datetime:
    return datetime.now(UTC)


def _issue(app: Flask, week: str, status: str, **fields: Any) -> int:
    moment = _now() - timedelta(days=1)
    values: dict[str, Any] = {
        "subject": f"Sujet {week}",
        "planned_at": moment,
        "send_at": moment,
        **fields,
    }
    with app.app_context():
        issue = Issue(week=week, status=status, **values)
        db.session.add(issue)
        db.session.commit()
        return int(issue.id)


ALERT = r'<p class="alert" data-alert="([a-z_]+)"[^>]*>(.*?)</p>'
WEEK_ROW = (
    r'<tr><th scope="row">(\d{4}-\d\d-\d\d)</th>'
    r'<td class="num">(\d+)</td><td class="num">(\d+)</td></tr>'
)


def _alerts(html: str) -> dict[str, str]:
    return {kind: re.sub(r"\s+", " ", text).strip() for kind, text in re.findall(ALERT, html, re.S)}


def _card(html: str, status: str) -> int:
    found = re.search(rf'id="subscribers-{status}"><strong class="num">(\d+)</strong>', html)
    assert found, status
    return int(found.group(1))


def test_figures_chart_and_last_issues(app: Flask, admin: Admin) -> None:
    add_subscribers(app, 4)
    ids = add_subscribers(app, 2, status="unsubscribed", start=10)
    with app.app_context():
        db.session.add_all(
            AuditEvent(created_at=_now(), actor="subscriber", action="unsubscribe", subscriber_id=i)
            for i in ids
        )
        # One sign-up three weeks ago, one 20 weeks ago (outside the chart).
        for n, weeks in ((20, 3), (21, 20)):
            db.session.execute(
                insert(Subscriber).values(
                    email=f"old{n}@exemple.fr",
                    search_key=f"old{n}@exemple.fr",
                    status="active",
                    locale="fr",
                    created_at=_now() - timedelta(weeks=weeks),
                    optin_serial=1,
                    consent_at=_now(),
                    consent_text_version="t",
                    confirm_attempts=0,
                )
            )
        db.session.commit()
    for n in range(1, 7):
        _issue(app, f"2026-W{n:02d}", IssueStatus.SENT, recipients=10 * n, sent_count=10 * n)

    html = admin.get("/admin/").get_data(as_text=True)
    assert _card(html, "active") == 6 and _card(html, "unsubscribed") == 2
    assert _card(html, "bounced") == 0

    svg = re.search(r"<svg class=\"chart\".*?</svg>", html, re.S)
    assert svg
    assert '<title id="chart-title">Inscriptions et désabonnements des 12 dernières semaines' in (
        svg.group(0)
    )
    assert svg.group(0).count("<rect ") == 24  # two bars a week, twelve weeks
    assert "<script" not in html.split("</head>", 1)[1]
    rows = re.findall(
        WEEK_ROW,
        html,
    )
    assert len(rows) == 12
    this_monday = (_now().date() - timedelta(days=_now().weekday())).isoformat()
    assert rows[-1] == (this_monday, "6", "2")  # 4 + 2 signed up this week, 2 left
    assert [r[1] for r in rows].count("1") == 1 and sum(int(r[1]) for r in rows) == 7
    # The busiest week's sign-up bar is full height (140 of the 160 units; 20 for the axis).
    assert 'class="signups" x="' in svg.group(0) and 'height="140.0"' in svg.group(0)

    last = re.search(r'<table id="last-issues">(.*?)</table>', html, re.S)
    assert last
    listed = re.findall(r'<tr id="issue-(2026-W\d\d)">', last.group(1))
    assert listed == ["2026-W06", "2026-W05", "2026-W04", "2026-W03", "2026-W02"]
    assert re.search(
        r'issue-2026-W06">.*?<td class="num">60</td>\s*<td class="num">0</td>', last.group(1), re.S
    )
    assert "Rien à signaler." in html


def test_bounce_rate_alert_above_two_percent(app: Flask, admin: Admin) -> None:
    _issue(app, "2026-W40", IssueStatus.SENT, recipients=100, sent_count=97, bounced_count=3)
    _issue(app, "2026-W41", IssueStatus.SENDING, recipients=100, bounced_count=50)  # not finished
    alerts = _alerts(admin.get("/admin/").get_data(as_text=True))
    assert alerts["bounce_rate"].startswith("Le numéro 2026-W40 a eu 3.0 % de rebonds (3 sur 100)")

    _issue(app, "2026-W42", IssueStatus.SENT, recipients=100, sent_count=98, bounced_count=2)
    assert "bounce_rate" not in _alerts(admin.get("/admin/").get_data(as_text=True))


def test_failing_feed_alert(app: Flask, admin: Admin) -> None:
    with app.app_context():
        db.session.add_all(
            [
                Feed(url="https://ok.example/rss", last_result="ok", failures=0),
                Feed(
                    url="https://cassé.example/rss",
                    last_result="error",
                    failures=4,
                    last_error="HTTP 500",
                ),
            ]
        )
        db.session.commit()
    alerts = _alerts(admin.get("/admin/").get_data(as_text=True))
    assert alerts == {
        "feed_failing": "Le flux https://cassé.example/rss est en échec "
        "(4 fois de suite) : HTTP 500"
    }


def test_stalled_queue_alert(app: Flask, admin: Admin) -> None:
    (subscriber,) = add_subscribers(app, 1)
    stale = _now() - timedelta(minutes=25)
    stuck = _issue(
        app, "2026-W30", IssueStatus.SENDING, started_at=stale, progress_at=stale, recipients=1
    )
    moving = _issue(
        app,
        "2026-W31",
        IssueStatus.SENDING,
        started_at=stale,
        progress_at=_now() - timedelta(minutes=2),
    )
    drained = _issue(app, "2026-W29", IssueStatus.SENDING, started_at=stale, progress_at=stale)
    with app.app_context():
        for issue_id, status in ((stuck, "queued"), (moving, "queued"), (drained, "sending")):
            db.session.add(
                Delivery(
                    issue_id=issue_id,
                    subscriber_id=subscriber,
                    status=status,
                    next_attempt_at=stale,
                )
            )
        db.session.commit()
    alerts = _alerts(admin.get("/admin/").get_data(as_text=True))
    assert list(alerts) == ["queue_stalled"]
    assert alerts["queue_stalled"].startswith(
        "L’envoi du numéro 2026-W30 n’avance plus depuis 25 min alors que 1 message attend"
    )
    # A batch recording its outcomes since is progress (it moves progress_at): the alert goes.
    with app.app_context():
        db.session.execute(
            update(Issue)
            .where(Issue.id == stuck)
            .values(progress_at=_now() - timedelta(minutes=1), sent_count=1)
        )
        db.session.commit()
    assert _alerts(admin.get("/admin/").get_data(as_text=True)) == {}


def test_dashboard_needs_a_session(app: Flask) -> None:
    response = app.test_client().get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_dashboard_in_english(app: Flask, admin: Admin) -> None:
    _issue(app, "2026-W40", IssueStatus.SENT, recipients=10, sent_count=7, bounced_count=3)
    html = admin.get("/admin/?lang=en").get_data(as_text=True)
    assert "Sign-ups and unsubscribes over the last 12 weeks" in html
    assert _alerts(html)["bounce_rate"].startswith("Issue 2026-W40 bounced 30.0 % (3 of 10)")


def test_complaint_rate_alert_above_a_tenth_of_a_percent_for_a_month(
    app: Flask, admin: Admin
) -> None:
    started = _now() - timedelta(days=3)
    _issue(
        app, "2026-W45", IssueStatus.SENT, started_at=started, sent_count=1000, complaint_count=2
    )
    _issue(
        app, "2026-W46", IssueStatus.SENT, started_at=started, sent_count=1000, complaint_count=1
    )
    # Two months ago: complaints that old no longer raise anything.
    old = _now() - timedelta(days=60)
    _issue(app, "2026-W40", IssueStatus.SENT, started_at=old, sent_count=100, complaint_count=50)
    alerts = _alerts(admin.get("/admin/").get_data(as_text=True))
    assert alerts["complaint_rate"].startswith(
        "Numéro 2026-W45 signalé comme spam par des lecteurs : 2 plaintes pour 1000 envois (0.2 %)"
    )
    assert "2026-W46" not in alerts["complaint_rate"] and "2026-W40" not in str(alerts)
