"""`hebdo doctor`: check a deployment end to end and say, for each part, what is wrong and
how to fix it.

Each check is a plain function returning `CheckResult` records (name, status, message,
fix), so tests call them without the CLI. The checks run without the Flask app: the
first thing a doctor must survive is a configuration the app itself refuses to load.

Every network operation has its own timeout, and each check also runs under a hard
deadline (`CHECK_BUDGET`), so an unreachable host, a silent SMTP port or a locked
database makes a FAIL line in seconds, never a hang. Messages never carry a secret:
URLs are shown without their password, and `redact` scrubs every configured secret
from whatever a server or a library said before it is shown.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import ipaddress
import os
import smtplib
import socket
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import dkim
import dkim.crypto
import dkim.util
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import redis
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from . import MIGRATIONS
from .config import ConfigError, Settings, load_settings

# Seconds any single network operation (connect, one reply, one DNS query) may take.
TIMEOUT = 3.0
# Hard deadline of one whole check: a check still running after this is reported as FAIL.
CHECK_BUDGET = 10.0

# The example identity shipped as HEBDO_SENDER_IDENTITY's default: no one's real address.
_EXAMPLE_IDENTITY = "L'Hebdo, 1 rue de l'Exemple, 75000 Paris, France"
# Secret keys seen in examples and tests; a key containing one of these is not a secret.
_PLACEHOLDER_KEY_WORDS = ("change", "not-for-production", "example", "secret-key", "dev-key")
# RFC 2606 / 6761 names: no public DNS, no receiving server accepts mail from them.
_RESERVED_SUFFIXES = (".localhost", ".test", ".example", ".invalid", ".local")
_RESERVED_DOMAINS = ("localhost", "example.com", "example.net", "example.org")


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class CheckResult:
    """One verdict: `message` says what was found, `fix` what to do (empty when nothing)."""

    name: str
    status: Status
    message: str
    fix: str = ""


def failed(results: Iterable[CheckResult]) -> bool:
    """True when any check failed: `hebdo doctor` then exits 1 (warnings and skips do not)."""
    return any(r.status is Status.FAIL for r in results)


# --- The whole run ----------------------------------------------------------------


def run_checks(
    environ: Mapping[str, str],
    *,
    nameserver: tuple[str, int] | None = None,
    migrations: Path = MIGRATIONS,
    timeout: float = TIMEOUT,
    budget: float = CHECK_BUDGET,
) -> list[CheckResult]:
    """Every check, in order: configuration, database, broker, SMTP, DNS of the sending
    domain. Without a configuration that loads, the others are reported as skipped:
    they would only repeat the same error in other words."""
    settings, results = check_configuration(environ)
    secrets = _secrets(environ, settings)
    if settings is None:
        reason = "the configuration does not load (see above)"
        results += [
            CheckResult(name, Status.SKIPPED, reason)
            for name in ("database", "broker", "smtp", "dns")
        ]
        return [redact(r, secrets) for r in results]
    loaded = settings
    checks: list[tuple[str, Callable[[], list[CheckResult]]]] = [
        ("database", lambda: check_database(loaded, migrations, timeout=timeout)),
        ("broker", lambda: check_broker(loaded, timeout=timeout)),
        ("smtp", lambda: check_smtp(loaded, timeout=timeout)),
        ("dns", lambda: check_dns(loaded, nameserver=nameserver, timeout=timeout)),
    ]
    for name, check in checks:
        results += _bounded(name, check, budget)
    return [redact(r, secrets) for r in results]


# What usually keeps a check from finishing, when it has to be abandoned.
_STUCK = {
    "database": "another process holds a lock on it (a migration running?), or the database "
    "server accepts connections but does not answer; retry, then look at that process",
    "broker": "the broker accepts connections but does not answer; look at its logs",
    "smtp": "the relay accepts connections but answers too slowly; look at its logs",
    "dns": "the DNS server answers too slowly; retry, or try another with --nameserver",
}


def _bounded(
    name: str, check: Callable[[], list[CheckResult]], seconds: float
) -> list[CheckResult]:
    """Run `check` in a daemon thread and give up waiting after `seconds`.

    The per-operation timeouts should make this deadline unnecessary; it is there for
    what they do not cover (a SQLite lock held by a migration waits 30 s, a libpq
    connect can wait on DNS), so that the doctor itself never hangs.
    """
    box: list[list[CheckResult]] = []

    def target() -> None:
        try:
            box.append(check())
        except Exception as exc:  # a check that crashes is a failed check, with its reason
            box.append([CheckResult(name, Status.FAIL, f"{type(exc).__name__}: {exc}")])

    thread = threading.Thread(target=target, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() or not box:
        return [
            CheckResult(
                name,
                Status.FAIL,
                f"no answer within {seconds:g} s",
                _STUCK.get(name, "retry; then check the network path to it"),
            )
        ]
    return box[0]


# --- Secrets ------------------------------------------------------------------------


_SECRET_SETTINGS = ("HEBDO_SMTP_PASSWORD", "HEBDO_SECRET_KEY", "HEBDO_CAPTCHA_SECRET")
_URL_SETTINGS = ("HEBDO_DATABASE_URL", "HEBDO_BROKER_URL", "HEBDO_RATELIMIT_STORAGE")


def _secrets(environ: Mapping[str, str], settings: Settings | None) -> list[str]:
    """Every secret value the output must never show, and its base64 form (AUTH LOGIN
    sends the password base64-encoded, and a server may quote what it received)."""
    found = [environ.get(name, "").strip() for name in _SECRET_SETTINGS]
    found += environ.get("HEBDO_SECRET_KEY_FALLBACKS", "").split(",")
    for name in _URL_SETTINGS:
        with contextlib.suppress(ValueError):
            found.append(urlsplit(environ.get(name, "")).password or "")
    if settings is not None:
        # In development the key may come from the data folder rather than the environment.
        found += [settings.secret_key, settings.smtp_password, settings.captcha_secret]
    found = [s.strip() for s in found if len(s.strip()) >= 4]
    found += [base64.b64encode(s.encode()).decode() for s in found]
    # Longest first, so a secret that contains another is hidden whole.
    return sorted(set(found), key=len, reverse=True)


def redact(result: CheckResult, secrets: Iterable[str]) -> CheckResult:
    """`result` with every occurrence of a secret replaced by `***`."""
    message, fix = result.message, result.fix
    for secret in secrets:
        message = message.replace(secret, "***")
        fix = fix.replace(secret, "***")
    return replace(result, message=message, fix=fix)


def safe_url(url: str) -> str:
    """`url` with its password shown as `***` (database and broker URLs carry one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# --- 1. Configuration -----------------------------------------------------------------


def check_configuration(environ: Mapping[str, str]) -> tuple[Settings | None, list[CheckResult]]:
    """Load the HEBDO_* settings, then look for what loads but will hurt in production.

    config.py already refuses what can never work (a production without a secret key
    or an SMTP host, malformed values, unknown names); this only adds the pitfalls
    that are legal but wrong, so nothing here repeats a refusal.
    """
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        fix = "correct the setting named above (the README's table lists every HEBDO_* setting)"
        return None, [CheckResult("configuration", Status.FAIL, str(exc), fix)]
    warnings = configuration_warnings(settings)
    if warnings:
        return settings, warnings
    message = f"settings load (HEBDO_ENV={settings.env})"
    if settings.env == "production":
        message += "; no known production pitfall"
    return settings, [CheckResult("configuration", Status.OK, message)]


def configuration_warnings(settings: Settings) -> list[CheckResult]:
    """Settings that load but are wrong for a deployment (mostly: for production)."""
    production = settings.env == "production"
    found: list[tuple[str, str]] = []
    if production and settings.base_url.startswith("http://"):
        found.append(
            (
                f"HEBDO_BASE_URL is {settings.base_url}: every confirmation and unsubscribe "
                "link travels unencrypted, and the admin session cookie is not marked Secure",
                "serve hebdo over HTTPS and set HEBDO_BASE_URL=https://…",
            )
        )
    if production and _placeholder_key(settings.secret_key):
        found.append(
            (
                "HEBDO_SECRET_KEY looks like a development or example key (short, or a "
                "placeholder): whoever guesses it can forge confirmation and unsubscribe links",
                "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
                " and move the old one to HEBDO_SECRET_KEY_FALLBACKS, so links already sent "
                "keep working",
            )
        )
    host = settings.smtp_host
    if host and settings.smtp_tls == "none" and not _loopback(host):
        if settings.smtp_user:
            found.append(
                (
                    f"HEBDO_SMTP_TLS=none towards {host}: the SMTP password and every mail "
                    "cross the network unencrypted",
                    "set HEBDO_SMTP_TLS=starttls (usually port 587) or ssl (port 465)",
                )
            )
        elif production:
            found.append(
                (
                    f"HEBDO_SMTP_TLS=none towards {host}: every mail (and its readers' "
                    "addresses) crosses the network unencrypted",
                    "set HEBDO_SMTP_TLS=starttls (usually port 587) or ssl (port 465) if the "
                    "relay offers it",
                )
            )
    if host and settings.smtp_port == 465 and settings.smtp_tls != "ssl":
        found.append(
            (
                f"HEBDO_SMTP_PORT=465 with HEBDO_SMTP_TLS={settings.smtp_tls}: port 465 expects "
                "TLS from the first byte, so the connection waits for a greeting until it "
                "times out",
                "set HEBDO_SMTP_TLS=ssl (or use port 587 with starttls)",
            )
        )
    if host and settings.smtp_port in (25, 587) and settings.smtp_tls == "ssl":
        found.append(
            (
                f"HEBDO_SMTP_TLS=ssl on port {settings.smtp_port}, which starts in plain text: "
                "the TLS handshake fails",
                "set HEBDO_SMTP_TLS=starttls (or use port 465 with ssl)",
            )
        )
    if production and settings.sender_identity.strip() in ("", _EXAMPLE_IDENTITY):
        found.append(
            (
                "HEBDO_SENDER_IDENTITY is "
                + ("empty" if not settings.sender_identity.strip() else "the shipped example")
                + ": anti-spam rules (CAN-SPAM, EU law) ask every newsletter to name its "
                "sender with a real postal address, printed in each digest's footer",
                "set HEBDO_SENDER_IDENTITY to your organisation's name and postal address",
            )
        )
    if production and _reserved(settings.mail_domain):
        found.append(
            (
                f"HEBDO_MAIL_FROM uses {settings.mail_domain}, a reserved name that no "
                "receiving server accepts mail from",
                "set HEBDO_MAIL_FROM to an address at a domain you own, e.g. "
                "'L'Hebdo <newsletter@news.your-domain.fr>'",
            )
        )
    if production and settings.ratelimit_storage == "memory://" and settings.web_workers > 1:
        found.append(
            (
                f"rate limits are kept in memory by each of the {settings.web_workers} web "
                f"workers: every sign-up and login limit is {settings.web_workers} times looser",
                "set HEBDO_RATELIMIT_STORAGE=redis://… (a Redis broker is used by default)",
            )
        )
    return [CheckResult("configuration", Status.WARN, m, f) for m, f in found]


def _placeholder_key(key: str) -> bool:
    lowered = key.lower()
    return len(key) < 32 or any(word in lowered for word in _PLACEHOLDER_KEY_WORDS)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reserved(domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return (
        domain in _RESERVED_DOMAINS
        or domain.endswith(_RESERVED_SUFFIXES)
        or any(domain.endswith("." + d) for d in _RESERVED_DOMAINS)
    )


# --- 2. Database ----------------------------------------------------------------------


def check_database(
    settings: Settings, migrations: Path = MIGRATIONS, *, timeout: float = TIMEOUT
) -> list[CheckResult]:
    """Connect, then compare the database's Alembic revision with the newest one the code
    ships: code newer than its schema fails at the first query that touches a new column."""
    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path and path != ":memory:" and not Path(path).exists():
            # Connecting would create an empty file: say what is missing instead.
            return [
                CheckResult(
                    "database",
                    Status.FAIL,
                    f"the database file {path} does not exist",
                    "run `hebdo db upgrade` to create it (`hebdo run` does so on start); "
                    "check HEBDO_DATA_DIR / HEBDO_DATABASE_URL if it should be elsewhere",
                )
            ]
        connect_args["timeout"] = timeout
    elif url.get_backend_name() == "postgresql":
        # libpq counts whole seconds and takes at least 2.
        connect_args["connect_timeout"] = max(2, round(timeout))
        connect_args["options"] = f"-c statement_timeout={int(timeout * 1000)}"
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
            tables = set(inspect(conn).get_table_names())
    except Exception as exc:  # the driver's own error classes; all mean "cannot connect"
        return [
            CheckResult(
                "database",
                Status.FAIL,
                f"cannot connect to {shown}: {_first_line(exc)}",
                "check HEBDO_DATABASE_URL (host, port, user, password, database name) "
                "and that the database server runs and accepts connections from here",
            )
        ]
    finally:
        engine.dispose()
    connected = CheckResult("database", Status.OK, f"{shown} answers")
    return [connected, _migration_state(current, tables, migrations)]


def _migration_state(current: set[str], tables: set[str], migrations: Path) -> CheckResult:
    script = ScriptDirectory(str(migrations))
    heads = set(script.get_heads())
    head = ", ".join(sorted(heads))
    upgrade = "run `hebdo db upgrade` (back up the database first)"
    if current == heads:
        return CheckResult("migrations", Status.OK, f"schema at revision {head}, the newest")
    if not current and not tables - {"alembic_version"}:
        return CheckResult(
            "migrations",
            Status.FAIL,
            f"the database is empty (code expects revision {head})",
            upgrade,
        )
    if not current:
        # Tables but no stamp: upgrading would try to create tables that exist.
        return CheckResult(
            "migrations",
            Status.FAIL,
            f"the database has tables but no migration stamp (code expects revision {head})",
            "this database was not created by hebdo's migrations: point HEBDO_DATABASE_URL "
            "at hebdo's database, or at an empty one and run `hebdo db upgrade`",
        )
    known = {r.revision for r in script.walk_revisions()}
    if not current <= known:
        return CheckResult(
            "migrations",
            Status.FAIL,
            f"the database is at revision {', '.join(sorted(current))}, which this code does "
            f"not know (newest here: {head}): a newer hebdo migrated it",
            "deploy the hebdo version that matches the database; never run older code on it",
        )
    pending = {r.revision for r in script.iterate_revisions("heads", "base")} - {
        r.revision for rev in current for r in script.iterate_revisions(rev, "base")
    }
    return CheckResult(
        "migrations",
        Status.FAIL,
        f"the database is at revision {', '.join(sorted(current))}, {len(pending)} "
        f"migration(s) behind the code ({head})",
        upgrade,
    )


def _first_line(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's background links and SQL echo."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- 3. Broker ------------------------------------------------------------------------


def check_broker(settings: Settings, *, timeout: float = TIMEOUT) -> list[CheckResult]:
    """Is the Celery broker there? Without it nothing is queued: the sweep catches up
    on confirmations later, but no digest goes out."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://")):
        return _check_redis(url, timeout)
    if url.startswith("filesystem://"):
        return _check_broker_folders(settings)
    if url.startswith("memory://"):
        return [
            CheckResult(
                "broker",
                Status.WARN,
                "memory:// lives inside one process: tasks queued by the web app never "
                "reach a worker",
                "unset HEBDO_BROKER_URL (file-system broker) or set it to redis://…",
            )
        ]
    if url.startswith("sqla+"):
        return [
            CheckResult(
                "broker",
                Status.WARN,
                f"{safe_url(url)}: kombu's SQLAlchemy transport never deletes consumed "
                "messages and has no remote control (`celery inspect` does not work)",
                "use redis://… or the default file-system broker",
            )
        ]
    return _check_kombu(url, settings, timeout)


def _check_redis(url: str, timeout: float) -> list[CheckResult]:
    shown = safe_url(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        policy = ""
        try:
            info = client.info("memory")
            policy = str(info.get("maxmemory_policy", ""))
        except redis.exceptions.RedisError:
            pass  # INFO may be disabled (managed Redis): the PING is what matters
    except redis.exceptions.RedisError as exc:
        return [
            CheckResult(
                "broker",
                Status.FAIL,
                f"Redis at {shown} does not answer PING: {exc}",
                "start Redis, or correct HEBDO_BROKER_URL (host, port, password, database)",
            )
        ]
    finally:
        client.close()
    if policy and policy != "noeviction":
        return [
            CheckResult(
                "broker",
                Status.WARN,
                f"Redis at {shown} answers, but maxmemory-policy is {policy}: under memory "
                "pressure it evicts keys, queued tasks among them",
                "set `maxmemory-policy noeviction` in redis.conf (as docker-compose.yml does)",
            )
        ]
    return [CheckResult("broker", Status.OK, f"Redis at {shown} answers PING")]


def _check_broker_folders(settings: Settings) -> list[CheckResult]:
    folders = settings.broker_folders
    for folder in folders:
        problem = _unwritable(folder)
        if problem:
            return [
                CheckResult(
                    "broker",
                    Status.FAIL,
                    f"the file-system broker cannot use {folder}: {problem}",
                    "make HEBDO_DATA_DIR writable by the user that runs hebdo (web and "
                    "worker must be the same user, on the same machine)",
                )
            ]
    where = folders[0].parent if folders else settings.data_dir
    return [CheckResult("broker", Status.OK, f"file-system broker in {where} is writable")]


def _unwritable(folder: Path) -> str:
    """Why this process cannot write in `folder` (or in the folder that will hold it)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            return "no part of the path exists"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as exc:
        return str(exc)
    return ""


def _check_kombu(url: str, settings: Settings, timeout: float) -> list[CheckResult]:
    from kombu import Connection

    shown = safe_url(url)
    try:
        with Connection(
            url,
            connect_timeout=timeout,
            transport_options=settings.broker_transport_options,
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises each transport's own errors
        return [
            CheckResult(
                "broker",
                Status.FAIL,
                f"cannot connect to {shown}: {_first_line(exc)}",
                "start the broker, or correct HEBDO_BROKER_URL",
            )
        ]
    return [CheckResult("broker", Status.OK, f"{shown} accepts a connection")]


# --- 4. SMTP --------------------------------------------------------------------------


def check_smtp(settings: Settings, *, timeout: float = TIMEOUT) -> list[CheckResult]:
    """Walk the relay the way the mailer does (connect, EHLO, STARTTLS, AUTH), then offer
    our sender address, which is where a relay says "not yours to send from"; RSET and
    QUIT then, so nothing is ever sent."""
    if settings.capture_mail:
        message = (
            f"no SMTP relay (HEBDO_SMTP_HOST is empty): every mail is written to "
            f"{settings.mail_capture_dir} and shown at /dev/mailbox, nobody receives any"
        )
        if settings.env == "production":
            return [CheckResult("smtp", Status.WARN, message, "set HEBDO_SMTP_HOST to a relay")]
        return [CheckResult("smtp", Status.OK, message)]
    s = settings
    where = f"{s.smtp_host}:{s.smtp_port}"
    wait = min(s.smtp_timeout, timeout)
    steps: list[str] = []
    conn: smtplib.SMTP | None = None
    broken = False

    def fail(message: str, fix: str) -> list[CheckResult]:
        done = f" (after {', '.join(steps)})" if steps else ""
        return [CheckResult("smtp", Status.FAIL, f"{where}: {message}{done}", fix)]

    try:
        try:
            if s.smtp_tls == "ssl":
                conn = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=wait, context=ssl.create_default_context()
                )
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=wait)
        except ssl.SSLCertVerificationError as exc:
            return fail(
                f"its TLS certificate is not trusted: {exc.verify_message}",
                "set HEBDO_SMTP_HOST to the name on the relay's certificate",
            )
        except ssl.SSLError as exc:
            return fail(
                f"TLS handshake failed: {exc.reason}",
                "HEBDO_SMTP_TLS=ssl needs a server that speaks TLS at once (port 465); "
                "use starttls for ports 25/587",
            )
        except (OSError, smtplib.SMTPException) as exc:
            return fail(
                f"cannot connect: {exc or type(exc).__name__}",
                "check HEBDO_SMTP_HOST and HEBDO_SMTP_PORT, that the relay runs, and that "
                "no firewall blocks the port from this machine",
            )
        steps.append("connect")
        code, reply = conn.ehlo()
        if code != 250:
            return fail(f"EHLO refused: {code} {_text(reply)}", _ASK_ADMIN)
        steps.append("EHLO")
        offers_starttls = conn.has_extn("starttls")
        if s.smtp_tls == "starttls":
            if not offers_starttls:
                return fail(
                    "the server does not offer STARTTLS",
                    "use HEBDO_SMTP_TLS=ssl if it listens with TLS (port 465), or none for a "
                    "relay on this machine",
                )
            try:
                conn.starttls(context=ssl.create_default_context())
            except ssl.SSLCertVerificationError as exc:
                return fail(
                    f"its TLS certificate is not trusted: {exc.verify_message}",
                    "set HEBDO_SMTP_HOST to the name on the relay's certificate",
                )
            conn.ehlo()
            steps.append("STARTTLS")
        if s.smtp_user:
            if not conn.has_extn("auth"):
                hint = (
                    "; it offers STARTTLS, and many servers offer AUTH only after it: set "
                    "HEBDO_SMTP_TLS=starttls"
                    if offers_starttls and s.smtp_tls == "none"
                    else ""
                )
                return fail(
                    f"HEBDO_SMTP_USER is set but the server offers no AUTH{hint}",
                    "set HEBDO_SMTP_TLS=starttls, or leave HEBDO_SMTP_USER empty for a relay "
                    "that needs no login",
                )
            try:
                conn.login(s.smtp_user, s.smtp_password)
            except smtplib.SMTPAuthenticationError as exc:
                return fail(
                    f"login as {s.smtp_user!r} refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                    "check HEBDO_SMTP_USER and HEBDO_SMTP_PASSWORD",
                )
            except smtplib.SMTPException as exc:
                # No AUTH mechanism in common (smtplib speaks CRAM-MD5, PLAIN and LOGIN).
                return fail(f"login as {s.smtp_user!r} impossible: {exc}", _ASK_ADMIN)
            steps.append(f"AUTH as {s.smtp_user!r}")
        code, reply = conn.mail(s.mail_from_address)
        if code != 250:
            return fail(
                f"refuses our sender {s.mail_from_address}: {code} {_text(reply)}",
                "use a HEBDO_MAIL_FROM address this relay lets you send from "
                "(its administrator or provider's settings say which)",
            )
        conn.rset()
        steps.append(f"MAIL FROM:<{s.mail_from_address}>")
    except (OSError, smtplib.SMTPException) as exc:
        broken = True
        return fail(
            f"connection broke: {exc or type(exc).__name__}",
            "check the relay's logs; a slow relay needs a larger HEBDO_SMTP_TIMEOUT",
        )
    finally:
        if conn is not None:
            # A polite QUIT, unless the connection already failed: then it would only
            # wait another timeout for a reply that is not coming.
            try:
                if broken:
                    conn.close()
                else:
                    conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()
    if s.smtp_tls == "none" and offers_starttls and not _loopback(s.smtp_host):
        return [
            CheckResult(
                "smtp",
                Status.WARN,
                f"{where}: {', '.join(steps)} accepted, in clear although the server offers "
                "STARTTLS",
                "set HEBDO_SMTP_TLS=starttls",
            )
        ]
    return [CheckResult("smtp", Status.OK, f"{where}: {', '.join(steps)} accepted")]


_ASK_ADMIN = "ask the relay's administrator (or provider) what it expects"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# --- 5. DNS of the sending domain -------------------------------------------------------


class _NoAnswer(Exception):
    """No usable answer from the DNS server (timeout, refused, network down)."""


def check_dns(
    settings: Settings,
    *,
    nameserver: tuple[str, int] | None = None,
    timeout: float = TIMEOUT,
) -> list[CheckResult]:
    """SPF, DKIM and DMARC of the domain of HEBDO_MAIL_FROM, as receiving servers see them.

    Without a working resolver the records are unknown, not missing: the result is
    SKIPPED. A resolver is tested first by asking for the root zone, which every real
    one knows (a sandbox's stub resolver that answers NXDOMAIN to everything would
    otherwise make every record look absent).
    """
    domain = settings.mail_domain
    if _reserved(domain):
        # Nothing to look up; in production the configuration check already warns.
        return [
            CheckResult(
                "dns",
                Status.SKIPPED,
                f"{domain} is a reserved name with no public DNS",
                "set HEBDO_MAIL_FROM to an address at a domain you own",
            )
        ]
    try:
        resolver = _resolver(nameserver, timeout)
    except dns.resolver.NoResolverConfiguration:
        return [_unreachable("no DNS server is configured on this machine")]
    port = f":{resolver.port}" if resolver.port != 53 else ""
    servers = ", ".join(f"{ns}{port}" for ns in resolver.nameservers)
    try:
        if _query(resolver, ".", "SOA") is None:
            return [
                _unreachable(f"the DNS server ({servers}) says even the root zone does not exist")
            ]
    except _NoAnswer as exc:
        return [_unreachable(f"no DNS server answered ({servers}: {exc})")]

    try:
        spf = _query(resolver, domain, "TXT")
    except _NoAnswer as exc:
        return [_lookup_failed("dns", domain, exc)]
    if spf is None:
        return [
            CheckResult(
                "dns",
                Status.FAIL,
                f"{domain} does not exist in DNS: receiving servers reject mail from it",
                "set HEBDO_MAIL_FROM to an address at a domain you own, or register this one",
            )
        ]
    return [
        _spf_verdict(domain, spf, settings),
        _dkim_verdict(resolver, settings),
        _dmarc_verdict(resolver, domain),
    ]


def _unreachable(reason: str) -> CheckResult:
    return CheckResult(
        "dns",
        Status.SKIPPED,
        f"network unreachable: {reason}; SPF, DKIM and DMARC not checked",
        "run `hebdo doctor` where DNS works, or name a server with --nameserver HOST[:PORT]",
    )


def _lookup_failed(name: str, query: str, exc: Exception) -> CheckResult:
    return CheckResult(
        name,
        Status.WARN,
        f"no answer for {query}: {exc}",
        "run `hebdo doctor` again; check the record with `dig TXT " + query + "`",
    )


def parse_nameserver(value: str) -> tuple[str, int]:
    """`HOST[:PORT]` (`[v6]:PORT` for an IPv6 address with a port) → (IP address, port)."""
    host, port = value.strip(), 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif host.count(":") == 1:
        host, _, number = host.partition(":")
        port = int(number)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name: dnspython asks servers by address, so look it up once here.
        try:
            host = str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0])
        except OSError as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc}") from None
    return host, port


