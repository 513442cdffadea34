"""The settings declaration: what a bad value says, what is read and from where, what is
derived, what is printed. (tests/test_deploy_files.py checks the deployment files and the
generated reference against it.)"""

from __future__ import annotations

import json
import os
import re
import timeit
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from pydantic import ValidationError

from service.cli.main import main
from service.config import (
    SETTING_NAMES,
    ConfigError,
    Settings,
    load_settings,
    reference_markdown,
)


def _error(tmp_path: Path, **values: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings({"HEBDO_DATA_DIR": str(tmp_path), **values})
    return str(raised.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"HEBDO_SMTP_PORT": "abc"}, "HEBDO_SMTP_PORT must be a whole number, got 'abc'"),
        ({"HEBDO_SMTP_PORT": "70000"}, "HEBDO_SMTP_PORT must be at most 65535, got 70000"),
        ({"HEBDO_SMTP_PORT": "0"}, "HEBDO_SMTP_PORT must be at least 1, got 0"),
        ({"HEBDO_SMTP_TIMEOUT": "0"}, "HEBDO_SMTP_TIMEOUT must be positive, got 0"),
        ({"HEBDO_SMTP_TIMEOUT": "soon"}, "HEBDO_SMTP_TIMEOUT must be a number, got 'soon'"),
        (
            {"HEBDO_MAX_REQUEST_BYTES": "100"},
            "HEBDO_MAX_REQUEST_BYTES must be at least 1024, got 100",
        ),
        (
            {"HEBDO_REVIEW_LEAD_HOURS": "145"},
            "HEBDO_REVIEW_LEAD_HOURS must be at most 144, got 145",
        ),
        (
            {"HEBDO_FORM_MIN_SECONDS": "4000"},
            "HEBDO_FORM_MIN_SECONDS must be between 0 and 3600, got '4000'",
        ),
        ({"HEBDO_REVIEW": "maybe"}, "HEBDO_REVIEW must be 0 or 1, got 'maybe'"),
        (
            {"HEBDO_ENV": "prod"},
            "HEBDO_ENV must be one of development, production, test, got 'prod'",
        ),
        (
            {"HEBDO_LOG_LEVEL": "verbose"},
            "HEBDO_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'VERBOSE'",
        ),
        (
            {"HEBDO_ALLOWED_ORIGINS": "https://www.site.fr/page"},
            "HEBDO_ALLOWED_ORIGINS takes origins such as https://www.site.fr, "
            "got 'https://www.site.fr/page'",
        ),
        (
            {"HEBDO_LOGIN_RATE_LIMIT": "lots"},
            "HEBDO_LOGIN_RATE_LIMIT must be a rate limit such as `20/15 minutes`, got 'lots'",
        ),
        (
            {"HEBDO_RATELIMIT_STORAGE": "memcached://cache"},
            "HEBDO_RATELIMIT_STORAGE must be redis:// or memory://, got 'memcached://cache'",
        ),
        (
            {"HEBDO_SEND_JOURNAL": "memory"},
            "HEBDO_SEND_JOURNAL must be auto, off, file or a redis:// URL, got 'memory'",
        ),
        (
            {"HEBDO_SEND_SCHEDULE": "mon"},
            "HEBDO_SEND_SCHEDULE must look like 'mon 08:00' (day, then 24 h local time), got 'mon'",
        ),
        (
            {"HEBDO_TIMEZONE": "Mars/Olympus"},
            "HEBDO_TIMEZONE must be an IANA zone like Europe/Paris, got 'Mars/Olympus'",
        ),
        (
            {"HEBDO_CAPTCHA_PROVIDER": "turnstile", "HEBDO_CAPTCHA_SITE_KEY": "site"},
            "HEBDO_CAPTCHA_PROVIDER needs HEBDO_CAPTCHA_SITE_KEY and HEBDO_CAPTCHA_SECRET",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(
    tmp_path: Path, values: dict[str, str], message: str
) -> None:
    assert _error(tmp_path, **values) == message


def test_several_bad_values_are_named_on_one_line(tmp_path: Path) -> None:
    message = _error(tmp_path, HEBDO_SMTP_PORT="abc", HEBDO_SMTP_TLS="tls", HEBDO_REVIEW="x")
    assert message == (
        "HEBDO_SMTP_PORT must be a whole number, got 'abc'; "
        "HEBDO_SMTP_TLS must be one of none, starttls, ssl, got 'tls'; "
        "HEBDO_REVIEW must be 0 or 1, got 'x'"
    )
    # Nothing of pydantic's own report leaks through.
    for word in ("\n", "validation error", "Input should", "pydantic", "type="):
        assert word not in message


def test_unknown_names_are_refused_with_a_guess_for_a_typo(tmp_path: Path) -> None:
    message = _error(tmp_path, HEBDO_SMTP_HOTS="smtp.example.fr", HEBDO_COLOUR="blue")
    assert message == (
        "unknown setting(s): HEBDO_COLOUR, HEBDO_SMTP_HOTS "
        "(see docs/configuration.md or `hebdo config --reference`); "
        "did you mean HEBDO_SMTP_HOST?"
    )
    # Names are exact: another case is another (unknown) name.
    assert _error(tmp_path, HEBDO_Smtp_Port="587").startswith(
        "unknown setting(s): HEBDO_Smtp_Port ("
    )


def test_only_the_given_mapping_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the process environment behind it, not a `.env` file where the process runs,
    not a lower-case or unprefixed name."""
    monkeypatch.setenv("HEBDO_SMTP_HOST", "from-the-environment.example.fr")
    monkeypatch.setenv("HEBDO_NO_SUCH_SETTING", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("HEBDO_SMTP_PORT=2525\nSMTP_PORT=2525\n")
    settings = load_settings(
        {"HEBDO_DATA_DIR": str(tmp_path), "hebdo_smtp_port": "abc", "SMTP_PORT": "2525"}
    )
    assert (settings.smtp_host, settings.smtp_port) == ("", 25)
    # Built directly, the class reads nothing either.
    assert Settings(data_dir=tmp_path).smtp_host == ""
    # With no mapping, the process environment is the mapping.
    monkeypatch.delenv("HEBDO_NO_SUCH_SETTING")
    monkeypatch.setenv("HEBDO_DATA_DIR", str(tmp_path))
    assert load_settings().smtp_host == "from-the-environment.example.fr"


def test_values_are_stripped_but_the_smtp_password(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "HEBDO_DATA_DIR": f" {tmp_path} ",
            "HEBDO_SMTP_PORT": " 587\n",
            "HEBDO_SMTP_HOST": " smtp.example.fr ",
            "HEBDO_SMTP_PASSWORD": " pass phrase ",
            "HEBDO_FEEDS": " https://a.fr/rss , , https://b.fr/atom ",
        }
    )
    assert (settings.smtp_port, settings.smtp_host) == (587, "smtp.example.fr")
    assert settings.smtp_password == " pass phrase "
    assert settings.feeds == ("https://a.fr/rss", "https://b.fr/atom")
    assert settings.data_dir == tmp_path


def test_defaults_computed_from_other_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "HEBDO_DATA_DIR": str(tmp_path),
            "HEBDO_ENV": "production",
            "HEBDO_SECRET_KEY": "k" * 48,
            "HEBDO_SMTP_HOST": "smtp.example.fr",
            "HEBDO_MAIL_FROM": "L'Hebdo <Newsletter@News.Example.FR>",
            "HEBDO_BASE_URL": "https://Hebdo.Example.fr/",
            "HEBDO_ALLOWED_ORIGINS": "https://www.site.fr/, https://hebdo.example.fr",
            "HEBDO_BROKER_URL": "redis://127.0.0.1:6379/0",
            "HEBDO_SEND_SCHEDULE": "Friday 17:30",
            "HEBDO_SECRET_KEY_FALLBACKS": "old-1, old-2",
        }
    )
    assert settings.mail_from_address == "Newsletter@News.Example.FR"
    assert settings.mail_domain == "news.example.fr"
    assert settings.list_id == "hebdo.news.example.fr"
    assert settings.unsubscribe_mailto == "unsubscribe@news.example.fr"
    assert settings.base_url == "https://Hebdo.Example.fr"
    assert settings.allowed_origins == ("https://hebdo.example.fr", "https://www.site.fr")
    assert settings.ratelimit_storage == "redis://127.0.0.1:6379/0"
    assert settings.send_journal == "redis://127.0.0.1:6379/0"
    assert load_settings({"HEBDO_DATA_DIR": str(tmp_path)}).send_journal == "file"
    assert settings.broker_transport_options["visibility_timeout"] == 3600
    assert settings.broker_folders == ()
    assert (settings.send_weekday, str(settings.send_time)) == (4, "17:30:00")
    assert settings.log_format == "json" and settings.feeds == ()
    assert settings.signing_keys == ("old-2", "old-1", "k" * 48)
    assert settings.dkim_key is None and not settings.capture_mail


def test_settings_are_immutable(tmp_path: Path) -> None:
    settings = load_settings({"HEBDO_DATA_DIR": str(tmp_path)})
    with pytest.raises(ValidationError, match="frozen"):
        settings.smtp_host = "smtp.example.fr"  # type: ignore[misc]


def test_public_masks_secrets_and_url_passwords(tmp_path: Path) -> None:
    shown = load_settings(
        {
            "HEBDO_DATA_DIR": str(tmp_path),
            "HEBDO_SECRET_KEY": "s" * 40,
            "HEBDO_SECRET_KEY_FALLBACKS": "old-key",
            "HEBDO_SMTP_PASSWORD": "smtp-pass",
            "HEBDO_CAPTCHA_PROVIDER": "turnstile",
            "HEBDO_CAPTCHA_SITE_KEY": "public-site-key",
            "HEBDO_CAPTCHA_SECRET": "captcha-secret",
            "HEBDO_DATABASE_URL": "postgresql+psycopg://hebdo:db-pass@db:5432/hebdo",
            "HEBDO_BROKER_URL": "redis://:redis-pass@redis:6379/0",
        }
    ).public()
    text = json.dumps(shown, default=str)
    for secret in ("s" * 40, "old-key", "smtp-pass", "captcha-secret", "db-pass", "redis-pass"):
        assert secret not in text, secret
    assert shown["database_url"] == "postgresql+psycopg://hebdo:***@db:5432/hebdo"
    assert shown["captcha_site_key"] == "public-site-key" and shown["smtp_port"] == 25
    assert shown["mail_domain"] == "hebdo.localhost"  # derived values are shown too


def _invoke(values: dict[str, str], *args: str) -> Result:
    # Only the test's settings: none of the shell's HEBDO_* may leak in.
    environ: dict[str, str | None] = {k: None for k in os.environ if k.startswith("HEBDO_")}
    environ.update(values)
    return CliRunner().invoke(main, ["config", *args], env=environ)


def test_the_reference_is_printed_even_when_the_configuration_is_broken() -> None:
    result = _invoke({"HEBDO_SMTP_PORT": "abc"}, "--reference")
    assert result.exit_code == 0, result.output
    assert result.output == reference_markdown()


def test_the_reference_has_one_row_per_setting_with_its_default() -> None:
    rows = re.findall(r"^\| `(HEBDO_[A-Z_]+)` \| ([^|]+) \| (.+) \|$", reference_markdown(), re.M)
    assert [name for name, _, _ in rows] == list(SETTING_NAMES)
    found = {name: (default, meaning) for name, default, meaning in rows}
    assert found["HEBDO_SMTP_PORT"][0] == "`25`"
    assert found["HEBDO_SMTP_HOST"][0] == "*empty*"
    assert found["HEBDO_DATABASE_URL"][0] == "`sqlite:///<HEBDO_DATA_DIR>/hebdo.sqlite3`"
    assert found["HEBDO_SEND_SCHEDULE"][1].startswith("Day (`mon` … `sun`")


def test_config_prints_the_settings_in_force_or_one_error_line(tmp_path: Path) -> None:
    result = _invoke({"HEBDO_DATA_DIR": str(tmp_path), "HEBDO_SMTP_PASSWORD": "smtp-pass"})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["smtp_password"] == "***" and shown["data_dir"] == str(tmp_path)

    result = _invoke({"HEBDO_DATA_DIR": str(tmp_path), "HEBDO_SMTP_PORT": "abc"})
    assert result.exit_code == 2
    assert result.output.strip() == (
        "hebdo: configuration error: HEBDO_SMTP_PORT must be a whole number, got 'abc'"
    )


def test_loading_takes_well_under_10_ms(tmp_path: Path) -> None:
    """Once per app, and the tests make an app per test: the best of 20 loads (the least
    disturbed by other work on the machine) is far below the 10 ms budget."""
    values = {"HEBDO_DATA_DIR": str(tmp_path), "HEBDO_ALLOWED_ORIGINS": "https://www.site.fr"}
    load_settings(values)  # the development key is written once
    best = min(timeit.repeat(lambda: load_settings(values), number=1, repeat=20))
    assert best < 0.010, f"{best * 1000:.1f} ms"


def test_a_copy_works_out_its_derived_values_from_its_own_settings(tmp_path: Path) -> None:
    """Derived values are computed once per Settings (the sender reads the mail domain for
    every message); a copy with other keys or another sender must not carry the original's."""
    settings = load_settings(
        {"HEBDO_DATA_DIR": str(tmp_path), "HEBDO_SECRET_KEY": "k" * 48, "HEBDO_ENV": "test"}
    )
    assert settings.signing_keys == ("k" * 48,)
    assert settings.mail_domain == "hebdo.localhost"
    copy = settings.model_copy(
        update={"secret_key": "n" * 48, "mail_from": "News <news@exemple.fr>"}
    )
    assert copy.signing_keys == ("n" * 48,) and copy.mail_domain == "exemple.fr"
    assert settings.signing_keys == ("k" * 48,) and settings.mail_domain == "hebdo.localhost"
