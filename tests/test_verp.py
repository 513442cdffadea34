"""The addresses that bring back what concerns a mail: the envelope sender of each digest
and confirmation mail is a signed VERP address naming that delivery (or that confirmation
mail), and each reader's List-Unsubscribe mailto names them; nobody can forge either."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from service.inbound.verp import (
    BounceTarget,
    bounce_address,
    read_bounce_address,
    unsubscribe_address,
    unsubscribe_signed,
    unsubscribe_subscriber_id,
)
from service.subscribers.lifecycle import Consent, subscribe
from tests.support.data import add_article, add_subscribers
from tests.support.mail import subscriber, sweep
from tests.support.sending import NOW, Sender
from tests.support.smtp import SMTPSink

BOUNCES = "bounces@news.example.fr"


@pytest.fixture
def verp_app(make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str]) -> Flask:
    return make_app({**smtp_env, "HEBDO_BOUNCE_ADDRESS": BOUNCES})


def test_each_delivery_goes_out_from_its_own_signed_bounce_address(
    verp_app: Flask, smtp_server: SMTPSink
) -> None:

    add_article(verp_app, 1, NOW - timedelta(days=1))
    ids = add_subscribers(verp_app, 3)
    sender = Sender(verp_app)
    sender.start()
    sender.run()
    received = smtp_server.wait_for(3)
    settings = verp_app.config["SETTINGS"]
    issue_id = sender.issue().id
    targets = {}
    for mail in received:
        local, _, domain = mail.mail_from.rpartition("@")
        assert domain == "news.example.fr" and local.startswith("bounces+")
        assert len(local) <= 64
        target = read_bounce_address(settings, mail.mail_from)
        assert target is not None and target.kind == "delivery"
        targets[mail.rcpt_tos[0]] = target
    assert {(t.issue_id, t.subscriber_id) for t in targets.values()} == {
        (issue_id, sub) for sub in ids
    }
    # The reader's own unsubscribe mailto rides in List-Unsubscribe, after the https link.
    for mail in received:
        header = " ".join(str(mail.message["List-Unsubscribe"]).split())
        assert header.startswith("<https://")
        mailto = header.split("<mailto:")[1].split("?")[0]
        target = targets[mail.rcpt_tos[0]]
        assert unsubscribe_subscriber_id(settings, mailto) == target.subscriber_id
        with verp_app.app_context():
            created = subscriber(verp_app, mail.rcpt_tos[0]).created_at
        assert unsubscribe_signed(settings, mailto, target.subscriber_id, created)


def test_a_confirmation_mail_names_the_opt_in_it_is_for(
    verp_app: Flask, smtp_server: SMTPSink
) -> None:
    settings = verp_app.config["SETTINGS"]
    consent = Consent(source=None, text_version="t", ip=None, user_agent=None)
    with verp_app.app_context():
        result = subscribe(
            "neuf@exemple.fr", locale="fr", consent=consent, now=NOW, settings=settings
        )
    assert sweep(verp_app, NOW) == 1
    (mail,) = smtp_server.wait_for(1)
    target = read_bounce_address(settings, mail.mail_from)
    assert target == BounceTarget("confirmation", result.subscriber_id, optin_serial=1)


def test_without_a_bounce_address_mail_goes_out_from_the_sender(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    settings = smtp_app.config["SETTINGS"]
    consent = Consent(source=None, text_version="t", ip=None, user_agent=None)
    with smtp_app.app_context():
        subscribe("ancien@exemple.fr", locale="fr", consent=consent, now=NOW, settings=settings)
    assert sweep(smtp_app, NOW) == 1
    (mail,) = smtp_server.wait_for(1)
    assert mail.mail_from == "newsletter@news.example.fr"
    assert read_bounce_address(settings, mail.mail_from) is None


def test_a_forged_or_damaged_token_names_nobody(
    verp_app: Flask, make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str]
) -> None:
    settings = verp_app.config["SETTINGS"]
    address = bounce_address(settings, 42, issue_id=7)
    assert address is not None
    assert read_bounce_address(settings, address) == BounceTarget("delivery", 42, issue_id=7)
    # An MTA that folds the local part to capitals changes nothing.
    assert read_bounce_address(settings, address.upper()) == BounceTarget(
        "delivery", 42, issue_id=7
    )
    local, _, domain = address.rpartition("@")
    payload, _, mac = local.rpartition(".")
    for forged in (
        f"{payload}.{'a' * len(mac)}@{domain}",  # a made-up signature
        address.replace(".16.", ".17.", 1).replace("d7.", "d8.", 1),  # another delivery
        f"{local}@elsewhere.example",  # another domain
        "bounces@news.example.fr",  # no token at all
        f"{local[:-1]}@{domain}",  # truncated
    ):
        assert read_bounce_address(settings, forged) is None, forged
    # Another key signs nothing here; after a rotation, the old key's addresses still work.
    stranger = make_app({**smtp_env, "HEBDO_BOUNCE_ADDRESS": BOUNCES, "HEBDO_SECRET_KEY": "k" * 48})
    assert read_bounce_address(stranger.config["SETTINGS"], address) is None
    rotated = make_app(
        {
            **smtp_env,
            "HEBDO_BOUNCE_ADDRESS": BOUNCES,
            "HEBDO_SECRET_KEY": "k" * 48,
            "HEBDO_SECRET_KEY_FALLBACKS": smtp_env["HEBDO_SECRET_KEY"],
        }
    )
    assert read_bounce_address(rotated.config["SETTINGS"], address) is not None

    created = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    mailto = unsubscribe_address(settings, 42, created)
    assert unsubscribe_signed(settings, mailto, 42, created)
    # The same id with another creation time is another subscriber (an id reused after an
    # erasure): not them.
    assert not unsubscribe_signed(settings, mailto, 42, datetime(2026, 1, 6, tzinfo=UTC))
    assert not unsubscribe_signed(settings, mailto.replace("+16.", "+17.", 1), 43, created)