def _resolver(nameserver: tuple[str, int] | None, timeout: float) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def _query(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> list[str] | None:
    """The records of `name` (TXT strings joined as RFC 7208 says), [] when the name
    exists without such records, None when the name does not exist."""
    try:
        answer = resolver.resolve(dns.name.from_text(name), rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        return None
    except dns.resolver.NoAnswer:
        return []
    except dns.exception.Timeout:
        raise _NoAnswer(f"no answer within {resolver.lifetime:g} s") from None
    except dns.resolver.NoNameservers as exc:
        raise _NoAnswer(str(exc)) from None
    except (OSError, dns.exception.DNSException) as exc:
        raise _NoAnswer(f"{type(exc).__name__}: {exc}") from None
    if answer.rrset is None:
        return []
    if dns.rdatatype.from_text(rdtype) != dns.rdatatype.TXT:
        return [rdata.to_text() for rdata in answer.rrset]
    # A TXT record longer than 255 octets comes as several strings, to be concatenated.
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset]


def _spf_verdict(domain: str, txt: list[str], settings: Settings) -> CheckResult:
    records = [r for r in txt if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    relay = settings.smtp_host if settings.smtp_host and not _loopback(settings.smtp_host) else ""
    example = f'{domain}. TXT "v=spf1 {"a:" + relay if relay else "ip4:<your relay address>"} ~all"'
    if not records:
        return CheckResult(
            "spf",
            Status.FAIL,
            f'no SPF record (TXT "v=spf1 …") at {domain}: receivers cannot tell which '
            "servers may send its mail, and junk or reject it",
            f"publish one naming the servers that deliver your mail, e.g. {example} "
            "(or the include: your mail provider documents)",
        )
    if len(records) > 1:
        return CheckResult(
            "spf",
            Status.FAIL,
            f"{len(records)} SPF records at {domain}: receivers treat that as an error "
            "(permerror) and ignore them all",
            "merge them into a single v=spf1 record",
        )
    record = records[0]
    if record.split()[-1].lower() in ("+all", "all"):
        return CheckResult(
            "spf",
            Status.WARN,
            f'SPF at {domain} ends in "+all": any server in the world may send as {domain}',
            'end it with "~all" or "-all" after the servers that really send',
        )
    return CheckResult("spf", Status.OK, f'{domain}: "{record}"')


def _dkim_verdict(resolver: dns.resolver.Resolver, settings: Settings) -> CheckResult:
    if not settings.dkim_selector or not settings.dkim_key:
        return CheckResult(
            "dkim",
            Status.WARN,
            "mail is not DKIM-signed (no HEBDO_DKIM_KEY_FILE): Gmail and Yahoo require DKIM "
            "from bulk senders, and DMARC can then only pass through SPF",
            "create a key (`openssl genrsa -out dkim.pem 2048`), set HEBDO_DKIM_KEY_FILE and "
            "HEBDO_DKIM_SELECTOR, and run `hebdo doctor` again: it prints the record to publish",
        )
    name = f"{settings.dkim_selector}._domainkey.{settings.mail_domain}"
    try:
        private = dkim.crypto.parse_pem_private_key(settings.dkim_key)
    except dkim.crypto.UnparsableKeyError as exc:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"HEBDO_DKIM_KEY_FILE is not an RSA private key the signer can use: {_first_line(exc)}",
            "create one with `openssl genrsa -out dkim.pem 2048`",
        )
    public = dkim_public_key(private["modulus"], private["publicExponent"])
    publish = f'publish {name}. TXT "v=DKIM1; k=rsa; p={public}"'
    try:
        txt = _query(resolver, name, "TXT")
    except _NoAnswer as exc:
        return _lookup_failed("dkim", name, exc)
    records = [r for r in txt or [] if "p" in (_tags(r) or {})]
    if not records:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"no DKIM key at {name}: every mail carries a signature receivers cannot check",
            publish,
        )
    if len(records) > 1:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"{len(records)} DKIM records at {name}: receivers pick one at random",
            f"keep only one: {publish}",
        )
    tags = _tags(records[0]) or {}
    if not tags["p"]:
        return CheckResult("dkim", Status.FAIL, f"the key at {name} is revoked (empty p=)", publish)
    if tags.get("k", "rsa").lower() != "rsa":
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"the record at {name} holds a {tags['k']} key; HEBDO_DKIM_KEY_FILE is RSA",
            publish,
        )
    try:
        published = dkim.crypto.parse_public_key(base64.b64decode(tags["p"]))
    except (ValueError, dkim.crypto.UnparsableKeyError) as exc:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"the key at {name} cannot be read: {_first_line(exc)}",
            publish,
        )
    if (published["modulus"], published["publicExponent"]) != (
        private["modulus"],
        private["publicExponent"],
    ):
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"the key published at {name} is not the public half of HEBDO_DKIM_KEY_FILE: "
            "receivers will find every signature invalid",
            f"{publish} (or point HEBDO_DKIM_KEY_FILE at the matching private key)",
        )
    bits = private["modulus"].bit_length()
    if bits < 1024:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"{name} matches HEBDO_DKIM_KEY_FILE, but a {bits}-bit key is ignored by receivers",
            "create a 2048-bit key (`openssl genrsa -out dkim.pem 2048`) and publish it",
        )
    return CheckResult("dkim", Status.OK, f"{name}: {bits}-bit RSA key matching the signing key")


