"""Attacks over HTTP, made as an attacker or a mail scanner makes them: subscription
bombing, a flood of addresses from one client, probing which addresses are known, forged,
expired and mangled links, link scanners, and what is left of a person once erased.

Mail is counted where it lands, at a real SMTP server; the database is compared whole.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, select

from service.admin.audit import Actor
from service.digest import delivery
from service.digest.planning import plan_issue
from service.extensions import CONFIRM_QUEUE, db
from service.jobs import CONFIRMATION_WINDOW
from service.models import AuditEvent, Status, Subscriber
from service.subscribers.bulk import erase
from service.subscribers.lifecycle import Consent, confirm, subscribe, unsubscribe
from service.subscribers.suppressions import is_suppressed, mark_bounced
from service.subscribers.tokens import (
    Purpose,
    confirm_token,
    make_token,
    resubscribe_token,
    unsubscribe_token,
)
from tests.support.admin import ADMIN_PASSWORD, Admin, api_token, create_admin
from tests.support.data import add_article
from tests.support.mail import link, list_unsubscribe_path, sweep
from tests.support.mail import old_token as _old_token
from tests.support.processes import Process
from tests.support.sending import NOW, Sender
from tests.support.settings import BROKER_URL
from tests.support.smtp import Received, SMTPSink

URL = "/api/v1/subscriptions"
# 200 clients, each in its own /24, so no network limit groups them.
BOTNET = [f"198.{18 + n // 100}.{n % 100}.{n % 250 + 1}" for n in range(200)]
SCANNERS = [
    "Mozilla/5.0 (compatible; Microsoft Defender for Office 365 Safe Links)",
    "Barracuda Sentinel (EE)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36 ProofpointURLDefense",
    "Mimecast URL Protect",
    "python-requests/2.32",
]


def database_dump(app: Flask) -> list[tuple[str, tuple[Any, ...]]]:
    """Every row of every table, in key order: two dumps are equal iff nothing changed."""
    rows = []
    with app.app_context():
        for table in db.metadata.sorted_tables:
            query = table.select().order_by(*table.primary_key.columns)
            rows += [(table.name, tuple(values)) for values in db.session.execute(query)]
    return rows


def stored_emails(app: Flask) -> set[str]:
    with app.app_context():
        return set(db.session.execute(select(Subscriber.email)).scalars())


def status_of(app: Flask, email: str) -> str:
    with app.app_context():
        return str(
            db.session.execute(
                select(Subscriber.status).where(Subscriber.email == email)
            ).scalar_one()
        )


def post(client: FlaskClient, email: str, ip: str, *, form: bool = False) -> Any:
    """One sign-up as the embedded box (JSON) or the no-JavaScript form sends it."""
    if form:
        return client.post(URL, data={"email": email}, environ_base={"REMOTE_ADDR": ip})
    return client.post(URL, json={"email": email}, environ_base={"REMOTE_ADDR": ip})


def accepted(response: Any) -> bool:
    return response.status_code in (202, 303)


# ---------------------------------------------------------------- subscription bombing

VICTIM_SPELLINGS = [
    "victime@exemple.fr",
    "Victime@Exemple.FR",
    " VICTIME@exemple.fr ",
    "victime@ＥＸＥＭＰＬＥ.fr",  # full-width letters, NFKC-folded by the validator
]


@pytest.mark.slow
def test_a_victim_bombed_from_200_ips_gets_one_confirmation_mail(
    make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str], smtp_server: SMTPSink
) -> None:
    """1,000 sign-ups of one address from 200 clients, in its spellings, JSON and form,
    while the confirmation sweep runs: the per-address limit answers 429 after the first
    few, and the victim's inbox gets one mail."""
    app = make_app(
        {
            **smtp_env,
            "HEBDO_SUBSCRIBE_RATE_LIMIT": "30/minute;500/day",
            "HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT": "3/hour;10/day",
        }
    )
    client = app.test_client()
    answers: Counter[int] = Counter()
    for n in range(1000):
        spelling = VICTIM_SPELLINGS[n % len(VICTIM_SPELLINGS)]
        answers[post(client, spelling, BOTNET[n % 200], form=n % 2 == 1).status_code] += 1
        if n % 100 == 99:
            sweep(app)
    sweep(app)
    assert answers == {202: 2, 303: 1, 429: 997}
    assert [m.rcpt_tos for m in smtp_server.messages] == [["victime@exemple.fr"]]
    assert stored_emails(app) == {"victime@exemple.fr"}


