"""Click counts without tracking anybody: the digest's `/c/<week>/<n>/<signature>` links,
read from mails as they came off the wire, followed like a browser, a scanner and a forger
would, and the counts read back where editors see them."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import select, update

from service.digest import clicks
from service.digest.planning import get_issue, plan_issue
from service.digest.rendering import render_issue
from service.extensions import db
from service.mail.message import Markers
from service.models import Issue, IssueArticle, Subscriber
from service.subscribers.tokens import preferences_token_for, unsubscribe_token_for
from tests.support.admin import Admin, api_token, create_admin
from tests.support.data import add_article, metric_value
from tests.support.sending import NOW, WEEK, send_to_readers
from tests.support.settings import BASE_URL
from tests.support.smtp import Received, SMTPSink

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15"
CLICK_URL = re.compile(re.escape(BASE_URL) + r"/c/[^\s\"'<>]+")


def _links(mail: Received) -> list[str]:
    """Every /c/ URL of both parts, in order (the text part first)."""
    return [u for part in ("plain", "html") for u in CLICK_URL.findall(mail.part(part))]


def _sent(app: Flask, smtp_server: SMTPSink) -> dict[str, Received]:
    # Two articles besides the one send_to_readers adds: three positions.
    add_article(app, 2, NOW - timedelta(days=2), category="IA")
    add_article(app, 3, NOW - timedelta(days=3), category="Culture")
    return send_to_readers(app, smtp_server, count=3)


def _clicks(app: Flask) -> dict[str, int]:
    with app.app_context():
        db.session.expire_all()
        rows = db.session.execute(select(IssueArticle.url, IssueArticle.clicks))
        return dict(rows.tuples().all())


def _path(url: str) -> str:
    return urlsplit(url).path


def test_mail_links_name_no_reader_and_lead_every_reader_to_the_counted_article(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    app = smtp_app
    mails = _sent(app, smtp_server)
    settings = app.config["SETTINGS"]
    with app.app_context():
        readers = {
            email: (sid, created)
            for email, sid, created in db.session.execute(
                select(Subscriber.email, Subscriber.id, Subscriber.created_at)
            )
        }
    links = {email: _links(mail) for email, mail in mails.items()}
    first = next(iter(links.values()))
    # Both parts link every article through /c/, and every reader gets the same URLs.
    assert len(set(first)) == 3 and len(first) >= 6
    assert all(found == first for found in links.values())
    for email, found in links.items():
        sid, created = readers[email]
        personal = [
            email,
            email.split("@")[0],
            unsubscribe_token_for(settings, sid, created),
            preferences_token_for(settings, sid, created),
        ]
        for url in found:
            # Nothing but the week, the position and a 16-character signature.
            assert re.fullmatch(re.escape(BASE_URL) + r"/c/2026-W48/[0-2]/[\w-]{16}", url), url
            assert not any(piece in url for piece in personal)
    client = app.test_client()
    targets = set()
    for url in set(first):
        answer = client.get(_path(url), headers={"User-Agent": BROWSER})
        assert answer.status_code == 302
        assert answer.headers["Cache-Control"] == "no-store"
        targets.add(answer.headers["Location"])
    assert targets == {f"https://lhebdo.example/articles/{n}" for n in (1, 2, 3)}
    assert _clicks(app) == {f"https://lhebdo.example/articles/{n}": 1 for n in (1, 2, 3)}


def _one_link(app: Flask, smtp_server: SMTPSink) -> tuple[str, str]:
    """A reader's link to the first article, and that article's URL."""
    mails = send_to_readers(app, smtp_server, count=1)
    mail = next(iter(mails.values()))
    return _path(_links(mail)[0]), "https://lhebdo.example/articles/1"


def test_a_replay_from_a_browser_counts_but_head_scanners_and_the_burst_do_not(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    app = smtp_app
    path, target = _one_link(app, smtp_server)
    client = app.test_client()
    before = client.get("/metrics").get_data(as_text=True)

    for _ in range(2):  # a replay is one more click
        assert client.get(path, headers={"User-Agent": BROWSER}).headers["Location"] == target
    assert _clicks(app)[target] == 2

    head = client.head(path, headers={"User-Agent": BROWSER})
    assert head.status_code == 302 and head.headers["Location"] == target
    for agent in (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) BingPreview/1.0b",
        "Barracuda Sentinel (EE)",
        "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
        "facebookexternalhit/1.1",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "python-requests/2.32.3",
        "curl/8.5.0",
        "",
    ):
        answer = client.get(path, headers={"User-Agent": agent})
        assert answer.status_code == 302 and answer.headers["Location"] == target, agent
    assert _clicks(app)[target] == 2

    # Right after the issue handed mail to the relay, gateways fetch every link.
    with app.app_context():
        db.session.execute(update(Issue).values(progress_at=datetime.now(UTC)))
        db.session.commit()
    burst = client.get(path, headers={"User-Agent": BROWSER})
    assert burst.status_code == 302 and burst.headers["Location"] == target
    assert _clicks(app)[target] == 2

    after = client.get("/metrics").get_data(as_text=True)
    for result, n in (("counted", 2), ("head", 1), ("scanner", 8), ("burst", 1)):
        gained = metric_value(after, "hebdo_clicks_total", result=result) - metric_value(
            before, "hebdo_clicks_total", result=result
        )
        assert gained == n, result


def test_forged_and_unknown_links_get_404_and_never_a_redirect(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    app = smtp_app
    path, target = _one_link(app, smtp_server)
    _empty, _c, week, position, sig = path.split("/")
    other = "A" if sig[0] != "A" else "B"
    client = app.test_client()
    for bad in (
        f"/c/{week}/{position}/{other}{sig[1:]}",  # one character changed
        f"/c/{week}/{position}/{sig[:-1]}",  # truncated
        f"/c/{week}/{position}/{sig}=",  # another spelling
        f"/c/{week}/1/{sig}",  # another position with this signature
        f"/c/2026-W47/{position}/{sig}",  # another issue
        f"/c/{week}/7/{clicks._sign(app.config['SETTINGS'].secret_key, week, 7, 1)}",  # no article
        f"/c/{week}/{position}/{clicks._sign('not-our-key', week, 0, 1)}",  # another key
        f"/c/{week}/{position}/{sig}?url=https://evil.example/",
    ):
        answer = client.get(bad, headers={"User-Agent": BROWSER})
        if "?url=" in bad:  # a parameter names no target: still our article
            assert answer.status_code == 302 and answer.headers["Location"] == target
            continue
        assert answer.status_code == 404, bad
        assert "Location" not in answer.headers
    assert _clicks(app)[target] == 1


def test_links_keep_working_after_a_key_rotation(
    smtp_app: Flask,
    smtp_server: SMTPSink,
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
) -> None:
    path, target = _one_link(smtp_app, smtp_server)
    rotated = make_app(
        {
            **smtp_env,
            "HEBDO_SECRET_KEY": "a-new-secret-key-after-rotation-0123456789",
            "HEBDO_SECRET_KEY_FALLBACKS": smtp_env["HEBDO_SECRET_KEY"],
        }
    )
    answer = rotated.test_client().get(path, headers={"User-Agent": BROWSER})
    assert answer.status_code == 302 and answer.headers["Location"] == target
    forgotten = make_app(
        {**smtp_env, "HEBDO_SECRET_KEY": "a-new-secret-key-after-rotation-0123456789"}
    )
    assert forgotten.test_client().get(path, headers={"User-Agent": BROWSER}).status_code == 404


def test_a_database_error_while_counting_still_redirects(
    smtp_app: Flask, smtp_server: SMTPSink, caplog: pytest.LogCaptureFixture
) -> None:
    app = smtp_app
    path, target = _one_link(app, smtp_server)
    # The count's UPDATE fails (as it would on a read-only replica or a lock timeout);
    # the lookup before it works.
    with app.app_context():
        dialect = db.engine.dialect.name
        if dialect == "sqlite":
            db.session.execute(
                db.text(
                    "CREATE TRIGGER no_clicks BEFORE UPDATE OF clicks ON issue_articles "
                    "BEGIN SELECT RAISE(ABORT, 'read only'); END"
                )
            )
        else:
            db.session.execute(
                db.text(
                    "CREATE OR REPLACE FUNCTION no_clicks() RETURNS trigger AS "
                    "$$ BEGIN RAISE EXCEPTION 'read only'; END $$ LANGUAGE plpgsql"
                )
            )
            db.session.execute(
                db.text(
                    "CREATE TRIGGER no_clicks BEFORE UPDATE OF clicks ON issue_articles "
                    "FOR EACH ROW EXECUTE FUNCTION no_clicks()"
                )
            )
        db.session.commit()
    answer = app.test_client().get(path, headers={"User-Agent": BROWSER})
    assert answer.status_code == 302 and answer.headers["Location"] == target
    assert "not counted" in caplog.text
    with app.app_context():
        db.session.execute(
            db.text(
                "DROP TRIGGER no_clicks" + ("" if dialect == "sqlite" else " ON issue_articles")
            )
        )
        db.session.commit()
    assert _clicks(app)[target] == 0


def test_clicks_on_the_admin_issue_page_the_api_and_the_dashboard(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    app = smtp_app
    mails = _sent(app, smtp_server)
    client = app.test_client()
    first = _links(next(iter(mails.values())))
    ordered = list(dict.fromkeys(first))
    # Article 2 (IA) read three times, article 1 (International) once, article 3 never.
    by_target = {}
    for url in ordered:
        answer = client.get(_path(url), headers={"User-Agent": BROWSER})
        by_target[answer.headers["Location"].rsplit("/", 1)[1]] = _path(url)
    for _ in range(2):
        client.get(by_target["2"], headers={"User-Agent": BROWSER})
    with app.app_context():
        db.session.execute(
            update(IssueArticle)
            .where(IssueArticle.url == "https://lhebdo.example/articles/3")
            .values(clicks=0)
        )
        db.session.commit()

    answer = client.get(f"/api/v1/admin/issues/{WEEK}", headers=api_token(app, "editor"))
    counts = {a["url"].rsplit("/", 1)[1]: a["clicks"] for a in answer.get_json()["articles"]}
    assert counts == {"1": 1, "2": 3, "3": 0}

    create_admin(app)
    admin = Admin(app.test_client())
    assert admin.login().status_code == 302
    page = admin.get(f"/admin/issues/{WEEK}").get_data(as_text=True)
    shown = re.findall(r'articles/(\d)".*?<span class="clicks">(\d+) clics?</span>', page)
    assert sorted(shown) == [("1", "1"), ("2", "3"), ("3", "0")]

    # The dashboard looks at the issues started over the last 12 weeks, from today.
    _started(app, datetime.now(UTC) - timedelta(weeks=11))
    board = admin.get("/admin/").get_data(as_text=True)
    articles = re.search(r'<table id="most-read-articles">.*?</table>', board, re.S)
    assert articles
    rows = re.findall(r'articles/(\d)".*?<td class="num">(\d+)</td>', articles.group(0))
    assert rows == [("2", "3"), ("1", "1")]  # most read first; never clicked left out
    categories = re.search(r'<table id="most-read-categories">.*?</table>', board, re.S)
    assert categories
    assert re.findall(
        r'<th scope="row">([^<]+)</th><td class="num">(\d+)</td>', categories.group(0)
    ) == [("IA", "3"), ("International", "1")]
    _started(app, datetime.now(UTC) - timedelta(weeks=13))
    board = admin.get("/admin/").get_data(as_text=True)
    assert 'id="most-read-articles"' not in board and "Aucun clic compté" in board


def _started(app: Flask, moment: datetime) -> None:
    with app.app_context():
        db.session.execute(update(Issue).values(started_at=moment))
        db.session.commit()


def test_click_counts_off_gives_direct_links_and_the_archive_links_directly(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    app = make_app({**smtp_env, "HEBDO_CLICK_COUNTS": "0"})
    mail = next(iter(send_to_readers(app, smtp_server, count=1).values()))
    assert "/c/" not in mail.part("html") and "/c/" not in mail.part("plain")
    assert 'href="https://lhebdo.example/articles/1"' in mail.part("html")
    assert "https://lhebdo.example/articles/1" in mail.part("plain")
    archive = app.test_client().get(f"/archive/{WEEK}").get_data(as_text=True)
    assert 'href="https://lhebdo.example/articles/1"' in archive and "/c/" not in archive


def test_the_web_version_links_articles_directly_with_counts_on(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    send_to_readers(smtp_app, smtp_server, count=1)
    archive = smtp_app.test_client().get(f"/archive/{WEEK}").get_data(as_text=True)
    assert 'href="https://lhebdo.example/articles/1"' in archive and "/c/" not in archive


def test_clicks_in_a_test_mail_before_the_send_lead_to_the_article_but_do_not_count(
    app: Flask,
) -> None:
    add_article(app, 1, NOW - timedelta(days=1))
    settings = app.config["SETTINGS"]
    with app.app_context():
        plan_issue(settings, WEEK, NOW)
        issue = get_issue(WEEK)
        assert issue is not None and issue.started_at is None
        html = render_issue(settings, issue, "fr", markers=Markers()).html  # the mail
    path = _path(CLICK_URL.findall(html)[0])
    answer = app.test_client().get(path, headers={"User-Agent": BROWSER})
    assert answer.headers["Location"] == "https://lhebdo.example/articles/1"
    assert _clicks(app) == {"https://lhebdo.example/articles/1": 0}
