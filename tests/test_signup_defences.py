"""The public sign-up endpoint's defences, over HTTP: CORS, the honeypot, the fill time,
the three rate limits and their reset, trusted proxies, the link back and the recorded
source (no open redirect), the consent line, the CAPTCHA hook, Redis down, and the count
and log of every refused or dropped attempt."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from service.extensions import db
from service.models import Subscriber
from service.signup import limits as signup_limits
from service.signup.defences import SIGNUPS, form_token
from tests.support.processes import RedisServer
from tests.support.settings import BASE_URL, BROKER_URL
from tests.support.smtp import free_port

URL = "/api/v1/subscriptions"
NEWS = "https://news.example.fr"


def stored(app: Flask) -> int:
    with app.app_context():
        return int(db.session.execute(select(func.count()).select_from(Subscriber)).scalar_one())


def source_of(app: Flask, email: str) -> str | None:
    with app.app_context():
        return db.session.execute(
            select(Subscriber.consent_source).where(Subscriber.email == email)
        ).scalar_one()


def count(outcome: str) -> float:
    return SIGNUPS.labels(outcome=outcome)._value.get()


@pytest.fixture
def configured(make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]) -> Any:
    """An app with some settings changed from the test defaults."""

    def build(**values: str) -> Flask:
        return make_app({**env, **{f"HEBDO_{k.upper()}": v for k, v in values.items()}})

    return build


# ---------------------------------------------------------------- CORS


def test_cors_only_for_allowed_origins_without_credentials(client: FlaskClient) -> None:
    ok = client.post(URL, json={"email": "a@exemple.fr"}, headers={"Origin": NEWS})
    assert ok.status_code == 202
    assert ok.headers["Access-Control-Allow-Origin"] == NEWS
    assert "Access-Control-Allow-Credentials" not in ok.headers
    assert "Origin" in ok.headers["Vary"]
    form = client.get(f"{URL}/form?lang=en", headers={"Origin": NEWS})
    assert form.headers["Access-Control-Allow-Origin"] == NEWS and form.json["ts"]

    preflight = client.options(
        URL,
        headers={
            "Origin": NEWS,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == NEWS
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "Content-Type"

    for foreign in ("https://evil.example", "https://news.example.fr.evil.example", "null"):
        answer = client.post(URL, json={"email": "b@exemple.fr"}, headers={"Origin": foreign})
        assert "Access-Control-Allow-Origin" not in answer.headers, foreign
        answer = client.options(URL, headers={"Origin": foreign})
        assert "Access-Control-Allow-Origin" not in answer.headers, foreign
    # Other routes, the admin's above all, never send CORS headers.
    for path in ("/api/v1/articles", "/admin/login", "/api/v1/admin/subscribers"):
        answer = client.get(path, headers={"Origin": NEWS})
        assert "Access-Control-Allow-Origin" not in answer.headers, path


# ---------------------------------------------------------------- bots at the door


def test_the_honeypot_gets_a_persons_answer_and_nothing_is_stored(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = count("honeypot")
    person = client.post(URL, json={"email": "lea@exemple.fr", "website": ""})
    bot = client.post(URL, json={"email": "victim@exemple.fr", "website": "http://spam.example"})
    assert (bot.status_code, bot.json) == (person.status_code, person.json) == (202, person.json)
    form_person = client.post(
        URL, data={"email": "tom@exemple.fr", "source": f"{NEWS}/a/1", "locale": "fr"}
    )
    form_bot = client.post(
        URL,
        data={"email": "v2@exemple.fr", "source": f"{NEWS}/a/1", "locale": "fr", "website": "x"},
    )
    assert form_bot.status_code == form_person.status_code == 303
    assert form_bot.headers["Location"] == form_person.headers["Location"]
    assert stored(app) == 2
    assert count("honeypot") == before + 2
    assert "v***@exemple.fr" in caplog.text and "victim@exemple.fr" not in caplog.text


def test_what_a_sender_typed_cannot_forge_or_break_a_log_line(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for email in (
        "\ud800@exemple.fr",
        "x@exemple.fr\nINFO sign-up accepted",
        "\x1b[31m@exemple.fr",
    ):
        assert client.post(URL, json={"email": email}).status_code == 422
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sign-up")]
    assert len(lines) == 3
    for line in lines:
        line.encode("utf-8")  # a UTF-8 log file can take it
        assert line.isprintable(), line
    assert lines[1].endswith("***@exemple.fr\\nINFO sign-up accepted")


def test_a_form_posted_faster_than_a_person_types_is_dropped(configured: Any) -> None:
    app = configured(form_min_seconds="2")
    client = app.test_client()
    settings = app.config["SETTINGS"]
    before = count("too_fast")
    fresh = form_token(settings)
    answer = client.post(URL, json={"email": "fast@exemple.fr", "ts": fresh})
    assert answer.status_code == 202 and stored(app) == 0
    assert count("too_fast") == before + 1
    typed = form_token(settings, time.time() - 3)
    assert client.post(URL, json={"email": "slow@exemple.fr", "ts": typed}).status_code == 202
    week_old = form_token(settings, time.time() - 6 * 24 * 3600)  # a tab left open for days
    assert client.post(URL, json={"email": "old@exemple.fr", "ts": week_old}).status_code == 202
    # No token at all: the no-JavaScript form pasted in a page; the limits still hold it.
    assert client.post(URL, data={"email": "nojs@exemple.fr"}).status_code == 303
    assert stored(app) == 3
    # A token replayed after a week, or dated in the future, is no form a person was shown.
    stale = form_token(settings, time.time() - 8 * 24 * 3600)
    future = form_token(settings, time.time() + 60)
    for n, token in enumerate((stale, future)):
        assert client.post(URL, json={"email": f"t{n}@exemple.fr", "ts": token}).status_code == 202
    assert stored(app) == 3
    for n, forged in enumerate((typed[:-2] + "xx", "garbage", 12, ["a"])):
        answer = client.post(URL, json={"email": f"f{n}@exemple.fr", "ts": forged})
        assert answer.status_code == 202
    assert stored(app) == 3
    # A token signed for another purpose (an unsubscribe link's) is not a form token.
    from service.subscribers.tokens import Purpose, make_token

    other = make_token(settings, Purpose.UNSUBSCRIBE, [time.time() - 60])
    assert client.post(URL, json={"email": "o@exemple.fr", "ts": other}).status_code == 202
    assert stored(app) == 3


# ---------------------------------------------------------------- rate limits


@pytest.mark.slow
def test_the_per_ip_limit_answers_429_in_the_pages_language_and_resets(configured: Any) -> None:
    app = configured(subscribe_rate_limit="3/2 seconds")
    client = app.test_client()
    before = count("rate_limited")
    codes = [client.post(URL, json={"email": f"r{n}@exemple.fr"}).status_code for n in range(3)]
    assert codes == [202, 202, 202]
    limited = client.post(URL, json={"email": "r9@exemple.fr", "locale": "en"})
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 3
    assert limited.json == {
        "error": "rate_limited",
        "message": "Too many attempts. Please try again in a few minutes.",
    }
    page = client.post(URL, data={"email": "r9@exemple.fr", "locale": "fr"})
    assert page.status_code == 429 and page.mimetype == "text/html"
    assert "Trop de tentatives" in page.get_data(as_text=True) and page.headers["Retry-After"]
    assert count("rate_limited") == before + 2
    # Another client is not held by this one's limit.
    other = client.post(
        URL, json={"email": "x@exemple.fr"}, environ_base={"REMOTE_ADDR": "198.51.100.7"}
    )
    assert other.status_code == 202
    time.sleep(2.1)
    assert client.post(URL, json={"email": "r10@exemple.fr"}).status_code == 202
    assert stored(app) == 5


def test_one_address_from_many_ips_is_limited_and_its_mails_capped(configured: Any) -> None:
    app = configured(subscribe_address_rate_limit="2/minute")
    client = app.test_client()
    codes = [
        client.post(
            URL,
            json={"email": "Victim@Exemple.fr"},
            environ_base={"REMOTE_ADDR": f"203.0.{n}.9"},
        ).status_code
        for n in range(4)
    ]
    assert codes == [202, 202, 429, 429]
    # Other addresses from the same IPs are not held.
    fine = client.post(
        URL, json={"email": "someone@exemple.fr"}, environ_base={"REMOTE_ADDR": "203.0.3.9"}
    )
    assert fine.status_code == 202


def test_neighbouring_ips_share_the_network_limit(configured: Any) -> None:
    app = configured(subscribe_network_rate_limit="2/minute")
    client = app.test_client()

    def post(ip: str, n: int) -> int:
        return client.post(
            URL, json={"email": f"n{n}@exemple.fr"}, environ_base={"REMOTE_ADDR": ip}
        ).status_code

    assert [post("192.0.2.1", 1), post("192.0.2.200", 2), post("192.0.2.77", 3)] == [
        202,
        202,
        429,
    ]
    assert post("192.0.3.1", 4) == 202  # another /24
    assert [post("2001:db8:0:1::1", 5), post("2001:db8:0:1::ffff", 6)] == [202, 202]
    assert post("2001:db8:0:1:abcd::1", 7) == 429  # the same /64
    assert post("2001:db8:0:2::1", 8) == 202


def test_a_spoofed_forwarded_for_is_ignored_without_trusted_proxies(configured: Any) -> None:
    untrusted = configured(subscribe_rate_limit="2/minute")
    client = untrusted.test_client()
    codes = [
        client.post(
            URL,
            json={"email": f"s{n}@exemple.fr"},
            headers={"X-Forwarded-For": f"10.0.{n}.1"},
        ).status_code
        for n in range(3)
    ]
    assert codes == [202, 202, 429]  # all counted against the real peer
    with untrusted.app_context():
        ips = db.session.execute(select(Subscriber.consent_ip)).scalars().all()
    assert set(ips) == {"127.0.0.1"}

    behind_proxy = configured(subscribe_rate_limit="2/minute", trusted_proxies="1")
    client = behind_proxy.test_client()
    codes = [
        client.post(
            URL,
            json={"email": f"p{n}@exemple.fr"},
            headers={"X-Forwarded-For": f"10.0.{n}.1"},
        ).status_code
        for n in range(3)
    ]
    assert codes == [202, 202, 202]  # three clients behind one proxy
    with behind_proxy.app_context():
        ips = db.session.execute(
            select(Subscriber.consent_ip).where(Subscriber.email.startswith("p"))
        ).scalars()
        assert set(ips) == {"10.0.0.1", "10.0.1.1", "10.0.2.1"}


def test_redis_down_lets_people_sign_up(configured: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Fail open: a broken limiter store must not turn the form away (it is logged)."""
    app = configured(ratelimit_storage=f"redis://127.0.0.1:{free_port()}/0")
    client = app.test_client()
    with caplog.at_level(logging.WARNING):
        answer = client.post(URL, json={"email": "open@exemple.fr"})
    assert answer.status_code == 202 and stored(app) == 1
    assert "rate limit" in caplog.text.lower() or "storage" in caplog.text.lower()