def _tags(record: str) -> dict[str, str] | None:
    """A DKIM or DMARC tag list (`v=DKIM1; k=rsa; p=…`), or None when it is not one."""
    try:
        parsed = dkim.util.parse_tag_value(record.encode())
    except (dkim.util.InvalidTagValueList, UnicodeError):
        return None
    return {k.decode().lower(): v.decode().strip() for k, v in parsed.items()}


def _dmarc_verdict(resolver: dns.resolver.Resolver, domain: str) -> CheckResult:
    """DMARC at the domain, else at its parent domains (a receiver falls back to the
    organizational domain; without the public suffix list, stop at two labels)."""
    labels = domain.split(".")
    candidates = [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]
    example = f'_dmarc.{domain}. TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"'
    fix = f"publish {example}, read the reports, then move to p=quarantine once every mail passes"
    for where in candidates:
        name = f"_dmarc.{where}"
        try:
            txt = _query(resolver, name, "TXT")
        except _NoAnswer as exc:
            return _lookup_failed("dmarc", name, exc)
        records = [r for r in txt or [] if r.startswith("v=DMARC1")]
        if not records:
            continue
        if len(records) > 1:
            return CheckResult(
                "dmarc",
                Status.FAIL,
                f"{len(records)} DMARC records at {name}: receivers ignore them all",
                "keep a single v=DMARC1 record",
            )
        tags = _tags(records[0]) or {}
        # Found at a parent: its sp= (subdomain policy) applies, if it has one.
        policy = tags.get("sp", "") if where != domain else ""
        policy = (policy or tags.get("p", "")).lower()
        if policy not in ("none", "quarantine", "reject"):
            return CheckResult(
                "dmarc",
                Status.FAIL,
                f'the DMARC record at {name} has no valid policy (p=): "{records[0]}"',
                f"publish {example}",
            )
        meaning = {
            "none": "monitoring only, nothing is rejected",
            "quarantine": "failing mail goes to spam",
            "reject": "failing mail is refused",
        }[policy]
        return CheckResult("dmarc", Status.OK, f"{name}: policy {policy} ({meaning})")
    return CheckResult(
        "dmarc",
        Status.WARN,
        f"no DMARC record at _dmarc.{domain}: Gmail and Yahoo require one from bulk senders",
        fix,
    )


