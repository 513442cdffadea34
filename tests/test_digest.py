"""Planning and rendering the weekly issue: one issue a week, the right articles, the DST
Monday, review mode, and the mail as it leaves (parsed back from the wire bytes)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, select

from service import i18n
from service.digest import actions, delivery, lifecycle
from service.digest.articles import ArticleInput, store_article
from service.digest.planning import (
    get_issue,
    issue_articles,
    parse_week,
    plan_issue,
    send_time,
    upcoming_week,
    week_of,
)
from service.digest.rendering import Recipient, mail_for, mail_template
from service.extensions import db
from service.mail.transport import open_transport
from service.models import Delivery, Issue, IssueStatus
from tests.support.data import add_article, add_subscribers
from tests.support.settings import BASE_URL
from tests.support.smtp import DIGEST_HEADERS, SMTPSink

# Monday 30 March 2026 is the first Monday of summer time in Paris (UTC+2, the day after
# the change); the Monday before is still winter time (UTC+1).
SUMMER_MONDAY = "2026-W14"
WINTER_MONDAY = "2026-W13"
NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # Monday 08:00 in Paris: W48's send time


def settings_of(app: Flask) -> object:
    return app.config["SETTINGS"]


def plan(app: Flask, week: str, now: datetime) -> delivery.PlanResult:  # type: ignore[name-defined]
    with app.app_context():
        return plan_issue(app.config["SETTINGS"], week, now)


def no_enqueue(issue_id: int) -> bool:
    return True


def start_week(app: Flask, week: str = "2026-W48") -> int:
    """Plan the week's issue at NOW and start sending it; its id."""
    with app.app_context():
        s = app.config["SETTINGS"]
        plan_issue(s, week, NOW)
        issue = get_issue(week)
        assert issue is not None
        delivery.start_send(s, issue.id, NOW)
        return issue.id


def test_send_time_follows_paris_wall_clock_across_daylight_saving(app: Flask) -> None:
    s = app.config["SETTINGS"]
    assert send_time(s, WINTER_MONDAY).astimezone(UTC) == datetime(2026, 3, 23, 7, 0, tzinfo=UTC)
    assert send_time(s, SUMMER_MONDAY).astimezone(UTC) == datetime(2026, 3, 30, 6, 0, tzinfo=UTC)
    # Back to winter time on Sunday 25 October.
    assert send_time(s, "2026-W44").astimezone(UTC) == datetime(2026, 10, 26, 7, 0, tzinfo=UTC)
    # Sunday 23:30 UTC is already Monday in Paris: the week is read on the local calendar.
    assert week_of(s, datetime(2026, 3, 29, 22, 30, tzinfo=UTC)) == SUMMER_MONDAY
    with pytest.raises(ValueError):
        parse_week("2026-W54")
    assert parse_week(" 2026-w09 ") == "2026-W09"
    with pytest.raises(ValueError):
        parse_week("2026-W9")  # ISO writes two digits


def test_the_beat_sends_at_eight_on_the_dst_monday_and_not_an_hour_early(
    app: Flask,
) -> None:
    add_subscribers(app, 3)
    add_article(app, 1, datetime(2026, 3, 27, 10, 0, tzinfo=UTC))
    queued: list[int] = []
    with app.app_context():
        s = app.config["SETTINGS"]
        # 07:59 in Paris (05:59 UTC): winter-time arithmetic would already have sent at 07:00 UTC
        # the week before; this week nothing happens yet.
        actions.tick(s, datetime(2026, 3, 30, 5, 59, tzinfo=UTC), queued.append)
        assert get_issue(SUMMER_MONDAY) is None and queued == []
        actions.tick(s, datetime(2026, 3, 30, 6, 0, 30, tzinfo=UTC), queued.append)
        issue = get_issue(SUMMER_MONDAY)
        assert issue is not None and issue.status == IssueStatus.SENDING
        assert issue.recipients == 3 and len(queued) == 1