@pytest.mark.slow
def test_every_window_of_a_limit_holds(configured: Any) -> None:
    """`3/2 seconds;4/minute`: the short window turns a burst away, and once it has reset
    the long one still holds, with a Retry-After for the long window."""
    app = configured(subscribe_rate_limit="3/2 seconds;4/minute")
    client = app.test_client()
    codes = [client.post(URL, json={"email": f"w{n}@exemple.fr"}).status_code for n in range(4)]
    assert codes == [202, 202, 202, 429]
    time.sleep(2.1)
    assert client.post(URL, json={"email": "w5@exemple.fr"}).status_code == 202
    held = client.post(URL, json={"email": "w6@exemple.fr"})
    assert held.status_code == 429 and int(held.headers["Retry-After"]) > 2
    assert stored(app) == 4


redis_only = pytest.mark.skipif(
    not BROKER_URL.startswith("redis"), reason="needs Redis (HEBDO_BROKER_URL)"
)


@redis_only
def test_web_processes_share_the_limits_in_redis(configured: Any) -> None:
    """Two apps (two gunicorn workers, or two machines) count against one limit."""
    first = configured(subscribe_rate_limit="3/minute").test_client()
    second = configured(subscribe_rate_limit="3/minute").test_client()
    codes = [
        client.post(URL, json={"email": f"shared{n}@exemple.fr"}).status_code
        for n, client in enumerate([first, second, first, second])
    ]
    assert codes == [202, 202, 202, 429]


