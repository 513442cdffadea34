"""Feed ingestion against a real HTTP server on loopback: conditional GET, idempotent re-reads,
and feeds that are down, slow, malformed, huge or hostile next to a good one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask import Flask
from sqlalchemy import select

from service.digest import feeds
from service.digest.articles import ArticleInput, plain_text, store_article
from service.extensions import db
from service.models import Article, Feed
from tests.support.smtp import free_port

RSS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Site</title><link>https://lhebdo.example/</link>
<language>fr-FR</language>
<item><title>{title}</title><link>https://lhebdo.example/a/1</link><guid>a-1</guid>
<description>Premier résumé.</description><category>IA</category>
<pubDate>Mon, 23 Nov 2026 08:00:00 +0100</pubDate></item>
<item><title>Deuxième</title><link>https://lhebdo.example/a/2</link>
<description>Second.</description><pubDate>Sun, 22 Nov 2026 08:00:00 +0100</pubDate></item>
</channel></rss>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom</title><id>urn:x</id>
<updated>2026-11-23T08:00:00Z</updated>
<entry><title type="html">&lt;script&gt;alert(1)&lt;/script&gt;Titre &lt;b&gt;gras&lt;/b&gt;</title>
<id>urn:atom:1</id><link href="https://lhebdo.example/atom/1"/>
<summary type="html">&lt;p onclick="x()"&gt;Texte&lt;/p&gt;&lt;iframe src="https://evil.example"&gt;&lt;/iframe&gt;</summary></entry>
<entry><title>Sans lien</title><id>urn:atom:2</id><updated>2026-11-23T08:00:00Z</updated></entry>
<entry><title>Lien javascript</title><id>urn:atom:3</id><link href="javascript:alert(1)"/>
<updated>2026-11-23T08:00:00Z</updated></entry>
</feed>"""


class FeedServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.rss_title = "Premier article"
        self.etag = '"v1"'
        self.hits: list[tuple[str, str | None]] = []
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    state = FeedServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, **headers: str) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            if "Content_Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            state.hits.append((self.path, self.headers.get("If-None-Match")))
            if self.path == "/good.xml":
                if self.headers.get("If-None-Match") == state.etag:
                    self._send(304, b"")
                    return
                body = RSS.format(title=state.rss_title).encode()
                self._send(200, body, ETag=state.etag, Content_Type="application/rss+xml")
            elif self.path == "/atom.xml":
                self._send(200, ATOM.encode(), Content_Type="application/atom+xml")
            elif self.path == "/slow.xml":
                state.release.wait(5)
                self._send(200, RSS.format(title="Trop tard").encode())
            elif self.path == "/latin.xml":
                # No XML declaration: the charset is only in the HTTP header; links relative.
                body = (
                    '<feed xmlns="http://www.w3.org/2005/Atom"><title>L</title><id>urn:l</id>'
                    "<entry><title>Prix : 5 \u20ac</title><id>urn:l:1</id>"
                    '<link href="/articles/prix"/><updated>2026-11-23T08:00:00Z</updated>'
                    '<media:content xmlns:media="http://search.yahoo.com/mrss/" '
                    'url="/video/1.mp4" type="video/mp4"/></entry></feed>'
                ).encode("iso-8859-15")
                self._send(200, body, Content_Type="application/atom+xml; charset=iso-8859-15")
            elif self.path == "/charref.xml":
                body = RSS.format(title="Mauvais &#55296; caractère").encode()
                self._send(200, body, Content_Type="application/rss+xml")
            elif self.path == "/dated.xml":
                stamp = "Mon, 23 Nov 2026 08:00:00 GMT"
                if self.headers.get("If-Modified-Since") == stamp:
                    self._send(304, b"")
                    return
                body = RSS.format(title="Daté").encode()
                self._send(200, body, Last_Modified=stamp, Content_Type="application/rss+xml")
            elif self.path == "/trickle.xml":
                # One byte every 0.2 s: each read returns, none would reach the end in time.
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    for _ in range(100):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        if state.release.wait(0.2):
                            return
                except (BrokenPipeError, ConnectionResetError):
                    pass
            elif self.path == "/broken.xml":
                self._send(200, b"<html><body>Maintenance { not a feed", Content_Type="text/html")
            elif self.path == "/huge.xml":
                self.send_response(200)
                self.end_headers()
                chunk = b"<!-- " + b"x" * 65_000 + b" -->\n"
                try:
                    for _ in range(100):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            else:
                self._send(500, b"Internal Server Error")

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the client hanging up on /huge.xml and /slow.xml is the point

    server = Server(("127.0.0.1", state.port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


def _articles(app: Flask) -> dict[str, Article]:
    with app.app_context():
        rows = db.session.execute(select(Article)).scalars().all()
        for row in rows:
            db.session.expunge(row)
        return {a.url: a for a in rows}


@pytest.mark.slow
def test_one_good_feed_survives_every_kind_of_bad_one_and_rereads_are_idempotent(
    make_app: Callable[[dict[str, str]], Flask],
    env: dict[str, str],
    feed_server: FeedServer,
    tmp_path: object,
) -> None:
    urls = [
        feed_server.url("/slow.xml"),
        feed_server.url("/trickle.xml"),
        feed_server.url("/good.xml"),
        feed_server.url("/down.xml"),
        feed_server.url("/broken.xml"),
        feed_server.url("/huge.xml"),
        feed_server.url("/atom.xml"),
        "/nonexistent/feed.xml",
        f"http://127.0.0.1:{free_port()}/refused.xml",
    ]
    app = make_app(
        {
            **env,
            "HEBDO_FEEDS": ",".join(urls),
            "HEBDO_FEED_TIMEOUT": "1",
            "HEBDO_FEED_MAX_BYTES": "200000",
        }
    )
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    started = time.monotonic()
    with app.app_context():
        reports = {r.url: r for r in feeds.ingest_all(app.config["SETTINGS"], now)}
    # The slow and the trickling feed cost their time limit (1 s) each, not more.
    assert time.monotonic() - started < 8
    ok = {u for u, r in reports.items() if r.result == "ok"}
    assert ok == {feed_server.url("/good.xml"), feed_server.url("/atom.xml")}
    errors = {u: r.error for u, r in reports.items() if r.result == "error"}
    assert "timed out" in errors[feed_server.url("/slow.xml")]
    assert "timed out" in errors[feed_server.url("/trickle.xml")]
    assert "HTTP 500" in errors[feed_server.url("/down.xml")]
    assert "not a readable RSS/Atom feed" in errors[feed_server.url("/broken.xml")]
    assert "HEBDO_FEED_MAX_BYTES" in errors[feed_server.url("/huge.xml")]
    assert "cannot read" in errors["/nonexistent/feed.xml"]
    assert "cannot fetch" in errors[urls[-1]]

    articles = _articles(app)
    assert set(articles) == {
        "https://lhebdo.example/a/1",
        "https://lhebdo.example/a/2",
        "https://lhebdo.example/atom/1",
    }
    first = articles["https://lhebdo.example/a/1"]
    assert (first.title, first.category, first.language) == ("Premier article", "IA", "fr")
    assert first.published_at == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    hostile = articles["https://lhebdo.example/atom/1"]
    assert hostile.title == "Titre gras" and hostile.summary == "Texte"
    # No date in the feed: dated when first seen.
    assert hostile.published_at == now
    atom = reports[feed_server.url("/atom.xml")]
    assert atom.skipped == 2 and all(p.endswith("skipped") for p in atom.problems)
    assert any("javascript:" in p for p in atom.problems)

    with app.app_context():
        failing = db.session.execute(select(Feed).where(Feed.failures > 0)).scalars().all()
        assert len(failing) == 7 and all(f.last_error for f in failing)

    # Second read: 304 for the good feed (ETag sent), the Atom feed updates in place,
    # and an item's first-seen date does not move.
    later = now + timedelta(hours=1)
    feed_server.release.set()
    with app.app_context():
        again = {r.url: r for r in feeds.ingest_all(app.config["SETTINGS"], later)}
    assert again[feed_server.url("/good.xml")].result == "not_modified"
    assert ("/good.xml", '"v1"') in feed_server.hits
    assert again[feed_server.url("/atom.xml")].created == 0
    assert again[feed_server.url("/atom.xml")].updated == 1
    assert _articles(app)["https://lhebdo.example/atom/1"].published_at == now

    # A changed feed (new ETag) updates the article instead of adding one.
    feed_server.rss_title, feed_server.etag = "Premier article, mis à jour", '"v2"'
    with app.app_context():
        third = {r.url: r for r in feeds.ingest_all(app.config["SETTINGS"], later)}
    good = third[feed_server.url("/good.xml")]
    assert (good.result, good.created, good.updated) == ("ok", 0, 2)
    articles = _articles(app)
    assert len(articles) == 3
    assert articles["https://lhebdo.example/a/1"].title == "Premier article, mis à jour"


def test_the_sample_feed_gives_three_fresh_weeks_of_french_news(app: Flask) -> None:
    now = datetime.now(UTC)
    with app.app_context():
        assert app.config["SETTINGS"].feeds == ("sample",)
        report = feeds.ingest_all(app.config["SETTINGS"], now)[0]
        assert (report.result, report.created) == ("ok", 14)
        again = feeds.ingest_all(app.config["SETTINGS"], now)[0]
        assert (again.created, again.updated) == (0, 14)
    articles = list(_articles(app).values())
    assert len(articles) == 14
    assert {"International", "IA", "Marketing", "Startups"} <= {a.category for a in articles}
    assert all(a.language == "fr" for a in articles)
    newest = max(a.published_at for a in articles)
    oldest = min(a.published_at for a in articles)
    assert now - timedelta(days=7) < newest <= now
    assert timedelta(days=14) < newest - oldest < timedelta(days=21)
    assert not any("<" in a.summary or "alert" in a.summary for a in articles)


def test_feeds_fetch_command_reports_and_fails_when_a_feed_fails(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str], feed_server: FeedServer
) -> None:
    app = make_app({**env, "HEBDO_FEEDS": f"sample,{feed_server.url('/down.xml')}"})
    result = app.test_cli_runner().invoke(args=["feeds", "fetch"])
    assert result.exit_code == 1
    assert "sample: ok, 14 new, 0 updated, 0 skipped" in result.output
    assert "down.xml: ERROR HTTP 500" in result.output


def test_relative_links_header_charsets_and_broken_character_references(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str], feed_server: FeedServer
) -> None:
    app = make_app(
        {**env, "HEBDO_FEEDS": f"{feed_server.url('/latin.xml')},{feed_server.url('/charref.xml')}"}
    )
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    with app.app_context():
        latin, charref = feeds.ingest_all(app.config["SETTINGS"], now)
    assert latin.result == "ok" and latin.created == 1
    article = _articles(app)[feed_server.url("/articles/prix")]
    assert article.title == "Prix : 5 €"  # ISO-8859-15 from the Content-Type header
    assert article.image_url is None  # a video is not an image
    # feedparser itself raises on `&#55296;`: the feed is recorded as failing, with the reason,
    # instead of an internal error that leaves no trace on the feed.
    assert charref.result == "error" and "unparsable feed" in charref.error
    with app.app_context():
        feed = db.session.execute(
            select(Feed).where(Feed.url == feed_server.url("/charref.xml"))
        ).scalar_one()
        assert feed.failures == 1 and "UnicodeEncodeError" in (feed.last_error or "")