def test_a_week_is_planned_once_whatever_the_ticks_workers_and_commands(app: Flask) -> None:
    add_subscribers(app, 5)
    for n in range(3):
        add_article(app, n, NOW - timedelta(days=n + 1))
    queued: list[int] = []
    with app.app_context():
        s = app.config["SETTINGS"]
        for second in range(5):
            actions.tick(s, NOW + timedelta(seconds=second), queued.append)
        assert plan_issue(s, "2026-W48", NOW).changed is False
        issue_count = db.session.execute(select(func.count()).select_from(Issue)).scalar_one()
        deliveries = db.session.execute(select(func.count()).select_from(Delivery)).scalar_one()
    assert issue_count == 1
    assert deliveries == 5
    assert len(queued) == 1  # one batch of five, dispatched once


def test_planning_picks_new_articles_grouped_by_category_newest_first_and_capped(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    app = make_app({**env, "HEBDO_DIGEST_MAX_ARTICLES": "4"})
    add_article(app, 1, NOW - timedelta(days=1), category="IA")
    add_article(app, 2, NOW - timedelta(days=2), category="International")
    add_article(app, 3, NOW - timedelta(days=3), category="IA")
    add_article(app, 4, NOW - timedelta(days=4), category="")
    add_article(app, 5, NOW - timedelta(days=5), category="Marketing")  # beyond the cap
    add_article(app, 6, NOW - timedelta(days=9), category="IA")  # before the first week
    add_article(app, 7, NOW + timedelta(hours=1), category="IA")  # not yet published
    result = plan(app, "2026-W48", NOW)
    assert result.articles == 4
    with app.app_context():
        issue = get_issue("2026-W48")
        assert issue is not None
        order = [a.url.rsplit("/", 1)[1] for a in issue_articles(issue.id)]
        # IA holds the newest article, so it comes first; uncategorised goes last.
        assert order == ["1", "3", "2", "4"]
        assert issue.subject == "Article numéro 1"
    # Next week: only what is new since, never an article twice (5 was left out by the cap
    # and is older than the previous issue, so it stays out).
    add_article(app, 8, NOW + timedelta(days=2), category="Startups")
    result = plan(app, "2026-W49", NOW + timedelta(days=7))
    with app.app_context():
        issue = get_issue("2026-W49")
        assert issue is not None
        assert [a.url.rsplit("/", 1)[1] for a in issue_articles(issue.id)] == ["8", "7"]


def test_a_week_without_articles_sends_nothing_and_says_so_once(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    add_subscribers(app, 2)
    queued: list[int] = []
    caplog.set_level(logging.INFO, logger="service.digest.planning")
    with app.app_context():
        s = app.config["SETTINGS"]
        for minute in range(3):
            actions.tick(s, NOW + timedelta(minutes=minute), queued.append)
        issue = get_issue("2026-W48")
        assert issue is not None and issue.status == IssueStatus.CANCELLED
        assert issue.note == "no new articles"
        deliveries = db.session.execute(select(func.count()).select_from(Delivery)).scalar_one()
    assert deliveries == 0 and queued == []
    said = [r for r in caplog.records if "no new articles" in r.getMessage()]
    assert len(said) == 1


def test_review_mode_plans_a_draft_the_day_before_and_sends_only_once_approved(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    app = make_app({**env, "HEBDO_REVIEW": "1"})
    add_subscribers(app, 2)
    add_article(app, 1, NOW - timedelta(days=2))
    queued: list[int] = []
    with app.app_context():
        s = app.config["SETTINGS"]
        sunday = NOW - timedelta(hours=23)  # Sunday 09:00 in Paris, still ISO week 47
        actions.tick(s, sunday, queued.append)
        issue = get_issue("2026-W48")
        assert issue is not None and issue.status == IssueStatus.DRAFT
        actions.tick(s, NOW + timedelta(minutes=1), queued.append)
        assert get_issue("2026-W48").status == IssueStatus.DRAFT  # type: ignore[union-attr]
        assert queued == []
        assert lifecycle.approve(issue.id, NOW + timedelta(minutes=2))
        actions.tick(s, NOW + timedelta(minutes=3), queued.append)
        assert get_issue("2026-W48").status == IssueStatus.SENDING  # type: ignore[union-attr]
    assert len(queued) == 1


def test_a_send_missed_by_more_than_a_day_is_not_caught_up_by_the_beat(app: Flask) -> None:
    add_subscribers(app, 1)
    add_article(app, 1, NOW - timedelta(days=1))
    with app.app_context():
        actions.tick(app.config["SETTINGS"], NOW + timedelta(days=3), no_enqueue)
        assert get_issue("2026-W48") is None
        actions.tick(app.config["SETTINGS"], NOW + timedelta(hours=5), no_enqueue)
        assert get_issue("2026-W48").status == IssueStatus.SENDING  # type: ignore[union-attr]


def _render(app: Flask, locale: str = "fr") -> bytes:
    with app.app_context():
        s = app.config["SETTINGS"]
        issue = get_issue("2026-W48")
        assert issue is not None
        template = mail_template(s, issue, locale)
        recipient = Recipient(1, "lectrice@exemple.fr", locale, NOW)
        return mail_for(s, template, recipient, NOW).data


def test_the_digest_on_the_wire_is_standards_clean_and_escapes_feed_text(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    app = smtp_app
    add_article(
        app,
        1,
        NOW - timedelta(days=1),
        title='<script>alert("x")</script>Budget & défense',
        summary='<img src=x onerror="alert(1)">Le <b>résumé</b>\r\nBcc: victim@example.com',
        image_url="https://lhebdo.example/images/1.jpg",
    )
    add_article(app, 2, NOW - timedelta(days=2), category="IA", author="Julien Marchand")
    plan(app, "2026-W48", NOW)
    with app.app_context(), open_transport(app.config["SETTINGS"]) as transport:
        transport.send(
            mail_for(
                app.config["SETTINGS"],
                mail_template(app.config["SETTINGS"], get_issue("2026-W48"), "fr"),  # type: ignore[arg-type]
                Recipient(1, "lectrice@exemple.fr", "fr", NOW),
                NOW,
            )
        )
    mail = smtp_server.wait_for(1)[0]
    raw = mail.data
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    assert mail.rcpt_tos == ["lectrice@exemple.fr"]
    names = [line.split(":", 1)[0] for line in head.split("\r\n") if not line.startswith(" ")]
    assert sorted(names) == sorted(DIGEST_HEADERS)
    assert "Bcc" not in head and "victim" not in head
    assert re.search(
        r"^List-Unsubscribe: <https://hebdo\.example\.fr/unsubscribe/[\w.-]+>,\r\n <mailto:",
        head,
        re.M,
    )
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
    message = mail.message
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    # The lead's title and the count; the sender's name is in From, not repeated here.
    assert message["Subject"] == "«\u00a0Budget & défense\u00a0» et 1 autre article"
    html, text = mail.part("html"), mail.part("plain")
    assert "<script" not in html and "onerror" not in html and "<b>" not in html
    assert "Budget &amp; défense" in html or "Budget &amp; d&eacute;fense" in html
    assert "alert(1)" not in text and "Le résumé Bcc: victim@example.com" in text
    # Article links go through the click counter (tests/test_clicks.py), in both parts.
    assert re.search(r"\u00a0: https://hebdo\.example\.fr/c/2026-W48/\d/[\w-]{16}$", text, re.M)
    assert "lectrice@exemple.fr" in text and "lectrice@exemple.fr" in html
    # Every link is absolute: on HEBDO_BASE_URL (ours) or the article's own site.
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert hrefs and all(h.startswith(("https://lhebdo.example/", BASE_URL + "/")) for h in hrefs)
    ours = {urlsplit(h).path.split("/")[1] for h in hrefs if h.startswith(BASE_URL)}
    assert {"unsubscribe", "archive", "subscribe", "preferences"} <= ours
    # Styles are inlined (Gmail drops <style> in some views), 600 px table layout.
    assert 'class="sheet"' in html and 'width="600"' in html and "style=" in html
    assert "max-width: 536px" in html or "max-width:536px" in html


def test_english_subscribers_get_the_english_frame(app: Flask) -> None:
    add_article(app, 1, NOW - timedelta(days=1))
    plan(app, "2026-W48", NOW)
    raw = _render(app, "en")
    from email import message_from_bytes, policy

    message = message_from_bytes(raw, policy=policy.default)
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Week of 23 November 2026" in text and "Read the article: " in text
    assert "Unsubscribe in one click:" in text
    french = message_from_bytes(_render(app, "fr"), policy=policy.default)
    body = french.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Semaine du 23 novembre 2026" in body


def test_archive_shows_sent_issues_without_personal_data(app: Flask) -> None:
    add_subscribers(app, 2)
    add_article(app, 1, NOW - timedelta(days=1), title="Une histoire <em>d’archives</em>")
    client = app.test_client()
    plan(app, "2026-W48", NOW)
    assert client.get("/archive/2026-W48").status_code == 404  # not sent yet
    with app.app_context():
        issue = get_issue("2026-W48")
        assert issue is not None
        delivery.start_send(app.config["SETTINGS"], issue.id, NOW)
    listing = client.get("/archive")
    assert listing.status_code == 200 and "/archive/2026-W48" in listing.text
    # One article: the singular, in either language.
    assert "2026-W48 · 1\u00a0article<" in listing.text
    assert "2026-W48 · 1 story<" in client.get("/archive?lang=en").text
    page = client.get("/archive/2026-W48")
    assert page.status_code == 200
    assert "Une histoire d’archives" in page.text and "<em>" not in page.text
    assert "reader0@exemple.fr" not in page.text and "/unsubscribe/" not in page.text
    assert "img-src https:" in page.headers["Content-Security-Policy"]
    assert client.get("/archive/2026-W99").status_code == 404
    assert client.get("/archive/2026-W60").status_code == 404  # no such week


def test_a_sunday_evening_send_missed_until_monday_is_still_caught_up(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    app = make_app({**env, "HEBDO_SEND_SCHEDULE": "sun 20:00"})
    add_subscribers(app, 1)
    add_article(app, 1, datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    with app.app_context():
        s = app.config["SETTINGS"]
        # Beat was down from Sunday 29 November 19:00 until Monday 02:00 (Paris): ISO week 49
        # has begun, but week 48's send is only 6 hours late.
        actions.tick(s, datetime(2026, 11, 30, 1, 0, tzinfo=UTC), no_enqueue)
        issue = get_issue("2026-W48")
        assert issue is not None and issue.status == IssueStatus.SENDING
        assert get_issue("2026-W49") is None


def test_an_article_committed_just_after_planning_goes_in_the_next_issue(app: Flask) -> None:
    planned = NOW
    with app.app_context():
        s = app.config["SETTINGS"]
        add_article(app, 1, planned - timedelta(days=1))
        assert plan_issue(s, "2026-W48", planned).articles == 1
        # A feed read that started 20 s before planning commits its items after it.
        for n, published in ((2, planned - timedelta(hours=1)), (3, None)):
            store_article(
                ArticleInput(
                    url=f"https://lhebdo.example/late/{n}",
                    title=f"Tard {n}",
                    published_at=published,
                ),
                source="feed",
                now=planned - timedelta(seconds=20),
            )
        db.session.commit()
        plan_issue(s, "2026-W49", planned + timedelta(days=7))
        issue = get_issue("2026-W49")
        assert issue is not None
        assert sorted(a.title for a in issue_articles(issue.id)) == ["Tard 2", "Tard 3"]


def test_a_cancelled_issue_that_went_out_keeps_its_articles_and_its_web_page(app: Flask) -> None:
    add_subscribers(app, 2)
    add_article(app, 1, NOW - timedelta(days=1))
    issue_id = start_week(app)
    with app.app_context():
        assert lifecycle.cancel(issue_id, NOW)
    assert app.test_client().get("/archive/2026-W48").status_code == 200
    add_article(app, 2, NOW + timedelta(days=3))
    with app.app_context():
        plan_issue(app.config["SETTINGS"], "2026-W49", NOW + timedelta(days=7))
        next_issue = get_issue("2026-W49")
        assert next_issue is not None
        assert [a.url.rsplit("/", 1)[1] for a in issue_articles(next_issue.id)] == ["2"]


def test_a_draft_never_approved_gives_its_articles_to_the_next_issue(
    make_app: Callable[[dict[str, str]], Flask],
    env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app({**env, "HEBDO_REVIEW": "1"})
    add_article(app, 1, NOW - timedelta(days=2))
    with app.app_context():
        s = app.config["SETTINGS"]
        actions.tick(s, NOW - timedelta(hours=20), no_enqueue)
        assert get_issue("2026-W48").status == IssueStatus.DRAFT  # type: ignore[union-attr]
        actions.tick(s, NOW + timedelta(hours=25), no_enqueue)
        stale = get_issue("2026-W48")
        assert stale is not None and stale.status == IssueStatus.CANCELLED
        assert "not approved in time" in (stale.note or "")
        plan_issue(s, "2026-W49", NOW + timedelta(days=6))
        issue = get_issue("2026-W49")
        assert issue is not None and len(issue_articles(issue.id)) == 1
    assert any("never approved" in r.getMessage() for r in caplog.records)


def test_what_readers_got_is_what_the_archive_keeps(app: Flask) -> None:
    add_subscribers(app, 1)
    add_article(app, 1, NOW - timedelta(days=1), title="Titre du lundi")
    start_week(app)
    # The feed corrects the title on Tuesday: the sent issue does not change.
    add_article(app, 1, NOW - timedelta(days=1), title="Titre corrigé")
    page = app.test_client().get("/archive/2026-W48?lang=fr")
    assert "Titre du lundi" in page.text and "Titre corrigé" not in page.text
    assert page.headers["Vary"] == "Accept-Language"


def test_the_week_commands_mean_follows_the_schedule(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    app = make_app({**env, "HEBDO_SEND_SCHEDULE": "sunday 20:00"})
    s = app.config["SETTINGS"]
    # Monday 02:00 in Paris: the Sunday-evening issue is still "this week's".
    assert upcoming_week(s, datetime(2026, 11, 30, 1, 0, tzinfo=UTC)) == "2026-W48"
    # Thursday: the next one.
    assert upcoming_week(s, datetime(2026, 12, 3, 9, 0, tzinfo=UTC)) == "2026-W49"
    assert i18n.format_date("fr", date(2027, 3, 1)) == "1er mars 2027"
    assert i18n.format_date("en", date(2027, 3, 1)) == "1 March 2027"


class _Links(HTMLParser):
    """Each link of an HTML part with the text a screen reader would name it by (its text,
    or the alt of an image inside), and the page's headings and landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []
        self._open: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self._open = []
        elif tag == "img" and self._open is not None:
            self._open.append(dict(attrs).get("alt") or "")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.links.append(" ".join("".join(self._open).split()))
            self._open = None


def test_every_link_of_the_digest_has_a_name_and_the_web_version_a_main_and_h1(
    app: Flask,
) -> None:
    add_subscribers(app, 1)
    add_article(
        app, 1, NOW - timedelta(days=1), title="Une photo", image_url="https://lhebdo.example/1.jpg"
    )
    add_article(app, 2, NOW - timedelta(days=2), title="Sans photo")
    plan(app, "2026-W48", NOW)
    message = message_from_bytes(_render(app), policy=policy.default)
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    mail = _Links()
    mail.feed(html)
    # No image link without a name: the picture is inside its title's link.
    # (The lead's picture carries the title as its alt text, inside the same link.)
    assert any(name.startswith("Une photo") for name in mail.links)
    assert "Sans photo" in mail.links
    assert all(mail.links), mail.links
    assert mail.tags.count("img") == 1 and "h1" in mail.tags

    start_week(app)
    web = _Links()
    web.feed(app.test_client().get("/archive/2026-W48").get_data(as_text=True))
    assert all(web.links), web.links
    assert web.tags.count("main") == 1 and web.tags.count("h1") == 1