@redis_only
def test_limits_fail_open_while_redis_is_down_and_are_shared_again_after(
    configured: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
) -> None:
    """A real Redis server stopped and started again: sign-ups go on meanwhile (memory
    limits, one warning), and the shared limits come back once Redis does."""
    monkeypatch.setattr(signup_limits, "RETRY_SECONDS", 0.5)
    redis_server.start()
    values = {"subscribe_rate_limit": "2/minute", "ratelimit_storage": redis_server.url}
    first = configured(**values).test_client()
    second = configured(**values).test_client()
    assert first.post(URL, json={"email": "d1@exemple.fr"}).status_code == 202
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="service.signup.limits"):
        down = [
            client.post(URL, json={"email": f"d{n}@exemple.fr"}).status_code
            for n, client in [(2, first), (3, second), (4, first), (5, second)]
        ]
    # Each process counts on its own meanwhile: 2 each, so nobody is turned away.
    assert down == [202, 202, 202, 202]
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 2  # once per process, not once per sign-up
    redis_server.start()
    time.sleep(0.6)
    back = [
        client.post(URL, json={"email": f"b{n}@exemple.fr"}).status_code
        for n, client in enumerate([first, second, first])
    ]
    assert back == [202, 202, 429]  # one counter for both again


# ---------------------------------------------------------------- where people come from


