"""A reader's whole path: form post → confirmation mail → confirm → one-click unsubscribe."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from service.extensions import db
from service.models import AuditEvent, Status, Subscriber, Suppression
from service.subscribers.lifecycle import Consent, subscribe
from service.subscribers.tokens import Purpose
from tests.support.mail import link, list_unsubscribe_path, old_token, subscriber, sweep
from tests.support.settings import SECRET
from tests.support.smtp import SMTPSink


def test_form_to_inbox_to_confirm_to_one_click_unsubscribe(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    response = smtp_client.post(
        "/api/v1/subscriptions",
        json={"email": "  Lecteur@Exemple.FR ", "source": "https://news.example.fr/article/42"},
        headers={"User-Agent": "Mozilla/5.0 test", "Accept-Language": "fr-FR,fr;q=0.9"},
    )
    assert response.status_code == 202
    assert sweep(smtp_app) == 1

    (mail,) = smtp_server.wait_for(1)
    assert mail.rcpt_tos == ["lecteur@exemple.fr"]
    assert mail.message["Subject"] == "Confirmez votre inscription à L'Hebdo"
    confirm_path = link(mail, "confirm")

    # A scanner's GET or HEAD shows the page and confirms nothing.
    assert smtp_client.head(confirm_path).status_code == 200
    page = smtp_client.get(confirm_path)
    assert page.status_code == 200 and "Je confirme mon inscription" in page.text
    assert subscriber(smtp_app, "lecteur@exemple.fr").status == Status.PENDING

    confirmed = smtp_client.post(confirm_path, environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert confirmed.status_code == 200 and "Inscription confirmée" in confirmed.text
    sub = subscriber(smtp_app, "lecteur@exemple.fr")
    assert sub.status == Status.ACTIVE
    assert sub.confirm_ip == "198.51.100.7" and sub.confirmed_at is not None
    assert sub.consent_source == "https://news.example.fr/article/42"
    assert sub.consent_user_agent == "Mozilla/5.0 test"
    assert sub.consent_text_version == "form-2026-11"

    # Confirming again is harmless.
    again = smtp_client.post(confirm_path)
    assert again.status_code == 200 and "déjà confirmée" in again.text

    # RFC 8058 one-click: a POST with that body, no cookie, no CSRF token; 200, no redirect.
    unsubscribe_path = list_unsubscribe_path(mail)
    assert smtp_client.get(unsubscribe_path).status_code == 200
    assert smtp_client.head(unsubscribe_path).status_code == 200
    assert subscriber(smtp_app, "lecteur@exemple.fr").status == Status.ACTIVE
    smtp_client._cookies.clear()
    done = smtp_client.post(
        unsubscribe_path,
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert done.status_code == 200 and "Location" not in done.headers
    assert "désabonné" in done.text
    sub = subscriber(smtp_app, "lecteur@exemple.fr")
    assert sub.status == Status.UNSUBSCRIBED and sub.unsubscribe_channel == "one-click"

    with smtp_app.app_context():
        actions = (
            db.session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars().all()
        )
    assert actions == ["subscribe", "confirm", "unsubscribe"]


def test_one_click_as_multipart_and_resubscribe_from_the_page(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    smtp_client.post("/api/v1/subscriptions", json={"email": "multi@exemple.fr", "locale": "en"})
    sweep(smtp_app)
    (mail,) = smtp_server.wait_for(1)
    assert mail.message["Subject"] == "Confirm your subscription to L'Hebdo"
    smtp_client.post(link(mail, "confirm"))
    response = smtp_client.post(
        list_unsubscribe_path(mail),
        data={"List-Unsubscribe": "One-Click"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    assert subscriber(smtp_app, "multi@exemple.fr").status == Status.UNSUBSCRIBED
    resubscribe = re.search(r'action="(/resubscribe/[^"]+)"', response.text)
    assert resubscribe, response.text
    assert "Resubscribe" in smtp_client.post(resubscribe.group(1)).text.replace(
        "subscribed again", "Resubscribe"
    )
    assert subscriber(smtp_app, "multi@exemple.fr").status == Status.ACTIVE
    # A second use of the same resubscribe link after a new unsubscription is stale.
    smtp_client.post(list_unsubscribe_path(mail))
    assert smtp_client.post(resubscribe.group(1)).status_code == 400


def test_one_confirmation_mail_per_address_per_24_hours(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    settings = smtp_app.config["SETTINGS"]
    start = datetime.now(UTC)
    consent = Consent(source=None, text_version="v1", ip="203.0.113.1", user_agent=None)
    with smtp_app.app_context():
        for minute in range(20):
            subscribe(
                "bombed@exemple.fr",
                locale="fr",
                consent=consent,
                now=start + timedelta(minutes=minute),
                settings=settings,
            )
    assert sweep(smtp_app, start + timedelta(minutes=30)) == 1
    with smtp_app.app_context():
        subscribe(
            "bombed@exemple.fr",
            locale="fr",
            consent=consent,
            now=start + timedelta(hours=23),
            settings=settings,
        )
    assert sweep(smtp_app, start + timedelta(hours=23)) == 0
    # After 24 h a pending address posted again gets a fresh link.
    later = start + timedelta(hours=24, minutes=31)
    with smtp_app.app_context():
        result = subscribe(
            "bombed@exemple.fr", locale="fr", consent=consent, now=later, settings=settings
        )
    assert result.confirmation_due
    assert sweep(smtp_app, later) == 1
    _first, second = smtp_server.wait_for(2)
    assert smtp_app.test_client().post(link(second, "confirm")).status_code == 200
    assert subscriber(smtp_app, "bombed@exemple.fr").status == Status.ACTIVE


def test_unsubscribed_address_can_opt_in_again_and_erased_one_is_unsuppressed_on_confirm(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    settings = smtp_app.config["SETTINGS"]
    smtp_client.post("/api/v1/subscriptions", json={"email": "retour@exemple.fr"})
    sweep(smtp_app)
    (first,) = smtp_server.wait_for(1)
    smtp_client.post(link(first, "confirm"))
    smtp_client.post(list_unsubscribe_path(first))
    with smtp_app.app_context():
        from service.subscribers.suppressions import suppress

        suppress(settings, "retour@exemple.fr", "erased", datetime.now(UTC))
        db.session.commit()
    # The old confirmation link belongs to the previous opt-in.
    assert smtp_client.post(link(first, "confirm")).status_code == 400
    smtp_client.post("/api/v1/subscriptions", json={"email": "retour@exemple.fr"})
    # Within 24 h of the first mail no second mail is sent, whatever the status.
    assert sweep(smtp_app) == 0
    assert subscriber(smtp_app, "retour@exemple.fr").status == Status.PENDING
    with smtp_app.app_context():
        sub = db.session.execute(
            select(Subscriber).where(Subscriber.email == "retour@exemple.fr")
        ).scalar_one()
        sub.confirm_sent_at = datetime.now(UTC) - timedelta(hours=25)
        db.session.commit()
    smtp_client.post("/api/v1/subscriptions", json={"email": "retour@exemple.fr"})
    assert sweep(smtp_app) == 1
    second = smtp_server.wait_for(2)[1]
    assert smtp_client.post(link(second, "confirm")).status_code == 200
    with smtp_app.app_context():
        assert db.session.execute(select(Suppression)).first() is None


def test_bad_expired_and_wrong_purpose_links_change_nothing(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    smtp_client.post("/api/v1/subscriptions", json={"email": "liens@exemple.fr"})
    sweep(smtp_app)
    (mail,) = smtp_server.wait_for(1)
    confirm_path = link(mail, "confirm")
    unsubscribe_path = list_unsubscribe_path(mail)
    token = confirm_path.rsplit("/", 1)[1]
    tampered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    sub = subscriber(smtp_app, "liens@exemple.fr")
    identity = [sub.id, int(sub.created_at.timestamp()), sub.optin_serial]
    expired = old_token(Purpose.CONFIRM, identity, 49 * 3600)
    for path, expected in [
        (f"/confirm/{tampered}", "Lien invalide"),
        (f"/confirm/{unsubscribe_path.rsplit('/', 1)[1]}", "Lien invalide"),  # wrong purpose
        (f"/unsubscribe/{token}", "Lien invalide"),  # wrong purpose
        (f"/confirm/{expired}", "Lien expiré"),
        ("/confirm/" + "x" * 600, "Lien invalide"),
        ("/unsubscribe/%00%ff", "Lien invalide"),
    ]:
        for method in ("get", "post"):
            response = getattr(smtp_client, method)(path)
            assert response.status_code == 400, (path, method)
            assert expected in response.text
    assert subscriber(smtp_app, "liens@exemple.fr").status == Status.PENDING
    # A 47-hour-old link still works.
    assert (
        smtp_client.post(f"/confirm/{old_token(Purpose.CONFIRM, identity, 47 * 3600)}").status_code
        == 200
    )


def test_links_survive_a_secret_key_rotation(
    smtp_env: dict[str, str], make_app: object, smtp_server: SMTPSink
) -> None:
    old = make_app(smtp_env)  # type: ignore[operator]
    old.test_client().post("/api/v1/subscriptions", json={"email": "rotation@exemple.fr"})
    sweep(old)
    (mail,) = smtp_server.wait_for(1)
    rotated = make_app(
        {
            **smtp_env,
            "HEBDO_SECRET_KEY": "new-key-" + "k" * 40,
            "HEBDO_SECRET_KEY_FALLBACKS": SECRET,
        }
    )  # type: ignore[operator]
    assert rotated.test_client().post(link(mail, "confirm")).status_code == 200
    assert rotated.test_client().post(list_unsubscribe_path(mail)).status_code == 200
    assert subscriber(rotated, "rotation@exemple.fr").status == Status.UNSUBSCRIBED
    dropped = make_app({**smtp_env, "HEBDO_SECRET_KEY": "new-key-" + "k" * 40})  # type: ignore[operator]
    assert dropped.test_client().get(list_unsubscribe_path(mail)).status_code == 400


def test_recipient_refused_marks_bounced_and_suppressed(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    smtp_server.rcpt_replies["nobody@exemple.fr"] = "550 5.1.1 No such user"
    smtp_client.post("/api/v1/subscriptions", json={"email": "nobody@exemple.fr"})
    assert sweep(smtp_app) == 0
    sub = subscriber(smtp_app, "nobody@exemple.fr")
    assert sub.status == Status.BOUNCED and "550" in (sub.confirm_last_error or "")
    assert sweep(smtp_app, datetime.now(UTC) + timedelta(days=1)) == 0  # never retried
    with smtp_app.app_context():
        assert db.session.execute(select(Suppression.reason)).scalar_one() == "bounce"


def test_transient_refusal_is_retried_later_with_the_servers_delay(
    smtp_app: Flask, smtp_client: FlaskClient, smtp_server: SMTPSink
) -> None:
    smtp_server.rcpt_replies["busy@exemple.fr"] = "451 4.7.1 Greylisted, try again in 120 seconds"
    smtp_client.post("/api/v1/subscriptions", json={"email": "busy@exemple.fr"})
    start = datetime.now(UTC)
    assert sweep(smtp_app, start) == 0
    sub = subscriber(smtp_app, "busy@exemple.fr")
    assert sub.status == Status.PENDING and sub.confirm_due_at is not None
    assert timedelta(seconds=115) < sub.confirm_due_at - start <= timedelta(seconds=125)
    assert sweep(smtp_app, start + timedelta(seconds=60)) == 0  # not due yet: nothing attempted
    assert subscriber(smtp_app, "busy@exemple.fr").confirm_attempts == 1
    del smtp_server.rcpt_replies["busy@exemple.fr"]
    assert sweep(smtp_app, start + timedelta(seconds=121)) == 1
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["busy@exemple.fr"]


def test_a_claimed_mail_is_sent_once_and_an_abandoned_claim_is_retaken(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    settings = smtp_app.config["SETTINGS"]
    now = datetime.now(UTC)
    with smtp_app.app_context():
        result = subscribe(
            "claim@exemple.fr",
            locale="fr",
            consent=Consent(None, "v1", None, None),
            now=now,
            settings=settings,
        )
        # A worker claimed it and was killed before sending.
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None
        sub.confirm_claimed_at = now
        db.session.commit()
    assert sweep(smtp_app, now + timedelta(seconds=10)) == 0  # still claimed: nobody else sends it
    later = now + timedelta(seconds=settings.claim_timeout_seconds + 1)
    assert sweep(smtp_app, later) == 1
    assert sweep(smtp_app, later) == 0
    assert len(smtp_server.wait_for(1)) == 1
