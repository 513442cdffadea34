"""Configuration, README, docker-compose.yml and migrations agree with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import text

from service.config import SETTINGS, ConfigError, load_settings
from service.extensions import db
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = load_settings({"HEBDO_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'hebdo.sqlite3'}"
    assert settings.broker_url == "filesystem://"
    assert settings.broker_transport_options["control_folder"] == str(
        tmp_path / "broker" / "control"
    )
    assert settings.capture_mail and settings.mail_capture_dir == tmp_path / "mail"
    # A development key is generated once and kept.
    assert settings.secret_key == load_settings({"HEBDO_DATA_DIR": str(tmp_path)}).secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    # The weekly send: Monday 08:00 in Paris, from the bundled sample feed.
    assert (settings.send_weekday, str(settings.send_time)) == (0, "08:00:00")
    assert str(settings.timezone) == "Europe/Paris" and settings.feeds == ("sample",)
    production = load_settings(
        {
            "HEBDO_DATA_DIR": str(tmp_path),
            "HEBDO_ENV": "production",
            "HEBDO_SECRET_KEY": "k" * 40,
            "HEBDO_SMTP_HOST": "smtp.example.fr",
        }
    )
    assert production.feeds == ()  # no demo articles in production


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"HEBDO_ENV": "production", "HEBDO_SMTP_HOST": "smtp.example.fr"},
            "HEBDO_SECRET_KEY is required",
        ),
        ({"HEBDO_ENV": "production", "HEBDO_SECRET_KEY": "k" * 40}, "HEBDO_SMTP_HOST is required"),
        ({"HEBDO_SMTP_TLS": "tls"}, "HEBDO_SMTP_TLS must be one of none, starttls, ssl"),
        ({"HEBDO_SMTP_PORT": "smtp"}, "HEBDO_SMTP_PORT must be a whole number"),
        ({"HEBDO_BASE_URL": "hebdo.example.fr"}, "HEBDO_BASE_URL must start with http"),
        ({"HEBDO_MAIL_FROM": "personne"}, "HEBDO_MAIL_FROM must be an address"),
        ({"HEBDO_SMTP_HOTS": "x"}, "unknown setting(s): HEBDO_SMTP_HOTS"),
        ({"HEBDO_SEND_SCHEDULE": "lundi 8h"}, "HEBDO_SEND_SCHEDULE must look like 'mon 08:00'"),
        ({"HEBDO_SEND_SCHEDULE": "mon 25:00"}, "HEBDO_SEND_SCHEDULE must look like"),
        ({"HEBDO_SEND_SCHEDULE": "monkey 08:00"}, "HEBDO_SEND_SCHEDULE must look like"),
        ({"HEBDO_TIMEZONE": "Europe"}, "HEBDO_TIMEZONE must be an IANA zone"),
        ({"HEBDO_SEND_RATE": "nan"}, "HEBDO_SEND_RATE must be a number"),
        ({"HEBDO_REVIEW_LEAD_HOURS": "200"}, "HEBDO_REVIEW_LEAD_HOURS must be at most 144"),
        ({"HEBDO_TIMEZONE": "Europe/Pariss"}, "HEBDO_TIMEZONE must be an IANA zone"),
        ({"HEBDO_SEND_RATE": "-1"}, "HEBDO_SEND_RATE must be a number of messages per second"),
        ({"HEBDO_SEND_BATCH": "0"}, "HEBDO_SEND_BATCH must be at least 1"),
        (
            {"HEBDO_CLAIM_TIMEOUT_SECONDS": "60", "HEBDO_SMTP_TIMEOUT": "30"},
            "HEBDO_CLAIM_TIMEOUT_SECONDS (60) must be at least 6 × HEBDO_SMTP_TIMEOUT (30)",
        ),
        ({"HEBDO_DKIM_KEY_FILE": "/nonexistent.pem"}, "HEBDO_DKIM_SELECTOR is required"),
        (
            {"HEBDO_DKIM_KEY_FILE": "/nonexistent.pem", "HEBDO_DKIM_SELECTOR": "s1"},
            "HEBDO_DKIM_KEY_FILE cannot be read",
        ),
    ],
)
def test_bad_configuration_is_a_clear_startup_error(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings({"HEBDO_DATA_DIR": str(tmp_path), **environ})


def test_production_without_a_secret_key_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "config"],
        env={
            "PATH": "/usr/bin:/bin",
            "HEBDO_ENV": "production",
            "HEBDO_SMTP_HOST": "smtp.example.fr",
            "HEBDO_DATA_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error: HEBDO_SECRET_KEY is required" in result.stderr


def test_readme_documents_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(HEBDO_[A-Z_]+)` \| `([^`]*)` \|", README, re.M))
    assert set(rows) == {s.name for s in SETTINGS}
    for setting in SETTINGS:
        assert rows[setting.name] == setting.default, setting.name


def test_readme_starts_with_the_two_set_up_commands() -> None:
    commands = re.findall(r"```sh\n(.+?)\n```", README.split("## How hebdo works")[0], re.S)
    assert len(commands) == 2
    assert commands[0].rstrip().endswith("hebdo run")
    assert "pip install -e '.[test]'" in commands[1] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and 'eval "$TEST_COMMAND' in ci


def test_docker_compose_services_commands_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"web", "worker", "beat", "redis", "postgres", "mailpit"} <= set(services)
    known = {s.name for s in SETTINGS}
    for name in ("web", "worker", "beat"):
        service = services[name]
        assert set(service["environment"]) <= known, set(service["environment"]) - known
        assert service["environment"]["HEBDO_ENV"] == "production"
        assert "${HEBDO_SECRET_KEY:?" in service["environment"]["HEBDO_SECRET_KEY"]
        for dependency in ("postgres", "redis"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy"
    web = " ".join(services["web"]["command"])
    assert web.index("hebdo db upgrade") < web.index("gunicorn") and "service.wsgi:app" in web
    assert services["worker"]["command"][:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "worker.celery_app", "beat"]
    assert "deploy" not in services["beat"] or services["beat"]["deploy"].get("replicas", 1) == 1
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    assert "noeviction" in services["redis"]["command"]
    smtp_host = services["web"]["environment"]["HEBDO_SMTP_HOST"]
    assert "mailpit" in smtp_host
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER hebdo" in dockerfile and "pip install --no-cache-dir -e ." in dockerfile


def test_migrations_match_the_models(app: Flask) -> None:
    """The migrated schema (see conftest) has nothing the models lack, or the reverse."""
    with app.app_context(), db.engine.connect() as connection:
        dialect = connection.dialect.name

        def for_this_database(obj: Any, name: Any, kind: str, reflected: bool, other: Any) -> bool:
            # The trigram index exists on PostgreSQL only (`ddl_if`): not a difference on SQLite.
            ddl_if = getattr(obj, "_ddl_if", None)
            return ddl_if is None or ddl_if.dialect in (None, dialect)

        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": for_this_database}
        )
        assert compare_metadata(context, db.metadata) == []


def test_the_claim_indexes_are_partial_in_the_migrated_database(app: Flask) -> None:
    """compare_metadata does not compare index predicates: check them in the database."""
    with app.app_context():
        engine = db.engine
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                rows = conn.execute(
                    text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'deliveries'"
                    )
                ).all()
            else:
                rows = conn.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'deliveries'")
                ).all()
    definitions = {name: (sql or "") for name, sql in rows}
    assert "status = 'queued'" in definitions["ix_deliveries_queued"].replace("(", "").replace(
        ")", ""
    ).replace("::text", "")
    assert "status = 'sending'" in definitions["ix_deliveries_sending"].replace("(", "").replace(
        ")", ""
    ).replace("::text", "")
