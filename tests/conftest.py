"""Fixtures that build real components: a migrated database (SQLite, or PostgreSQL when
HEBDO_DATABASE_URL is set), the configured broker (Redis when HEBDO_BROKER_URL is set,
else the embedded file-system broker), an aiosmtpd server on loopback, Celery workers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from babel.messages.frontend import CommandLineInterface
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from service import create_app
from service.config import load_settings
from service.digest import delivery, journal
from service.extensions import db
from service.ops.runner import commands
from tests.support.admin import Admin, create_admin
from tests.support.inbound import BOUNCES, DESK
from tests.support.processes import Process, RedisServer
from tests.support.sending import send_to_readers
from tests.support.settings import BASE_URL, BROKER_URL, DATABASE_URL, ROOT, SECRET
from tests.support.smtp import Received as SentMail
from tests.support.smtp import SMTPSink, free_port

# `hebdo …` commands speak the environment's language (service.i18n): the tests read the
# English they print whatever the developer's shell is set to, in this process and in the
# servers and workers it starts.
os.environ["LC_ALL"] = "C.UTF-8"


def _compile_catalogs() -> None:
    """The `.mo` files are built by `pip install`, not committed: a catalog edited since (or
    a checkout never installed) is compiled here, so the tests see the `.po` files as they
    are. Same command as a developer's (`pybabel compile`)."""
    stale = [
        po
        for po in ROOT.glob("translations/*/LC_MESSAGES/messages.po")
        if not po.with_suffix(".mo").exists()
        or po.with_suffix(".mo").stat().st_mtime < po.stat().st_mtime
    ]
    if stale:
        CommandLineInterface().run(["pybabel", "-q", "compile", "-d", str(ROOT / "translations")])


_compile_catalogs()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The fast lane (`pytest -m "not slow"`) runs on one process per core (pytest-xdist),
    at least two: its CPU is spread over many small tests, each with its own data folder,
    SQLite file and ports, so nothing is shared between processes. Only on the embedded
    default: on PostgreSQL and Redis every test empties the one database and Redis
    database. `-n 0` (or any `-n`) decides instead; the full suite stays on one process."""
    option = config.option
    if (
        getattr(option, "markexpr", "") == "not slow"
        and config.pluginmanager.hasplugin("xdist")
        and getattr(option, "numprocesses", None) is None
        and not hasattr(config, "workerinput")
        and not DATABASE_URL
        and not BROKER_URL
    ):
        option.numprocesses = max(2, min(os.cpu_count() or 2, 8))


class BufferedClient(FlaskClient):
    """Reads each answer whole and closes it, as a WSGI server does: a file sent by Flask's
    static handling would otherwise stay open until garbage collection (a ResourceWarning,
    an error under `filterwarnings = error`)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


# Every app the tests build, however they build it.
Flask.test_client_class = BufferedClient


@pytest.fixture
def smtp_server() -> Iterator[SMTPSink]:
    sink = SMTPSink(port=free_port())
    controller = Controller(
        sink, hostname="127.0.0.1", port=sink.port, enable_SMTPUTF8=True, decode_data=False
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# --- Database ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run the Alembic migrations once; return the URL (PostgreSQL) or template file (SQLite)."""
    if DATABASE_URL:
        engine = create_engine(DATABASE_URL)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        url = DATABASE_URL
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('template') / 'hebdo.sqlite3'}"
    data_dir = tmp_path_factory.mktemp("migrate")
    app = create_app(
        {
            "HEBDO_ENV": "test",
            "HEBDO_DATA_DIR": str(data_dir),
            "HEBDO_DATABASE_URL": url,
            "HEBDO_SECRET_KEY": SECRET,
            "HEBDO_BROKER_URL": "memory://",
        }
    )
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return url


# Every table of the schema: each test starts from empty ones.
# Every table, so a new model cannot leak rows from one PostgreSQL test into the next.
TABLES = tuple(table.name for table in db.metadata.sorted_tables)


def _fresh_database(template: str, data_dir: Path) -> str:
    if DATABASE_URL:
        engine = create_engine(DATABASE_URL)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        engine.dispose()
        return DATABASE_URL
    path = data_dir / "hebdo.sqlite3"
    shutil.copyfile(template.removeprefix("sqlite:///"), path)
    return f"sqlite:///{path}"


def _fresh_broker() -> None:
    if BROKER_URL.startswith("redis"):
        import redis

        client = redis.Redis.from_url(BROKER_URL)
        client.flushdb()
        client.close()


