"""Configuration, its reference, README, docker-compose.yml and migrations agree with the code."""

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

from service.config import (
    REFERENCE_FILE,
    SETTING_NAMES,
    ConfigError,
    load_settings,
    reference_markdown,
)
from service.extensions import TASK_ROUTES, celery_config, db
from tests.support.deploy import image_build_inputs
from tests.support.settings import ROOT

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


@pytest.mark.slow
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


def test_the_settings_reference_is_the_generated_one() -> None:
    """docs/configuration.md is what `hebdo config --reference` prints from the declaration:
    regenerate it with that command after changing a setting."""
    committed = (ROOT / REFERENCE_FILE).read_text()
    assert committed == reference_markdown(), f"run: hebdo config --reference > {REFERENCE_FILE}"
    assert f"hebdo config --reference > {REFERENCE_FILE}" in committed.split("|")[0]
    rows = re.findall(r"^\| `(HEBDO_[A-Z_]+)` \|", committed, re.M)
    assert rows == list(SETTING_NAMES)
    assert f"]({REFERENCE_FILE})" in README


def test_readme_starts_with_the_two_set_up_commands() -> None:
    commands = re.findall(r"```sh\n(.+?)\n```", README.split("## How hebdo works")[0], re.S)
    assert len(commands) == 2
    assert commands[0].rstrip().endswith("hebdo run")
    assert "pip install -e '.[test]'" in commands[1] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and 'eval "$TEST_COMMAND' in ci


COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
HEBDO_SERVICES = ("migrate", "web", "worker-mail", "worker-default", "beat", "inbound")
WORKERS = {"worker-mail": "confirm,mail", "worker-default": "default"}


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose


def _env_example() -> dict[str, str]:
    """deploy/.env.example as Compose reads it (commented-out lines left out)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            if value[:1] == value[-1:] and value[:1] in "\"'" and len(value) > 1:
                value = value[1:-1]
            values[name.strip()] = value
    return values


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def _seconds(duration: str) -> float:
    """A Compose duration such as `330s`, `5m30s` or `1m`."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_runs_each_queue_on_its_own_workers_and_exactly_one_beat() -> None:
    services = _compose()["services"]
    assert {*HEBDO_SERVICES, "postgres", "redis", "mailpit"} == set(services)
    queues = set()
    for name, queue in WORKERS.items():
        command = services[name]["command"]
        assert command[:4] == ["celery", "-A", "worker.celery_app", "worker"]
        assert _option(command, "--queues") == queue, name
        assert "--beat" not in command and "-B" not in command
        queues.update(queue.split(","))
    # Every queue a task is routed to has its workers.
    assert {route["queue"] for route in TASK_ROUTES.values()} == queues
    beats = [n for n, s in services.items() if "beat" in s.get("command", [])]
    assert beats == ["beat"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "worker.celery_app", "beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    # Its schedule survives a restart (a volume), so a restart does not fire every task.
    schedule = _option(services["beat"]["command"], "--schedule")
    assert schedule and any(v.endswith(":/data") for v in services["beat"]["volumes"])
    assert schedule.startswith("/data/")


def test_compose_migrates_once_then_serves_with_health_checks_and_restarts() -> None:
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["hebdo", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    web = services["web"]
    assert web["command"][0] == "gunicorn" and web["command"][-1] == "service.wsgi:app"
    assert "--access-logfile" not in web["command"]  # tokens are in paths
    assert all(p.startswith("127.0.0.1:") for p in web["ports"])  # the proxy is the way in
    for name in HEBDO_SERVICES[1:]:
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        for dependency in ("postgres", "redis"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy"
    for name in ("web", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    for name, service in services.items():
        if name != "migrate":
            assert service["restart"] in ("always", "unless-stopped"), name
    assert services["mailpit"]["profiles"] == ["dev"]  # the mail catcher is optional
    inbound = services["inbound"]
    assert inbound["command"][:3] == ["hebdo", "inbound", "serve"]
    assert all(p.startswith("127.0.0.1:") for p in inbound["ports"])  # no open listener
    assert "noeviction" in services["redis"]["command"]
    assert "--appendonly" in services["redis"]["command"]


def test_the_web_health_check_asks_a_route_the_app_serves(app: Flask) -> None:
    test = " ".join(_compose()["services"]["web"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:8000(/[a-z]+)", test)
    assert path and path.group(1) in ("/readyz", "/healthz")
    assert path.group(1) in {rule.rule for rule in app.url_map.iter_rules()}


def test_a_stopped_worker_is_given_time_to_finish_any_task() -> None:
    """`docker stop` sends SIGTERM (Celery's warm shutdown), then SIGKILL after the grace
    period: it must outlast the hard time limit, so no batch is ever cut short by it."""
    services = _compose()["services"]
    limit = celery_config(load_settings({"HEBDO_DATA_DIR": "/tmp"}))["task_time_limit"]
    for name in WORKERS:
        assert services[name].get("stop_signal", "SIGTERM") == "SIGTERM"
        assert _seconds(services[name]["stop_grace_period"]) > limit, name


def test_compose_takes_its_secrets_from_the_env_file_only() -> None:
    compose = _compose()
    services = compose["services"]
    for name in HEBDO_SERVICES:
        env_file = services[name]["env_file"]
        assert env_file == ".env" or env_file == [".env"], name
    secret = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN", re.I)
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if secret.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}", value), (name, key)
            # A URL's password too is interpolated, never written here.
            credentials = re.search(r"://[^:/@]+:([^@]+)@", value)
            assert credentials is None or credentials.group(1).startswith("${"), (name, key)


def test_every_setting_named_in_compose_and_env_example_exists() -> None:
    known = set(SETTING_NAMES)
    compose_text = COMPOSE.read_text()
    example_text = ENV_EXAMPLE.read_text()
    named = set(re.findall(r"\b(HEBDO_[A-Z_]+)", compose_text + example_text))
    # Names the text mentions in passing (HEBDO_*) are not settings.
    assert named - known == set(), named - known
    # Every ${VAR} Compose interpolates is in the example, and so is every setting
    # production requires.
    example = _env_example()
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", compose_text))
    assert interpolated <= set(example), interpolated - set(example)
    for required in ("HEBDO_SECRET_KEY", "HEBDO_SMTP_HOST", "HEBDO_BASE_URL", "HEBDO_MAIL_FROM"):
        assert required in example
    # What compose fixes itself is not in the example (it would be silently overridden).
    fixed = set(_compose()["services"]["web"]["environment"])
    assert fixed & set(example) == set()
    # No secret is filled in.
    for name in ("POSTGRES_PASSWORD", "HEBDO_SECRET_KEY", "HEBDO_SMTP_PASSWORD"):
        assert example[name] == "", name


def test_the_env_example_filled_in_is_a_valid_production_configuration(tmp_path: Path) -> None:
    environment = {
        **_env_example(),
        **_compose()["services"]["web"]["environment"],
        "POSTGRES_PASSWORD": "0123abcd",
        "HEBDO_SECRET_KEY": "k" * 64,
        "HEBDO_DATA_DIR": str(tmp_path),
    }
    environment = {
        key: re.sub(r"\$\{([A-Z_]+)[^}]*\}", lambda m: environment[m.group(1)], str(value))
        for key, value in environment.items()
    }
    settings = load_settings({k: v for k, v in environment.items() if k.startswith("HEBDO_")})
    assert settings.env == "production" and settings.trusted_proxies == 1
    assert settings.database_url == "postgresql+psycopg://hebdo:0123abcd@postgres:5432/hebdo"
    assert settings.mail_domain == "news.example.fr"


def test_the_image_installs_the_wheel_and_runs_as_a_user() -> None:
    """The Dockerfile builds the wheel in a first stage and installs that (never the source
    tree, never editable) into the image it runs, as an unprivileged user. That the build
    stage's files make a wheel that runs is tests/test_wheel.py's: it builds from exactly
    those."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) == 2 and all(re.match(r"python:3\.\d+-slim", s) for s in stages)
    build, run = stages
    assert "pip wheel" in build and "--no-deps -w /wheels ." in build
    assert "COPY --from=build /wheels /wheels" in run
    assert re.search(r"pip install [^\n]*--no-deps /wheels/hebdo-\*\.whl", run)
    assert not re.search(r"^COPY (?!--from|pyproject)", run, re.M), "no source in the image"
    assert "PYTHONPATH" not in dockerfile
    assert not re.search(r"pip install[^\n]*\s-e\s", dockerfile)
    users = re.findall(r"^USER\s+(\S+)", run, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in image_build_inputs():
        assert needed not in ignored, needed


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
