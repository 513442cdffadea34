"""Fixtures that build real components: a migrated database (SQLite, or PostgreSQL when
HEBDO_DATABASE_URL is set), the configured broker (Redis when HEBDO_BROKER_URL is set,
else the embedded file-system broker), an aiosmtpd server on loopback, Celery workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from babel.messages.frontend import CommandLineInterface
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine, insert, select, text

from service import create_app
from service.config import load_settings
from service.digest.articles import ArticleInput, store_article
from service.digest.planning import get_issue
from service.extensions import db
from service.models import Subscriber
from service.ops.runner import commands

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("HEBDO_DATABASE_URL", "")

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
BROKER_URL = os.environ.get("HEBDO_BROKER_URL", "")
SECRET = "test-secret-key-not-for-production-0123456789"
BASE_URL = "https://hebdo.example.fr"


class BufferedClient(FlaskClient):
    """Reads each answer whole and closes it, as a WSGI server does: a file sent by Flask's
    static handling would otherwise stay open until garbage collection (a ResourceWarning,
    an error under `filterwarnings = error`)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


# Every app the tests build, however they build it.
Flask.test_client_class = BufferedClient


def free_port() -> int:
    """A free loopback port (aiosmtpd's Controller cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- SMTP -------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    # time.monotonic() when the message was accepted
    at: float = 0.0

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None and body.get_content_subtype() == subtype
        content = body.get_content()
        assert isinstance(content, str)
        return content.replace("\r\n", "\n")


@dataclass
class SMTPSink:
    """aiosmtpd handler that records every accepted message, with optional fault injection."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    sessions: int = 0
    # address -> "4xx/5xx reply" to give at RCPT (fault injection)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # address -> replies for its first attempts, in order; accepted once they run out
    rcpt_sequences: dict[str, list[str]] = field(default_factory=dict)
    # seconds to sleep before accepting each message (a slow server)
    data_delay: float = 0.0
    # reply to give to every MAIL FROM (a relay refusing us), instead of accepting it
    mail_reply: str | None = None
    # replies for the next MAIL FROMs, in order (then back to normal)
    mail_sequence: list[str] = field(default_factory=list)
    # offer RFC 2920 PIPELINING, as most real servers do
    pipelining: bool = True
    # address -> how many times to hang up right after its message's final dot, unanswered
    drop_after_data: dict[str, int] = field(default_factory=dict)
    # address -> how many times to stall at its RCPT for `stall_seconds` before answering
    stall_rcpt: dict[str, int] = field(default_factory=dict)
    stall_seconds: float = 0.0
    # every RCPT seen: address -> how many times, and each refusal given (address, reply, when)
    rcpt_attempts: Counter[str] = field(default_factory=Counter)
    refusals: list[tuple[str, str, float]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads commands line by line, so it copes with pipelined ones.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        if self.mail_sequence:
            return self.mail_sequence.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        self.rcpt_attempts[address] += 1
        if self.stall_rcpt.get(address):
            self.stall_rcpt[address] -= 1
            await asyncio.sleep(self.stall_seconds)
        reply = self.rcpt_replies.get(address)
        if not reply and self.rcpt_sequences.get(address):
            reply = self.rcpt_sequences[address].pop(0)
        if reply:
            self.refusals.append((address, reply, time.monotonic()))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        drop = [a for a in envelope.rcpt_tos if self.drop_after_data.get(a)]
        with self._cond:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    list(envelope.mail_options),
                    time.monotonic(),
                )
            )
            self._cond.notify_all()
        if drop:
            # The message got through, but the client never hears so.
            self.drop_after_data[drop[0]] -= 1
            server.transport.close()
        return "250 2.0.0 Message accepted"

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} message(s), got {len(self.messages)} after {timeout}s"
                    )
                self._cond.wait(remaining)
            return list(self.messages)


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


# --- Data -------------------------------------------------------------------------

# Every header hebdo writes on a mail, and nothing else (user text never adds one).
MAIL_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
]


