"""Languages: the gettext catalogs hold every text the code and templates use (Babel's own
extractor reads them, as `pybabel extract` does), French plurals count 0 and 1 as one,
/dev/mailbox speaks the page's language, and commands the environment's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient
from flask_babel import force_locale, ngettext

from service import i18n
from service.mail.capture import CaptureTransport
from tests.support.admin import Admin
from tests.support.data import add_subscribers
from tests.support.settings import ROOT
from tests.support.smtp import mail_to

TRANSLATIONS = ROOT / "translations"
MessageKey = tuple[str | None, str]


def _extracted() -> dict[MessageKey, str | tuple[str, ...]]:
    """(context, id) → id (a tuple for a plural) of every text marked in service/ and
    templates/, read with translations/babel.cfg and Babel's extractors."""
    with (TRANSLATIONS / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)
    found: dict[MessageKey, str | tuple[str, ...]] = {}
    for folder in ("service", "templates"):
        for _file, _line, message, _comments, context in extract_from_dir(
            ROOT / folder, method_map, options_map
        ):
            singular = message if isinstance(message, str) else message[0]
            found[(context, singular)] = message
    return found


def _catalog(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=locale)


def _key(message: object) -> MessageKey:
    identifier = message.id  # type: ignore[attr-defined]
    singular = identifier if isinstance(identifier, str) else identifier[0]
    return (message.context, singular)  # type: ignore[attr-defined]


def test_every_text_is_in_both_catalogs_and_french_translates_all() -> None:
    extracted = _extracted()
    assert len(extracted) > 400  # the extractor did find the texts
    template = {_key(m) for m in _catalog(TRANSLATIONS / "messages.pot") if m.id}
    assert template == set(extracted), "messages.pot is stale: run pybabel extract (see i18n)"
    for locale in ("fr", "en"):
        catalog = _catalog(TRANSLATIONS / locale / "LC_MESSAGES" / "messages.po", locale)
        entries = {_key(m): m for m in catalog if m.id}
        missing = set(extracted) - set(entries)
        assert not missing, f"{locale}: not in the catalog: {sorted(missing, key=str)}"
        unused = set(entries) - set(extracted)
        assert not unused, f"{locale}: no longer used: {sorted(unused, key=str)}"
        for key, message in entries.items():
            assert message.id == extracted[key] or list(message.id) == list(extracted[key])
            assert not message.fuzzy, (locale, key)
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            assert len(strings) == catalog.num_plurals or isinstance(message.string, str)
            assert all(strings), f"{locale}: untranslated: {key}"
            # Babel's checks: the same placeholders as the id, plural forms complete.
            assert not list(message.check(catalog)), (locale, key, list(message.check(catalog)))


def test_french_counts_zero_and_one_as_singular(app: Flask) -> None:
    with app.app_context():
        for locale, expected in (
            # A no-break space between the number and its noun, as the archive always wrote it.
            (
                "fr",
                ["0\u00a0article", "1\u00a0article", "2\u00a0articles", "1000000\u00a0articles"],
            ),
            ("en", ["0 stories", "1 story", "2 stories", "1000000 stories"]),
        ):
            with force_locale(locale):
                said = [ngettext("%(num)s story", "%(num)s stories", n) for n in (0, 1, 2, 10**6)]
            assert said == expected


def _card(html: str, status: str) -> str:
    found = re.search(rf'id="subscribers-{status}">(.*?)</div>', html, re.S)
    assert found, status
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def test_admin_counts_agree_with_their_number(app: Flask, admin: Admin) -> None:
    add_subscribers(app, 1)
    add_subscribers(app, 2, status="unsubscribed", start=10)
    add_subscribers(app, 1, status="bounced", start=20)
    french = admin.get("/admin/").get_data(as_text=True)
    assert _card(french, "active") == "1 actif"
    assert _card(french, "unsubscribed") == "2 désinscrits"
    assert _card(french, "bounced") == "1 adresse en échec"
    assert _card(french, "complained") == "0 plainte"
    english = admin.get("/admin/?lang=en").get_data(as_text=True)
    assert _card(english, "active") == "1 active"
    assert _card(english, "unsubscribed") == "2 unsubscribed"
    assert _card(english, "complained") == "0 complained"


def test_dev_mailbox_in_french_and_in_english(app: Flask, client: FlaskClient) -> None:
    settings = app.config["SETTINGS"]
    CaptureTransport(settings.mail_capture_dir).send(mail_to(app, "boite@exemple.fr"))
    (eml,) = settings.mail_capture_dir.glob("*.eml")

    french = client.get("/dev/mailbox/").get_data(as_text=True)
    assert '<html lang="fr">' in french and "<h1>Courrier capturé</h1>" in french
    assert "1 message dans le dossier de capture local" in french
    assert "<th>Destinataire</th><th>Objet</th>" in french
    mail = client.get(f"/dev/mailbox/{eml.name}").get_data(as_text=True)
    assert "<h2>Partie HTML</h2>" in mail and "<h2>En-têtes</h2>" in mail
    assert "Fichier .eml brut" in mail

    english = client.get("/dev/mailbox/?lang=en").get_data(as_text=True)
    assert '<html lang="en">' in english and "<h1>Captured mail</h1>" in english
    assert "1 message in the local capture folder" in english
    assert "<th>To</th><th>Subject</th>" in english
    mail = client.get(
        f"/dev/mailbox/{eml.name}", headers={"Accept-Language": "en-GB,en;q=0.8"}
    ).get_data(as_text=True)
    assert "<h2>HTML part</h2>" in mail and "<h2>Headers</h2>" in mail

    CaptureTransport(settings.mail_capture_dir).send(mail_to(app, "deux@exemple.fr"))
    assert "2 messages dans le dossier" in client.get("/dev/mailbox/").get_data(as_text=True)


@pytest.mark.parametrize(
    ("environ", "locale"),
    [
        ({"LANG": "fr_FR.UTF-8"}, "fr"),
        ({"LC_ALL": "fr_CA.utf8", "LANG": "en_US.UTF-8"}, "fr"),
        ({"LC_MESSAGES": "fr_BE@euro"}, "fr"),
        ({"LC_ALL": "C.UTF-8", "LANG": "fr_FR.UTF-8"}, "en"),
        ({"LANG": "de_DE.UTF-8"}, "en"),
        ({"LANG": "en_GB.UTF-8"}, "en"),
        ({}, "en"),
    ],
)
def test_command_locale_from_the_environment(environ: dict[str, str], locale: str) -> None:
    assert i18n.environment_locale(environ) == locale


def test_commands_speak_the_environment_language(app: Flask) -> None:
    runner = app.test_cli_runner()
    revoke = ["admin", "token", "revoke", "nobody"]
    english = runner.invoke(args=revoke, env={"LC_ALL": "C.UTF-8"})
    assert english.exit_code == 1
    assert "error: no live token named 'nobody'" in english.output
    french = runner.invoke(args=revoke, env={"LC_ALL": "fr_FR.UTF-8"})
    assert french.exit_code == 1
    assert "erreur : aucun jeton valide nommé 'nobody'" in french.output


def test_month_names_come_from_babel() -> None:
    from datetime import date

    assert i18n.format_date("fr", date(2027, 2, 1)) == "1er février 2027"
    assert i18n.format_date("fr", date(2026, 8, 15)) == "15 août 2026"
    assert i18n.format_date("en", date(2026, 11, 23)) == "23 November 2026"