HOSTILE_BACKS = [
    "https://evil.example/",
    "//evil.example/",
    "javascript:alert(1)",
    "https://news.example.fr@evil.example/",
    "https://news.example.fr.evil.example/a",
    "http://news.example.fr/a",  # another scheme is another origin
    "data:text/html,<script>alert(1)</script>",
    "https://news.example.fr\\@evil.example",
]


@pytest.mark.parametrize("back", HOSTILE_BACKS)
def test_the_thank_you_page_links_back_only_to_allowed_origins(
    client: FlaskClient, back: str
) -> None:
    page = client.get("/merci", query_string={"back": back}).get_data(as_text=True)
    assert "Revenir à la page précédente" not in page
    assert "evil.example" not in page and "javascript:" not in page


def test_a_form_post_lands_on_thanks_with_a_link_back_to_the_article(
    app: Flask, client: FlaskClient
) -> None:
    article = f"{NEWS}/societe/2026/11/article"
    answer = client.post(URL, data={"email": "lea@exemple.fr"}, headers={"Referer": article})
    assert answer.status_code == 303
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert f'href="{article}"' in page and "Revenir à la page précédente" in page
    assert source_of(app, "lea@exemple.fr") == article


def test_the_source_is_recorded_only_for_an_allowed_origin(app: Flask, client: FlaskClient) -> None:
    client.post(URL, json={"email": "a@exemple.fr", "source": f"{NEWS}/a"})
    client.post(URL, json={"email": "b@exemple.fr", "source": "https://evil.example/a"})
    client.post(URL, json={"email": "c@exemple.fr"}, headers={"Referer": "https://evil.example/"})
    own = "https://hebdo.example.fr/subscribe"  # this service's own page
    client.post(URL, json={"email": "d@exemple.fr", "source": own})
    assert [source_of(app, f"{x}@exemple.fr") for x in "abcd"] == [f"{NEWS}/a", None, None, own]