def add_subscribers(
    app: Flask, count: int, *, status: str = "active", locale: str = "fr", start: int = 0
) -> list[int]:
    """Insert subscribers in bulk (`reader<n>@exemple.fr`); return their ids."""
    now = datetime.now(UTC)
    rows = [
        {
            "email": f"reader{n}@exemple.fr",
            "status": status,
            "locale": locale,
            "created_at": now,
            "optin_serial": 1,
            "confirmed_at": now,
            "consent_at": now,
            "consent_text_version": "test",
            "confirm_attempts": 0,
        }
        for n in range(start, start + count)
    ]
    with app.app_context():
        db.session.execute(insert(Subscriber), rows)
        db.session.commit()
        emails = [r["email"] for r in rows]
        ids = db.session.execute(select(Subscriber.id).where(Subscriber.email.in_(emails)))
        return sorted(ids.scalars())


def add_article(app: Flask, n: int, published: datetime, **fields: Any) -> int:
    """Store one article through the same path as feeds and the API."""
    values: dict[str, Any] = {
        "url": f"https://lhebdo.example/articles/{n}",
        "title": f"Article numéro {n}",
        "summary": f"Résumé de l’article {n}.",
        "category": "International",
        **fields,
    }
    with app.app_context():
        article_id, _created = store_article(
            ArticleInput(published_at=published, **values), source="test", now=published
        )
        db.session.commit()
        return article_id


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


# --- Processes --------------------------------------------------------------------


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the main process only, SIGKILL if it hangs: signalling a Celery worker's
        whole process group kills its pool children first, and the parent then deadlocks."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


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
    ) -> Process:
        log = tmp_path / f"proc-{len(started)}.log"
        handle = log.open("wb")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}
        popen = subprocess.Popen(
            argv, env={**environ, **values}, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd
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

    def start(values: dict[str, str], *, beat: bool = False, concurrency: int = 1) -> Process:
        values = {**values, "HEBDO_WORKER_CONCURRENCY": str(concurrency), "HEBDO_LOG_LEVEL": "INFO"}
        # The worker exactly as `hebdo run` starts it, without heartbeats (tests stop it).
        argv = [*commands(load_settings(values), "127.0.0.1", 0)["worker"], "--without-heartbeat"]
        if beat:
            argv += ["--beat", "--schedule", str(Path(values["HEBDO_DATA_DIR"]) / "beat-schedule")]
        return spawn(argv, values, ready="ready.")

    return start


class RedisServer:
    """A private redis-server on a free loopback port, to stop, start and flush at will
    (a broker or rate-limit store going away) without touching the shared one."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        import redis

        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def ping(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis server, not started yet (`.start()`), stopped after the test."""
    server = RedisServer()
    yield server
    server.stop()


# --- Prometheus ---------------------------------------------------------------------


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def issue_status(app: Flask, week: str) -> str | None:
    """The issue's status as the database has it now (None when there is no issue)."""
    with app.app_context():
        db.session.expire_all()
        issue = get_issue(week)
        return issue.status if issue else None


def kill_tree(process: Process) -> None:
    """SIGKILL a worker and its pool children at once, as a crashed machine would."""
    children = subprocess.run(
        ["pgrep", "-P", str(process.popen.pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in [process.popen.pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    process.popen.wait()


# --- Browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module (tests/browser.py; skipped without it, but under CI)."""
    from tests.browser import chromium

    yield from chromium()


# --- Admin ------------------------------------------------------------------------

ADMIN_PASSWORD = "correct horse battery staple"


def create_admin(
    app: Flask, name: str = "alice", role: str = "admin", email: str | None = "alice@exemple.fr"
) -> None:
    from service.admin import accounts

    with app.app_context():
        accounts.create_user(name, ADMIN_PASSWORD, role, datetime.now(UTC), email=email)


def page_csrf(client: FlaskClient, path: str = "/admin/login") -> str:
    """The CSRF token a page carries (its <meta name="csrf-token">)."""
    html = client.get(path).get_data(as_text=True)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


class Admin:
    """A browser signed in to the admin area through the real login form."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.csrf = ""

    def login(self, name: str = "alice", password: str = ADMIN_PASSWORD) -> Any:
        token = page_csrf(self.client)
        response = self.client.post(
            "/admin/login", data={"name": name, "password": password, "csrf_token": token}
        )
        if response.status_code == 302:
            self.csrf = page_csrf(self.client, "/admin/subscribers")
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self.client.post(path, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


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


def api_token(app: Flask, role: str = "admin", name: str = "") -> dict[str, str]:
    """Headers with a fresh bearer token of `role`."""
    from service.admin import apitokens

    with app.app_context():
        token = apitokens.create_token(name or f"{role}-token", role, datetime.now(UTC))
    return {"Authorization": f"Bearer {token}"}