@pytest.fixture
def env(tmp_path: Path, migrated_database: str) -> dict[str, str]:
    """HEBDO_* settings of one test: its own database, broker and data folder; mail captured."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _fresh_broker()
    values = {
        "HEBDO_ENV": "test",
        "HEBDO_DATA_DIR": str(data_dir),
        "HEBDO_DATABASE_URL": _fresh_database(migrated_database, data_dir),
        "HEBDO_SECRET_KEY": SECRET,
        "HEBDO_BASE_URL": BASE_URL,
        "HEBDO_MAIL_FROM": "L'Hebdo <newsletter@news.example.fr>",
        "HEBDO_SMTP_HOST": "",
        # The news site whose article pages embed the form.
        "HEBDO_ALLOWED_ORIGINS": "https://news.example.fr",
        # Tests post at once after "showing" a form; the fill-time test sets its own.
        "HEBDO_FORM_MIN_SECONDS": "0",
    }
    if BROKER_URL:
        values["HEBDO_BROKER_URL"] = BROKER_URL
    return values


@pytest.fixture
def smtp_env(env: dict[str, str], smtp_server: SMTPSink) -> dict[str, str]:
    """Settings that send through the loopback aiosmtpd server."""
    return {
        **env,
        "HEBDO_SMTP_HOST": "127.0.0.1",
        "HEBDO_SMTP_PORT": str(smtp_server.port),
        "HEBDO_SMTP_TIMEOUT": "5",
    }


def _build(values: dict[str, str]) -> Iterator[Flask]:
    # The worker's render cache lives as long as the process and knows an issue by its id
    # and planning time, which every test's fresh database repeats: a render of another
    # test's issue 1 (other articles, other settings) must not be served to this one.
    for cache in vars(delivery.TEMPLATES).values():
        if isinstance(cache, dict):
            cache.clear()
    # The same for the send journals kept per process (and their Redis connections).
    journal.reset()
    app = create_app(values)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Flask]:
    """The app on the embedded default (mail captured to the data folder)."""
    yield from _build(env)


@pytest.fixture
def smtp_app(smtp_env: dict[str, str]) -> Iterator[Flask]:
    """The app sending through the loopback SMTP server."""
    yield from _build(smtp_env)


@pytest.fixture
def make_app() -> Iterator[Callable[[dict[str, str]], Flask]]:
    """Build further apps (other keys, other brokers) that are disposed of after the test."""
    built: list[Iterator[Flask]] = []

    def make(values: dict[str, str]) -> Flask:
        generator = _build(values)
        built.append(generator)
        return next(generator)

    yield make
    for generator in built:
        next(generator, None)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def smtp_client(smtp_app: Flask) -> FlaskClient:
    return smtp_app.test_client()


@pytest.fixture
def inbound_app(make_app: Callable[[dict[str, str]], Flask], smtp_env: dict[str, str]) -> Flask:
    """A sending app with a VERP bounce address and a newsroom address for replies."""
    return make_app({**smtp_env, "HEBDO_BOUNCE_ADDRESS": BOUNCES, "HEBDO_REPLY_TO": DESK})


@pytest.fixture
def sent(inbound_app: Flask, smtp_server: SMTPSink) -> dict[str, SentMail]:
    """Issue 2026-W48 sent by `inbound_app` to three readers: what each mailbox received."""
    return send_to_readers(inbound_app, smtp_server)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start a command with HEBDO_* settings, wait for a line of its output, stop it at the end."""
    started: list[Process] = []

    def start(
        argv: list[str],
        values: dict[str, str],
        ready: str,
        timeout: float = 60,
        cwd: Path = ROOT,
        group: bool = False,
    ) -> Process:
        log = tmp_path / f"proc-{len(started)}.log"
        handle = log.open("wb")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}
        popen = subprocess.Popen(
            argv,
            env={**environ, **values},
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            # Its own process group, which a test can kill as a whole (os.killpg).
            start_new_session=group,
        )
        handle.close()
        process = Process(popen, log)
        started.append(process)
        deadline = time.monotonic() + timeout
        while ready not in process.output():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{argv[:6]} did not get ready:\n{process.output()[-3000:]}")
            time.sleep(0.1)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def celery_worker(spawn: Callable[..., Process]) -> Callable[..., Process]:
    """Start a real Celery worker (prefork) on the given settings; `beat=True` embeds beat."""

    def start(
        values: dict[str, str],
        *,
        beat: bool = False,
        concurrency: int = 1,
        group: bool = False,
        hostname: str = "",
    ) -> Process:
        values = {**values, "HEBDO_WORKER_CONCURRENCY": str(concurrency), "HEBDO_LOG_LEVEL": "INFO"}
        # The worker exactly as `hebdo run` starts it, without heartbeats (tests stop it).
        argv = [*commands(load_settings(values), "127.0.0.1", 0)["worker"], "--without-heartbeat"]
        if beat:
            argv += ["--beat", "--schedule", str(Path(values["HEBDO_DATA_DIR"]) / "beat-schedule")]
        if hostname:
            argv += ["--hostname", hostname]
        return spawn(argv, values, ready="ready.", group=group)

    return start


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis server, not started yet (`.start()`), stopped after the test."""
    server = RedisServer()
    yield server
    server.stop()


# --- Browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module (tests/support/browser.py; skipped without it, but
    under CI)."""
    from tests.support.browser import chromium

    yield from chromium()


@pytest.fixture
def admin(app: Flask) -> Admin:
    """Alice, role admin, signed in over https (the session cookie is Secure)."""
    create_admin(app)
    signed_in = Admin(app.test_client())
    assert signed_in.login().status_code == 302
    return signed_in


@pytest.fixture
def editor(app: Flask) -> Admin:
    """Eve, role editor, signed in."""
    create_admin(app, "eve", "editor", "eve@exemple.fr")
    signed_in = Admin(app.test_client())
    assert signed_in.login("eve").status_code == 302
    return signed_in