def test_two_feeds_with_the_same_guids_keep_their_own_articles(app: Flask) -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    with app.app_context():
        a = store_article(
            ArticleInput(url="https://a.example/1", title="Article de A", guid="1"),
            source="https://a.example/feed",
            now=now,
        )
        b = store_article(
            ArticleInput(url="https://b.example/1", title="Article de B", guid="1"),
            source="https://b.example/feed",
            now=now,
        )
        db.session.commit()
    assert a[0] != b[0] and a[1] and b[1]
    titles = {x.url: x.title for x in _articles(app).values()}
    assert titles == {"https://a.example/1": "Article de A", "https://b.example/1": "Article de B"}


def test_text_keeps_what_belongs_to_it_and_loses_what_hides_in_it() -> None:
    assert plain_text("👩\u200d💻 Les développeuses", 100) == "👩\u200d💻 Les développeuses"
    assert plain_text("می\u200cخواهم", 100) == "می\u200cخواهم"  # Persian ZWNJ
    assert plain_text("a\u202eevil\u202c b\u200bc", 100) == "a evil b c"
    assert plain_text("x\ud800y", 100) == "x?y"  # a lone surrogate cannot be stored
    assert plain_text("<p>" + "mot " * 1000 + "</p>", 50).endswith("…")


def test_last_modified_makes_the_second_read_conditional(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str], feed_server: FeedServer
) -> None:
    app = make_app({**env, "HEBDO_FEEDS": feed_server.url("/dated.xml")})
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    with app.app_context():
        first = feeds.ingest_all(app.config["SETTINGS"], now)[0]
        second = feeds.ingest_all(app.config["SETTINGS"], now + timedelta(hours=1))[0]
    assert (first.result, first.created) == ("ok", 2)
    assert second.result == "not_modified"