def dkim_public_key(modulus: int, exponent: int) -> str:
    """The base64 DER SubjectPublicKeyInfo of an RSA key: the `p=` of its DKIM record."""

    def der(tag: int, body: bytes) -> bytes:
        size = len(body)
        if size < 0x80:
            length = bytes([size])
        else:
            octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
            length = bytes([0x80 | len(octets)]) + octets
        return bytes([tag]) + length + body

    def integer(value: int) -> bytes:
        # One spare leading octet keeps the value positive in two's complement.
        return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    rsa_encryption = der(0x06, bytes.fromhex("2a864886f70d010101")) + der(0x05, b"")
    key = der(0x30, integer(modulus) + integer(exponent))
    info = der(0x30, der(0x30, rsa_encryption) + der(0x03, b"\x00" + key))
    return base64.b64encode(info).decode()


def format_results(results: Iterable[CheckResult]) -> str:
    """The report `hebdo doctor` prints: one line per verdict, its fix indented below."""
    lines = []
    for r in results:
        lines.append(f"{r.status.value:<8}{r.name:<15}{r.message}")
        if r.fix and r.status is not Status.OK:
            lines.append(f"{'':<23}fix: {r.fix}")
    return "\n".join(lines)


# --- The command ------------------------------------------------------------------------


def _nameserver_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_nameserver(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("doctor")
@click.option(
    "--nameserver",
    metavar="HOST[:PORT]",
    callback=_nameserver_option,
    help="DNS server to ask for SPF, DKIM and DMARC (default: the system's resolvers).",
)
def doctor_command(nameserver: tuple[str, int] | None) -> None:
    """Check configuration, database, broker, SMTP relay and the sending domain's DNS."""
    results = run_checks(os.environ, nameserver=nameserver)
    click.echo(format_results(results))
    failures = sum(r.status is Status.FAIL for r in results)
    warnings = sum(r.status is Status.WARN for r in results)
    click.echo(f"\n{failures} failed, {warnings} warning(s)")
    sys.exit(1 if failures else 0)