# ---------------------------------------------------------------- consent and CAPTCHA


def test_a_configured_consent_line_must_be_ticked_and_its_version_is_stored(
    configured: Any,
) -> None:
    app = configured(
        consent_text="J’accepte de recevoir la lettre hebdomadaire.", consent_version="cgu-2026-12"
    )
    client = app.test_client()
    form = client.get(f"{URL}/form").json
    assert form["consent"] == {
        "text": "J’accepte de recevoir la lettre hebdomadaire.",
        "version": "cgu-2026-12",
    }
    refused = client.post(URL, json={"email": "lea@exemple.fr"})
    assert refused.status_code == 422 and refused.json["error"] == "consent_required"
    assert client.post(URL, data={"email": "lea@exemple.fr"}).status_code == 422
    assert stored(app) == 0
    ok = client.post(URL, json={"email": "lea@exemple.fr", "consent_given": "1"})
    assert ok.status_code == 202
    with app.app_context():
        version = db.session.execute(select(Subscriber.consent_text_version)).scalar_one()
    assert version == "cgu-2026-12"


def test_the_captcha_is_asked_above_the_threshold_and_verified_by_the_hook(
    configured: Any,
) -> None:
    app = configured(
        captcha_provider="turnstile",
        captcha_site_key="site-key",
        captcha_secret="secret-key",
        captcha_threshold="2",
    )
    calls: list[tuple[str, str, str, str | None]] = []

    def verifier(provider: str, secret: str, token: str, ip: str | None) -> bool:
        calls.append((provider, secret, token, ip))
        return token == "good"

    app.extensions["hebdo.captcha"] = verifier
    client = app.test_client()
    assert client.get(f"{URL}/form").json["captcha"] is None
    for n in range(2):
        assert client.post(URL, json={"email": f"c{n}@exemple.fr"}).status_code == 202
    # Two sign-ups in the last minute: the threshold is crossed, the box now asks.
    widget = client.get(f"{URL}/form").json["captcha"]
    assert widget["provider"] == "turnstile" and widget["site_key"] == "site-key"
    missing = client.post(URL, json={"email": "c3@exemple.fr"})
    assert missing.status_code == 400 and missing.json["error"] == "captcha_required"
    assert missing.json["captcha"]["site_key"] == "site-key"
    bad = client.post(URL, json={"email": "c3@exemple.fr", "captcha_token": "bad"})
    assert bad.status_code == 400 and bad.json["error"] == "captcha_failed"
    good = client.post(URL, json={"email": "c3@exemple.fr", "captcha_token": "good"})
    assert good.status_code == 202
    assert calls == [
        ("turnstile", "secret-key", "bad", "127.0.0.1"),
        ("turnstile", "secret-key", "good", "127.0.0.1"),
    ]
    assert stored(app) == 3