@pytest.mark.slow
def test_the_mail_cap_holds_without_the_address_limit_against_a_real_worker(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    """Defence in depth: with the per-address limit lifted, every one of the 1,000 posts is
    accepted and the worker sweeps while they come in, yet one mail goes out (one per
    address per HEBDO_CONFIRM_RESEND_HOURS)."""
    values = {**smtp_env, "HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT": "100000/hour"}
    app = make_app(values)
    celery_worker(values)
    client = app.test_client()
    answers = Counter(
        post(
            client, VICTIM_SPELLINGS[n % len(VICTIM_SPELLINGS)], BOTNET[n % 200], form=n % 2 == 1
        ).status_code
        for n in range(1000)
    )
    assert answers == {202: 500, 303: 500}
    (mail,) = smtp_server.wait_for(1, timeout=30)
    assert mail.rcpt_tos == ["victime@exemple.fr"]
    # The sweeps the burst scheduled have run by now; one more finds nothing owed.
    time.sleep(CONFIRMATION_WINDOW + 1.5)
    assert sweep(app) == 0
    assert len(smtp_server.messages) == 1
    with app.app_context():
        sub = db.session.execute(select(Subscriber)).scalar_one()
        assert sub.status == Status.PENDING and sub.confirm_sent_at is not None
        assert sub.confirm_due_at is None
        events = db.session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        assert events == 1  # the sign-up; the 999 repeats changed nothing


@pytest.mark.slow
def test_ten_thousand_addresses_from_one_client_store_only_its_allowance(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    """A script posting 10,000 addresses from one IP gets its per-IP allowance (30 a
    minute) and 429s with a Retry-After for the rest; only the accepted ones are stored."""
    app = make_app({**env, "HEBDO_SUBSCRIBE_RATE_LIMIT": "30/minute;500/day"})
    client = app.test_client()
    accepted_emails = set()
    for n in range(10_000):
        email = f"liste{n}@exemple.fr"
        answer = post(client, email, "203.0.113.50", form=n % 10 == 0)
        if accepted(answer):
            accepted_emails.add(email)
        else:
            assert answer.status_code == 429, (n, answer.status_code)
            assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert accepted_emails == {f"liste{n}@exemple.fr" for n in range(30)}
    assert stored_emails(app) == accepted_emails


# ---------------------------------------------------------------- probing for known addresses


def _known_addresses(app: Flask) -> dict[str, str]:
    """An address in every state a sign-up can meet, made by the domain functions."""
    settings = app.config["SETTINGS"]
    now = datetime.now(UTC)
    consent = Consent(None, "v1", "203.0.113.9", None)
    made = {}
    with app.app_context():
        for state in ("pending", "active", "unsubscribed", "bounced", "complained", "erased"):
            email = f"{state}@exemple.fr"
            result = subscribe(email, locale="fr", consent=consent, now=now, settings=settings)
            sub = db.session.get(Subscriber, result.subscriber_id)
            assert sub is not None
            if state != "pending":
                confirm(settings, confirm_token(settings, sub), ip=None, now=now)
            if state == "unsubscribed":
                unsubscribe(sub.id, channel="page", now=now)
            elif state == "bounced":
                mark_bounced(settings, sub, now, detail={"code": 550})
                db.session.commit()
            elif state == "complained":
                sub.status = Status.COMPLAINED
                db.session.commit()
            elif state == "erased":
                erase(settings, sub, by=Actor("admin:test", None), now=now)
            made[state] = email
    return made


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
def test_every_known_address_gets_the_answer_a_new_one_gets(
    app: Flask, client: FlaskClient, form: bool
) -> None:
    """Pending, active, unsubscribed, bounced, complained and erased (suppressed) addresses
    get byte for byte what a new address gets: status, headers and body, for the box's
    JSON and the plain form's redirect alike."""

    def answer(email: str) -> tuple[int, list[tuple[str, str]], bytes]:
        response = post(client, email, "203.0.113.20", form=form)
        # Date and the request id differ per request whatever the address.
        headers = sorted(
            (k, v) for k, v in response.headers.items() if k not in ("Date", "X-Request-ID")
        )
        return response.status_code, headers, response.get_data()

    known = _known_addresses(app)
    new = answer("nouveau@exemple.fr")
    assert new[0] == (303 if form else 202)
    for state, email in known.items():
        assert answer(email) == new, state
    assert answer("nouveau@exemple.fr") == new  # now pending itself


# ---------------------------------------------------------------- forged and mangled links


def _respellings(token: str) -> list[str]:
    """Other spellings of the same signature that lenient base64 decoding accepts: padding,
    the standard alphabet's + for -, and the unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    spellings = [token + "=", token[:-1] + alphabet[last ^ 1]]
    signature = token.rpartition(".")[2]
    if "-" in signature:
        # ("_" would become "/", which a URL path does not keep in one segment.)
        spellings.append(token[: -len(signature)] + signature.replace("-", "+"))
    return spellings


def _tampered(token: str) -> list[str]:
    """One character changed in each of the payload, the timestamp and the signature; cut
    short; lengthened."""
    payload_end = token.index(".", 1)
    stamp_end = token.rindex(".")
    positions = (payload_end // 2, (payload_end + stamp_end) // 2, len(token) - 5)
    changed = [token[:p] + ("A" if token[p] != "A" else "B") + token[p + 1 :] for p in positions]
    return [*changed, token[:-1], token[:20], token + "A", *_respellings(token)]


def _signed_otherwise(settings: Any, purpose: Purpose, payload: list[Any]) -> list[str]:
    """The same payload signed for every other purpose, and with a key that is not ours."""
    others = [make_token(settings, p, payload) for p in Purpose if p != purpose]
    stranger = settings.model_copy(
        update={"secret_key": "not-our-key-" + "x" * 40, "secret_key_fallbacks": ()}
    )
    return [*others, make_token(stranger, purpose, payload)]


def test_forged_expired_and_mangled_links_are_refused_and_change_nothing(
    app: Flask, client: FlaskClient
) -> None:
    """Every link page meets tampered tokens, other spellings of a good one, tokens of the
    wrong purpose or key, and expired ones, by GET, HEAD and POST: a 400 page every time
    and not one byte of the database changed. The good links then still work."""
    settings = app.config["SETTINGS"]
    now = datetime.now(UTC)
    consent = Consent(None, "v1", "203.0.113.9", None)
    with app.app_context():
        ids = {
            email: subscribe(
                email, locale="fr", consent=consent, now=now, settings=settings
            ).subscriber_id
            for email in ("attente@exemple.fr", "actif@exemple.fr", "parti@exemple.fr")
        }
        pending = db.session.get(Subscriber, ids["attente@exemple.fr"])
        active = db.session.get(Subscriber, ids["actif@exemple.fr"])
        gone = db.session.get(Subscriber, ids["parti@exemple.fr"])
        assert pending and active and gone
        for sub in (active, gone):
            confirm(settings, confirm_token(settings, sub), ip=None, now=now)
        unsubscribe(gone.id, channel="page", now=now)
        gone = db.session.get(Subscriber, ids["parti@exemple.fr"])
        assert gone is not None
        good = {
            "confirm": confirm_token(settings, pending),
            "unsubscribe": unsubscribe_token(settings, active),
            "resubscribe": resubscribe_token(settings, gone),
        }
        assert gone.unsubscribed_at is not None
        # What each link's token carries (see subscribers.tokens.confirm_token and the others).
        payloads: dict[str, list[Any]] = {
            "confirm": [pending.id, int(pending.created_at.timestamp()), pending.optin_serial],
            "unsubscribe": [active.id, int(active.created_at.timestamp())],
            "resubscribe": [
                gone.id,
                int(gone.created_at.timestamp()),
                int(gone.unsubscribed_at.timestamp() * 1_000_000),
            ],
        }
    purposes = {
        "confirm": Purpose.CONFIRM,
        "unsubscribe": Purpose.UNSUBSCRIBE,
        "resubscribe": Purpose.RESUBSCRIBE,
    }
    bad = {
        page: _tampered(good[page]) + _signed_otherwise(settings, purposes[page], payloads[page])
        for page in good
    }
    expired = {
        "confirm": _old_token(Purpose.CONFIRM, payloads["confirm"], 49 * 3600),
        "resubscribe": _old_token(Purpose.RESUBSCRIBE, payloads["resubscribe"], 8 * 24 * 3600),
    }
    before = database_dump(app)
    for page, tokens in bad.items():
        for token in [*tokens, expired.get(page)]:
            if token is None:
                continue
            path = f"/{page}/{token}"
            answers = [client.post(path, data={"List-Unsubscribe": "One-Click"})]
            if page != "resubscribe":  # a POST-only action
                answers += [client.get(path), client.head(path)]
            wanted = "Lien expiré" if token == expired.get(page) else "Lien invalide"
            for answer in answers:
                assert answer.status_code == 400, (path, answer.request.method)
                assert answer.request.method == "HEAD" or wanted in answer.text, path
    assert database_dump(app) == before
    # The genuine links were never the problem.
    assert client.post(f"/confirm/{good['confirm']}").status_code == 200
    assert client.post(f"/unsubscribe/{good['unsubscribe']}").status_code == 200
    assert client.post(f"/resubscribe/{good['resubscribe']}").status_code == 200
    assert [status_of(app, e) for e in ids] == ["active", "unsubscribed", "active"]


# ---------------------------------------------------------------- link scanners


def test_a_hundred_scanner_requests_on_mailed_links_change_nothing(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    """Mail security gateways fetch every link of a mail (GET, HEAD, with tracking
    parameters) before the reader sees it. 100 such fetches of the links of real mails
    confirm, unsubscribe and resubscribe nobody, and run no script that could."""
    for email in ("attente@exemple.fr", "actif@exemple.fr", "parti@exemple.fr"):
        assert smtp_client.post(URL, json={"email": email}).status_code == 202
    assert sweep(smtp_app) == 3
    mails = {m.rcpt_tos[0]: m for m in smtp_server.wait_for(3)}
    assert smtp_client.post(link(mails["actif@exemple.fr"], "confirm")).status_code == 200
    assert smtp_client.post(link(mails["parti@exemple.fr"], "confirm")).status_code == 200
    gone = smtp_client.post(list_unsubscribe_path(mails["parti@exemple.fr"]))
    resubscribe = re.search(r'action="(/resubscribe/[^"]+)"', gone.text)
    assert resubscribe
    links = [
        link(mails["attente@exemple.fr"], "confirm"),
        link(mails["attente@exemple.fr"], "unsubscribe"),
        list_unsubscribe_path(mails["actif@exemple.fr"]),
        link(mails["actif@exemple.fr"], "confirm"),  # already confirmed
        list_unsubscribe_path(mails["parti@exemple.fr"]),
        resubscribe.group(1),
    ]
    before = database_dump(smtp_app)
    for n in range(100):
        path = links[n % len(links)]
        query = "" if n % 3 else "?utm_source=newsletter&utm_medium=email"
        head = n % 2 == 1
        answer = (smtp_client.head if head else smtp_client.get)(
            path + query,
            headers={"User-Agent": SCANNERS[n % len(SCANNERS)], "Accept": "*/*"},
            environ_base={"REMOTE_ADDR": f"40.94.{n}.1"},
        )
        if path.startswith("/resubscribe/"):
            assert answer.status_code == 405, path  # a POST-only action
            continue
        assert answer.status_code == 200, (path, answer.status_code)
        assert "Set-Cookie" not in answer.headers
        # Scanners that render pages run their scripts: there are none, and none may run.
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert "script-src" not in answer.headers["Content-Security-Policy"]
        if not head:
            assert "<script" not in answer.text
    assert database_dump(smtp_app) == before
    assert [status_of(smtp_app, e) for e in mails] == ["pending", "active", "unsubscribed"]


def test_one_click_from_the_digests_list_unsubscribe_header(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    """The digest sent by the delivery pipeline carries RFC 8058 headers; a mail provider's
    one-click POST to its URL (no cookie, no CSRF token, the form body the RFC names)
    unsubscribes the reader, once, and answers 200 without a redirect."""
    assert smtp_client.post(URL, json={"email": "lectrice@exemple.fr"}).status_code == 202
    sweep(smtp_app)
    (confirmation,) = smtp_server.wait_for(1)
    assert smtp_client.post(link(confirmation, "confirm")).status_code == 200
    add_article(smtp_app, 1, NOW - timedelta(days=1))
    sender = Sender(smtp_app)
    assert sender.start() == 1
    sender.run()
    _confirmation, digest = smtp_server.wait_for(2)
    assert digest.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    path = list_unsubscribe_path(digest)
    provider = smtp_app.test_client()  # a mail provider's server: no session, no cookie
    for _ in range(2):
        answer = provider.post(
            path,
            data="List-Unsubscribe=One-Click",
            content_type="application/x-www-form-urlencoded",
            headers={"User-Agent": "Google-One-Click-Unsubscribe"},
        )
        assert answer.status_code == 200 and "Location" not in answer.headers
    with smtp_app.app_context():
        sub = db.session.execute(select(Subscriber)).scalar_one()
        assert sub.status == Status.UNSUBSCRIBED and sub.unsubscribe_channel == "one-click"
        actions = db.session.execute(select(AuditEvent.action)).scalars().all()
    assert actions == ["subscribe", "confirm", "unsubscribe"]


# ---------------------------------------------------------------- erasure

PERSON = "Zoe.Privee+hebdo@Exemple.fr"
STORED = "zoe.privee+hebdo@exemple.fr"
# What would betray the address, in any case: its local part, as is or percent-encoded.
TRACES = ("zoe.privee", "zoe%2eprivee")


def _redis_text() -> str:
    """Every key and value of the test's Redis database, as text (bodies of queued Celery
    messages decoded from their base64)."""
    import redis

    client: Any = redis.Redis.from_url(BROKER_URL)
    found: list[str] = []
    try:
        for key in client.scan_iter():
            found.append(key.decode("utf-8", "replace"))
            kind = client.type(key).decode()
            values: list[Any] = []
            if kind == "string":
                values = [client.get(key) or b""]
            elif kind == "list":
                values = client.lrange(key, 0, -1)
            elif kind == "hash":
                values = [b"%s=%s" % kv for kv in client.hgetall(key).items()]
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = client.zrange(key, 0, -1)
            for value in values:
                text = value.decode("utf-8", "replace")
                found.append(text)
                found += _message_bodies(text)
    finally:
        client.close()
    return "\n".join(found)


def _message_bodies(text: str) -> list[str]:
    try:
        message = json.loads(text)
    except ValueError:
        return []
    body = message.get("body") if isinstance(message, dict) else None
    if not isinstance(body, str):
        return []
    try:
        return [base64.b64decode(body).decode("utf-8", "replace")]
    except ValueError:
        return [body]


def _files_text(folder: Path) -> str:
    """Every file of the data folder as text, the SQLite database and its write-ahead log
    included: a deleted row's bytes would stay in free pages and in the log, which no dump
    shows (hence secure_delete and the checkpoint after an erasure)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            found.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(found)


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything hebdo and its libraries logged, tracebacks included; not the test's own
    SMTP server (aiosmtpd's `mail.log`), which stands for the world outside."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(
        formatter.format(record)
        for record in caplog.records
        if not record.name.startswith("mail.log")
    )


def _tokens_in(mail: Received) -> list[str]:
    return re.findall(r"/(?:confirm|unsubscribe)/([A-Za-z0-9._-]{20,})", mail.part("plain"))


def test_after_erasure_the_address_is_in_no_table_key_file_or_log(
    smtp_app: Flask,
    smtp_client: FlaskClient,
    smtp_server: SMTPSink,
    smtp_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A person's whole stay, every step logged at DEBUG: sign-up (and a mistyped one),
    a greylisted then delivered confirmation, confirmation, a greylisted then delivered
    digest, the admin searching, viewing, unsubscribing, resubscribing and bouncing them
    with notes that quote the address, the admin API, then erasure. Afterwards no table,
    Redis key or value, data file or log line holds the address, and no log line a link's
    token."""
    caplog.set_level(logging.DEBUG)
    settings = smtp_app.config["SETTINGS"]
    greylisted = (
        f"450 4.2.0 <{STORED}>: Recipient address rejected: Greylisted, "
        "see http://postgrey.schweikert.ch/help/exemple.fr.html"
    )
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"}
    mistyped = smtp_client.post(URL, json={"email": PERSON.replace("@", "@@")}, headers=browser)
    assert mistyped.status_code == 422
    assert smtp_client.post(URL, json={"email": PERSON}, headers=browser).status_code == 202

    smtp_server.rcpt_sequences[STORED] = [greylisted]
    start = datetime.now(UTC)
    assert sweep(smtp_app, start) == 0  # deferred by the server
    assert sweep(smtp_app, start + timedelta(minutes=10)) == 1
    (confirmation,) = smtp_server.wait_for(1)
    assert smtp_client.post(link(confirmation, "confirm")).status_code == 200

    add_article(smtp_app, 1, NOW - timedelta(days=1))
    smtp_server.rcpt_sequences[STORED] = [greylisted]
    sender = Sender(smtp_app)
    sender.start()
    sender.run()
    later = NOW + timedelta(hours=1)
    sender.sweep(later)
    sender.run(later)
    _confirmation, digest = smtp_server.wait_for(2)

    create_admin(smtp_app)
    admin = Admin(smtp_app.test_client())
    assert admin.login().status_code == 302
    with smtp_app.app_context():
        subscriber_id = db.session.execute(select(Subscriber.id)).scalar_one()
    assert STORED in admin.get("/admin/subscribers?q=Zoe.Privee").text
    assert admin.get(f"/admin/subscribers/{subscriber_id}").status_code == 200
    note = f"asked by phone, from {STORED}"
    for action, reason in (
        ("unsubscribe", note),
        ("resubscribe", ""),
        ("bounce", f"550 5.1.1 <{STORED}>: Recipient address rejected: User unknown"),
    ):
        answer = admin.post(f"/admin/subscribers/{subscriber_id}/{action}", {"reason": reason})
        assert answer.status_code == 302, action
    api = smtp_app.test_client()
    headers = api_token(smtp_app, "admin", "ops")
    one = api.get(f"/api/v1/admin/subscribers/{subscriber_id}", headers=headers)
    assert one.json is not None and one.json["email"] == STORED
    erased = admin.post(f"/admin/subscribers/{subscriber_id}/erase", {"confirm": "yes"})
    assert erased.status_code == 302
    assert api.get(f"/api/v1/admin/subscribers/{subscriber_id}", headers=headers).status_code == 404

    dump = json.dumps(
        [[str(v) for v in values] for _table, values in database_dump(smtp_app)],
        ensure_ascii=False,
    )
    places = {
        "database": dump,
        "data folder": _files_text(Path(smtp_env["HEBDO_DATA_DIR"])),
        "logs": _logged(caplog),
    }
    if BROKER_URL.startswith("redis"):
        places["redis"] = _redis_text()
    for place, text in places.items():
        for trace in TRACES:
            assert trace not in text.casefold(), (place, trace)
    # The logs did see this person's stay, masked as logs may show an address.
    assert "z***@exemple.fr" in places["logs"]
    tokens = _tokens_in(confirmation) + _tokens_in(digest)
    assert len(tokens) >= 3
    tokens += [headers["Authorization"].removeprefix("Bearer "), admin.csrf]
    for token in tokens:
        assert token not in places["logs"]
    # Only an HMAC is left, on the suppression list: the address is never mailed again.
    with smtp_app.app_context():
        assert is_suppressed(settings, STORED)


def test_readers_a_relay_refused_leave_no_address_in_the_issue_once_erased(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postfix refuses relaying with the recipient's address in its reply
    (`554 5.7.1 <a@b>: Relay access denied`). Enough refusals in a row pause the issue with
    the last reply in its note, a row that outlives any subscriber: once the refused
    readers are erased, neither that note nor the log holds their addresses."""
    caplog.set_level(logging.DEBUG)
    app = make_app({**smtp_env, "HEBDO_SEND_BATCH": "40"})
    add_article(app, 1, NOW - timedelta(days=1))
    readers = [f"refuse{n}@exemple.fr" for n in range(delivery.POLICY_BREAKER)]
    ids = []
    for email in readers:
        smtp_server.rcpt_replies[email] = f"554 5.7.1 <{email}>: Relay access denied"
        ids.append(_active_reader(app, email))
    sender = Sender(app)
    sender.start()
    sender.run()
    assert sender.issue().status == "paused"
    # The operator still reads what happened, not to whom.
    assert re.search(r"<r\*\*\*@exemple\.fr>: Relay access denied", sender.issue().note or "")
    settings = app.config["SETTINGS"]
    with app.app_context():
        for subscriber_id in ids:
            sub = db.session.get(Subscriber, subscriber_id)
            assert sub is not None
            erase(settings, sub, by=Actor("admin:test", None), now=datetime.now(UTC))
    dump = json.dumps([[str(v) for v in values] for _t, values in database_dump(app)])
    logged = _logged(caplog)
    for email in readers:
        local = email.partition("@")[0]
        assert local not in dump, email
        assert local not in logged, email


def _active_reader(app: Flask, email: str) -> int:
    """A confirmed reader, made by the domain functions (sign-up, then its link)."""
    settings = app.config["SETTINGS"]
    now = datetime.now(UTC)
    with app.app_context():
        result = subscribe(
            email, locale="fr", consent=Consent(None, "v1", None, None), now=now, settings=settings
        )
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None
        confirm(settings, confirm_token(settings, sub), ip=None, now=now)
        return result.subscriber_id


# ---------------------------------------------------------------- malformed input

# 20,000 nested arrays: deeper than Python's JSON decoder recurses (RecursionError).
DEEP_JSON = "[" * 20_000


def test_json_nested_too_deep_is_a_counted_4xx_everywhere_with_no_traceback(
    make_app: Callable[[dict[str, str]], Flask],
    env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(
        {
            **env,
            "HEBDO_SUBSCRIBE_RATE_LIMIT": "3/minute",
            "HEBDO_MAILGUN_SIGNING_KEY": "key-3ax6xnjp29jd6fds4gc373sgvjxteol0",
        }
    )
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1))
    with app.app_context():
        plan_issue(app.config["SETTINGS"], "2026-W48", datetime.now(UTC))
    client = app.test_client()
    token = api_token(app, "admin")
    headers = {"Content-Type": "application/json"}
    caplog.set_level(logging.INFO)

    # The sign-up form: refused, and counted by its rate limit like any other post.
    answers = [client.post(URL, data=DEEP_JSON, headers=headers) for _ in range(4)]
    assert [a.status_code for a in answers] == [400, 400, 400, 429]
    assert answers[0].get_json()["error"] == "malformed_json"
    # The token and admin APIs and the webhooks that read JSON.
    for method, path, status in [
        ("POST", "/api/v1/articles", 400),
        ("POST", "/api/v1/admin/unsubscribes", 400),
        ("PATCH", "/api/v1/admin/subscribers/1", 400),
        ("POST", "/api/v1/admin/issues/2026-W48/test", 422),
        ("POST", "/api/v1/webhooks/mailgun", 400),
    ]:
        answer = client.open(path, method=method, data=DEEP_JSON, headers={**headers, **token})
        assert answer.status_code == status, (path, answer.get_data(as_text=True))
    # The test send's limit (30 an hour) counted those posts too.
    tries = [
        client.post("/api/v1/admin/issues/2026-W48/test", data=DEEP_JSON, headers=headers | token)
        for _ in range(30)
    ]
    assert tries[-1].status_code == 429
    assert {a.status_code for a in tries} == {422, 429}
    # A CR/LF in `next` after a good password: the dashboard, not a 500.
    create_admin(app, "bob", email=None)
    browser = Admin(app.test_client())
    token_page = browser.client.get("/admin/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', token_page)
    assert csrf is not None
    answer = browser.client.post(
        "/admin/login?next=/admin/issues%0D%0ASet-Cookie:%20x=1",
        data={"name": "bob", "password": ADMIN_PASSWORD, "csrf_token": csrf.group(1)},
    )
    assert answer.status_code == 302 and answer.headers["Location"] == "/admin/"
    assert "Set-Cookie: x" not in str(answer.headers)

    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


def test_a_known_address_costs_the_database_what_a_new_one_does(app: Flask) -> None:
    """The answer's time must not tell a known address from a new one either: a sign-up of
    an active or pending address (which changes nothing) makes as many transactions and
    statements as a new address's (bench/signup_timing.py measures the times)."""
    settings = app.config["SETTINGS"]
    consent = Consent(None, settings.consent_version, None, None)
    active = "active@exemple.fr"
    _active_reader(app, active)
    work: list[str] = []

    def statement(*_args: object) -> None:
        work.append("statement")

    def begin(*_args: object) -> None:
        work.append("transaction")

    def signup(email: str, *, new: bool = False) -> list[str]:
        work.clear()
        result = subscribe(
            email, locale="fr", consent=consent, now=datetime.now(UTC), settings=settings
        )
        assert result.confirmation_due is new
        return list(work)

    with app.app_context():
        engine = db.engine
        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine, "begin", begin)
        try:
            new = signup("nouveau@exemple.fr", new=True)
            # Now pending, its mail owed: nothing changes.
            pending = signup("nouveau@exemple.fr")
            known_active = signup(active)
        finally:
            event.remove(engine, "before_cursor_execute", statement)
            event.remove(engine, "begin", begin)
    assert new and pending == new and known_active == new, (new, pending, known_active)


def _queued_sweeps(env: dict[str, str]) -> int:
    """Messages waiting in the broker's `confirm` queue (the confirmation sweeps)."""
    if BROKER_URL.startswith("redis"):
        import redis

        client = redis.Redis.from_url(BROKER_URL)
        try:
            return int(client.llen(CONFIRM_QUEUE))
        finally:
            client.close()
    folder = Path(env["HEBDO_DATA_DIR"]) / "broker" / "queue"
    return sum(1 for f in folder.iterdir() if f.name.endswith(f".{CONFIRM_QUEUE}.msg"))


def test_a_known_address_queues_the_sweep_a_new_one_queues(
    app: Flask, client: FlaskClient, env: dict[str, str]
) -> None:
    """The sweep that sends confirmation mails is queued about once a second, and a new
    address's post paid for it where a known one's did not: posted a second apart, the
    time of the answer told them apart. A known address's post queues it too."""
    _active_reader(app, "active@exemple.fr")
    assert _queued_sweeps(env) == 0
    assert accepted(post(client, "active@exemple.fr", "203.0.113.30"))
    assert _queued_sweeps(env) == 1