def test_refused_attempts_are_counted_and_logged_without_the_address(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = {o: count(o) for o in ("invalid", "accepted")}
    with caplog.at_level(logging.INFO):
        client.post(URL, json={"email": "secret.person@@exemple.fr"})
        client.post(URL, json={"email": "secret.person@exemple.fr"})
    assert count("invalid") == before["invalid"] + 1
    assert count("accepted") == before["accepted"] + 1
    assert "secret.person" not in caplog.text
    assert "s***@exemple.fr" in caplog.text


def test_a_post_from_a_page_of_another_site_is_refused(app: Flask, client: FlaskClient) -> None:
    """No other site can make its visitors' browsers sign someone up."""
    before = count("foreign_origin")
    for n, origin in enumerate(
        ("https://evil.example", "null", "https://news.example.fr.evil.example")
    ):
        answer = client.post(URL, json={"email": f"v{n}@exemple.fr"}, headers={"Origin": origin})
        assert answer.status_code == 403 and answer.json["error"] == "origin_not_allowed"
        page = client.post(URL, data={"email": f"w{n}@exemple.fr"}, headers={"Origin": origin})
        assert page.status_code == 403 and page.mimetype == "text/html"
    assert count("foreign_origin") == before + 6
    assert stored(app) == 0
    # The site's own pages, hebdo's own, and requests without Origin (a server) go on.
    for n, headers in enumerate(({"Origin": NEWS}, {"Origin": BASE_URL}, {})):
        assert (
            client.post(URL, json={"email": f"ok{n}@exemple.fr"}, headers=headers).status_code
            == 202
        )
    assert stored(app) == 3


def test_a_caught_bot_gets_what_a_person_with_the_same_post_would_get(
    app: Flask, client: FlaskClient, configured: Any
) -> None:
    for body in ({"email": "nope"}, {"email": "a@@exemple.fr"}, {"email": ""}):
        person = client.post(URL, json=body)
        bot = client.post(URL, json={**body, "website": "http://spam.example"})
        assert (bot.status_code, bot.json) == (person.status_code, person.json), body
        assert person.status_code == 422
    typo_person = client.post(URL, json={"email": "lea@gmial.com"})
    typo_bot = client.post(URL, json={"email": "tom@gmial.com", "website": "x"})
    assert typo_person.json["suggestion"] == "lea@gmail.com"
    assert typo_bot.json["suggestion"] == "tom@gmail.com"
    with_consent = configured(consent_text="J’accepte.")
    other = with_consent.test_client()
    person = other.post(URL, json={"email": "c@exemple.fr"})
    bot = other.post(URL, json={"email": "c@exemple.fr", "website": "x"})
    assert (bot.status_code, bot.json) == (person.status_code, person.json)
    assert person.status_code == 422


def test_spellings_of_one_address_share_its_limit(configured: Any) -> None:
    app = configured(subscribe_address_rate_limit="2/minute")
    client = app.test_client()
    spellings = ["victim@gmail.com", "Victim@ＧＭＡＩＬ.com", "VICTIM@gmail.com "]
    codes = [client.post(URL, json={"email": e}).status_code for e in spellings]
    assert codes == [202, 202, 429]
    decomposed = "jose\u0301@exemple.fr"
    codes = [
        client.post(URL, json={"email": e}).status_code for e in ("josé@exemple.fr", decomposed)
    ]
    assert codes == [202, 202]
    assert client.post(URL, json={"email": "JOSÉ@exemple.fr"}).status_code == 429


def test_odd_urls_and_addresses_get_an_answer_not_a_server_error(client: FlaskClient) -> None:
    for n, origin in enumerate(
        ("https://[::1", "http://", "\x00", "https://news.example.fr:99999")
    ):
        answer = client.post(URL, json={"email": f"o{n}@exemple.fr"}, headers={"Origin": origin})
        assert answer.status_code in (202, 403), origin
        assert client.get(f"{URL}/form", headers={"Origin": origin}).status_code == 200
    for n, source in enumerate(("https://[::1/", "https://[", "http://news.example.fr:bad/")):
        answer = client.post(URL, json={"email": f"s{n}@exemple.fr", "source": source})
        assert answer.status_code == 202, source
    assert (
        client.post(
            URL, data={"email": "r@exemple.fr"}, headers={"Referer": "https://[::1"}
        ).status_code
        == 303
    )
    assert client.get("/merci?back=https://[::1").status_code == 200
    assert client.post(URL, json={"email": "\ud800@exemple.fr"}).status_code == 422


def test_ipv4_clients_behind_a_dual_stack_listener_keep_their_own_network(
    configured: Any,
) -> None:
    app = configured(subscribe_network_rate_limit="2/minute")
    client = app.test_client()

    def post(ip: str, n: int) -> int:
        return client.post(
            URL, json={"email": f"m{n}@exemple.fr"}, environ_base={"REMOTE_ADDR": ip}
        ).status_code

    assert [post("::ffff:192.0.2.1", 1), post("::ffff:192.0.2.2", 2)] == [202, 202]
    assert post("::ffff:192.0.2.3", 3) == 429  # the same /24
    assert post("::ffff:198.51.100.1", 4) == 202  # not all of IPv4 in one ::/64
