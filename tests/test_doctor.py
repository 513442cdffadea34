"""`hebdo doctor` against real components: the embedded default (SQLite, file-system broker),
aiosmtpd sinks (with and without AUTH), a private Redis, and a DNS server on loopback that
answers from records the test publishes (this sandbox has no DNS of its own)."""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim.crypto
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from flask import Flask

from service.cli.main import main
from service.config import load_settings
from service.ops.doctor.broker import check_broker
from service.ops.doctor.configuration import check_configuration
from service.ops.doctor.database import check_database
from service.ops.doctor.report import CheckResult, Status, failed, format_results
from service.ops.doctor.run import run_checks
from service.ops.doctor.sending_domain import check_dns, dkim_public_key, parse_nameserver
from service.ops.doctor.smtp import check_smtp
from tests.support.smtp import SMTPSink, free_port

# The newest migration: these tests follow the schema as it grows.
(HEAD,) = ScriptDirectory(str(Path(__file__).parent.parent / "migrations")).get_heads()

DOMAIN = "news.example.fr"  # the domain of HEBDO_MAIL_FROM in the `env` fixture
SELECTOR = "hebdo2026"
SMTP_USER = "hebdo"
SMTP_PASSWORD = "Tr0ub4dor&3-relay-password"


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    """The last verdict of each check (configuration may give several warnings)."""
    return {r.name: r for r in results}


def statuses(results: list[CheckResult]) -> dict[str, Status]:
    return {r.name: r.status for r in results}


# --- A DNS server on loopback -----------------------------------------------------------


@dataclass
class DNSServer:
    """Answers UDP queries from `records` ({(name, type): [text, ...]}), as an authoritative
    server would: NXDOMAIN for names it has nothing at or under, NOERROR with no answer
    for names that exist without that type. `deny_everything` answers NXDOMAIN to all,
    like this sandbox's stub resolver."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    deny_everything: bool = False
    queries: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        # Every real resolver knows the root zone: the doctor asks it first.
        self.add(".", "SOA", "a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 1")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def add(self, name: str, rdtype: str, text: str) -> None:
        self.records.setdefault((name.rstrip(".") + ".", rdtype), []).append(text)

    def txt(self, name: str, value: str) -> None:
        """A TXT record, split into strings of at most 255 octets as DNS requires."""
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
        self.add(name, "TXT", " ".join(f'"{chunk}"' for chunk in chunks))

    def remove(self, name: str) -> None:
        for key in [k for k in self.records if k[0] == name.rstrip(".") + "."]:
            del self.records[key]

    def _exists(self, name: str) -> bool:
        return any(n == name or n.endswith("." + name) for n, _ in self.records)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            texts = self.records.get((name, rdtype))
            if self.deny_everything or not self._exists(name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif texts:
                response.answer.append(dns.rrset.from_text_list(name, 300, "IN", rdtype, texts))
            self.sock.sendto(response.to_wire(), peer)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    server = DNSServer()
    server.start()
    yield server
    server.stop()


# --- DKIM keys, made by openssl ---------------------------------------------------------


@dataclass(frozen=True)
class Key:
    path: Path
    public: str  # base64 DER SubjectPublicKeyInfo, as openssl writes it: the record's p=


def _make_key(folder: Path, name: str) -> Key:
    path = folder / f"{name}.pem"
    subprocess.run(
        [
            *("openssl", "genpkey", "-algorithm", "RSA"),
            *("-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)),
        ],
        check=True,
        capture_output=True,
    )
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return Key(path, base64.b64encode(der).decode())


@pytest.fixture(scope="module")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Key, Key]:
    """The signing key, and another one (what a stale DNS record would publish)."""
    folder = tmp_path_factory.mktemp("dkim")
    return _make_key(folder, "signing"), _make_key(folder, "other")


def publish_all(server: DNSServer, public_key: str) -> None:
    """SPF, DKIM and DMARC as a correctly set-up sending domain has them."""
    server.txt(DOMAIN, "v=spf1 a:smtp.example.fr -all")
    server.txt(DOMAIN, "google-site-verification=abc123")  # other TXT records are ignored
    server.txt(f"{SELECTOR}._domainkey.{DOMAIN}", f"v=DKIM1; k=rsa; p={public_key}")
    server.txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=quarantine; rua=mailto:dmarc@news.example.fr")


@pytest.fixture
def dkim_env(env: dict[str, str], dkim_keys: tuple[Key, Key]) -> dict[str, str]:
    return {**env, "HEBDO_DKIM_KEY_FILE": str(dkim_keys[0].path), "HEBDO_DKIM_SELECTOR": SELECTOR}


# --- SMTP servers -----------------------------------------------------------------------


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    assert isinstance(auth_data, LoginPassword)
    if auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode():
        return AuthResult(success=True)
    # A careless server that quotes what it got: the doctor must still not show it.
    quoted = auth_data.password.decode()
    return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad password {quoted}")


@pytest.fixture
def auth_smtp_server() -> Iterator[SMTPSink]:
    """An SMTP relay that offers AUTH (LOGIN, PLAIN) without TLS, as on loopback."""
    sink = SMTPSink(port=free_port())
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (certificate, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def starttls_smtp_server(certificate: tuple[Path, Path]) -> Iterator[SMTPSink]:
    """A relay that offers STARTTLS with the self-signed certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    sink = SMTPSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, tls_context=context)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a stuck relay)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


# --- The whole run ----------------------------------------------------------------------


def test_healthy_deployment_is_all_ok_and_sends_nothing(
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    dns_server: DNSServer,
    dkim_keys: tuple[Key, Key],
) -> None:
    values = {
        **smtp_env,
        "HEBDO_DKIM_KEY_FILE": str(dkim_keys[0].path),
        "HEBDO_DKIM_SELECTOR": SELECTOR,
    }
    publish_all(dns_server, dkim_keys[0].public)

    results = run_checks(values, nameserver=dns_server.address)

    assert statuses(results) == {
        "configuration": Status.OK,
        "database": Status.OK,
        "migrations": Status.OK,
        "broker": Status.OK,
        "smtp": Status.OK,
        "spf": Status.OK,
        "dkim": Status.OK,
        "dmarc": Status.OK,
    }, format_results(results)
    assert not failed(results)
    found = by_name(results)
    assert HEAD in found["migrations"].message
    assert "MAIL FROM:<newsletter@news.example.fr>" in found["smtp"].message
    assert "policy quarantine" in found["dmarc"].message
    # The relay was walked up to MAIL FROM, then reset: no message went out.
    assert smtp_server.sessions == 1 and smtp_server.messages == []


def test_a_configuration_that_does_not_load_is_one_fail_and_the_rest_skipped(
    env: dict[str, str],
) -> None:
    results = run_checks({**env, "HEBDO_SMTP_TLS": "yes please"})

    assert [(r.name, r.status) for r in results] == [
        ("configuration", Status.FAIL),
        ("database", Status.SKIPPED),
        ("broker", Status.SKIPPED),
        ("smtp", Status.SKIPPED),
        ("dns", Status.SKIPPED),
    ]
    assert "HEBDO_SMTP_TLS must be one of none, starttls, ssl" in results[0].message


def test_production_pitfalls_are_warnings_not_refusals(env: dict[str, str]) -> None:
    values = {
        **env,
        "HEBDO_ENV": "production",
        "HEBDO_BASE_URL": "http://news.example.fr",
        "HEBDO_SMTP_HOST": "smtp.example.fr",
        "HEBDO_SMTP_USER": SMTP_USER,
        "HEBDO_SMTP_PASSWORD": SMTP_PASSWORD,
        # Limits in each process's memory, whatever broker this run is configured with.
        "HEBDO_RATELIMIT_STORAGE": "memory://",
        # the `env` key says "not-for-production"; the identity stays the shipped example
    }
    settings, results = check_configuration(values)

    assert settings is not None
    assert all(r.status is Status.WARN for r in results)
    text = format_results(results)
    assert "HEBDO_BASE_URL is http://news.example.fr" in text
    assert "HEBDO_SECRET_KEY looks like a development or example key" in text
    assert "the SMTP password and every mail cross the network unencrypted" in text
    assert "HEBDO_SENDER_IDENTITY is the shipped example" in text
    # memory:// rate limits with the default 2 web workers
    assert "every sign-up and login limit is 2 times looser" in text
    assert len(results) == 5
    # The test settings themselves are fine outside production.
    assert statuses(check_configuration(env)[1]) == {"configuration": Status.OK}


@pytest.mark.parametrize(
    ("journal", "broker", "production", "says"),
    [
        (
            "file",
            "redis://127.0.0.1:6379/0",
            False,
            "rows taken back from a worker that died on another machine",
        ),
        ("off", None, True, "a worker killed mid-send takes with it which of its messages"),
        ("file", None, True, None),
        ("auto", "redis://127.0.0.1:6379/0", True, None),
        ("off", None, False, None),
    ],
)
def test_a_send_journal_that_cannot_keep_its_promise_is_a_warning(
    env: dict[str, str], journal: str, broker: str | None, production: bool, says: str | None
) -> None:
    values = {**env, "HEBDO_SEND_JOURNAL": journal, "HEBDO_SEND_BATCH": "250"}
    values.pop("HEBDO_BROKER_URL", None)
    if broker:
        values["HEBDO_BROKER_URL"] = broker
    if production:
        values |= {
            "HEBDO_ENV": "production",
            "HEBDO_SMTP_HOST": "127.0.0.1",
            "HEBDO_SECRET_KEY": "k" * 48,
            "HEBDO_SENDER_IDENTITY": "Rédaction, 3 rue Réelle, 69001 Lyon",
            "HEBDO_MAIL_FROM": "L'Hebdo <lettre@news.lhebdo.fr>",
            "HEBDO_BASE_URL": "https://news.lhebdo.fr",
            "HEBDO_RATELIMIT_STORAGE": "redis://127.0.0.1:6379/0",
        }
    settings, results = check_configuration(values)
    assert settings is not None
    if says is None:
        assert statuses(results) == {"configuration": Status.OK}, format_results(results)
    else:
        (result,) = results
        assert result.status is Status.WARN and says in result.message
        assert "up to 250 per process" in result.message
        assert "HEBDO_SEND_JOURNAL=auto" in result.fix


# --- Database ---------------------------------------------------------------------------


def _sqlite_stamped(path: Path, revision: str | None) -> str:
    """An SQLite file with only Alembic's version table (or nothing at all)."""
    with sqlite3.connect(path) as conn:
        if revision is not None:
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
            conn.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    conn.close()
    return f"sqlite:///{path}"


def test_a_database_behind_on_migrations_fails_with_the_upgrade_command(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = _sqlite_stamped(tmp_path / "old.sqlite3", "0002")
    results = check_database(load_settings({**env, "HEBDO_DATABASE_URL": url}))

    found = by_name(results)
    assert found["database"].status is Status.OK
    assert found["migrations"].status is Status.FAIL
    behind = int(HEAD) - 2
    assert f"revision 0002, {behind} migration(s) behind the code ({HEAD})" in (
        found["migrations"].message
    )
    assert "hebdo db upgrade" in found["migrations"].fix


def test_the_upgrade_hint_for_an_empty_database_works(
    env: dict[str, str], tmp_path: Path, make_app: Callable[[dict[str, str]], Flask]
) -> None:
    values = {**env, "HEBDO_DATABASE_URL": _sqlite_stamped(tmp_path / "new.sqlite3", None)}
    before = by_name(check_database(load_settings(values)))["migrations"]
    assert before.status is Status.FAIL and "is empty" in before.message
    assert "`hebdo db upgrade`" in before.fix

    # Do what the fix says, through the real command.
    result = make_app(values).test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output

    after = by_name(check_database(load_settings(values)))["migrations"]
    assert after.status is Status.OK


def test_a_database_from_a_newer_hebdo_is_not_called_behind(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = _sqlite_stamped(tmp_path / "future.sqlite3", "0099")
    found = by_name(check_database(load_settings({**env, "HEBDO_DATABASE_URL": url})))

    assert found["migrations"].status is Status.FAIL
    assert "which this code does not know" in found["migrations"].message
    assert "db upgrade" not in found["migrations"].fix


@pytest.mark.slow
def test_a_locked_database_is_a_failure_within_the_budget_not_a_hang(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A migration holding an exclusive lock: connecting would wait 30 s (busy_timeout)."""
    path = tmp_path / "locked.sqlite3"
    url = _sqlite_stamped(path, HEAD)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        results = run_checks({**env, "HEBDO_DATABASE_URL": url}, budget=1)
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    database = by_name(results)["database"]
    assert database.status is Status.FAIL
    assert database.message == "no answer within 1 s"
    assert "holds a lock" in database.fix
    assert elapsed < 8  # the other checks still ran, each within its own bound


def test_a_missing_database_file_is_reported_not_created(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "nowhere" / "hebdo.sqlite3"
    results = check_database(load_settings({**env, "HEBDO_DATABASE_URL": f"sqlite:///{path}"}))

    assert [(r.name, r.status) for r in results] == [("database", Status.FAIL)]
    assert "does not exist" in results[0].message
    assert not path.exists()


# --- Broker -----------------------------------------------------------------------------


def test_a_broker_that_is_down_fails_quickly(env: dict[str, str]) -> None:
    url = f"redis://:broker-pass-1234@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    results = run_checks({**env, "HEBDO_BROKER_URL": url})

    broker = by_name(results)["broker"]
    assert broker.status is Status.FAIL
    assert "does not answer PING" in broker.message and "start Redis" in broker.fix
    assert "broker-pass-1234" not in format_results(results)
    assert time.monotonic() - started < 10
    assert failed(results)


def test_redis_broker_answers_and_its_eviction_policy_is_checked(
    env: dict[str, str], redis_server: Any
) -> None:
    redis_server.start()
    settings = load_settings({**env, "HEBDO_BROKER_URL": redis_server.url})
    assert statuses(check_broker(settings)) == {"broker": Status.OK}

    client = redis.Redis(port=redis_server.port)
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    (result,) = check_broker(settings)
    assert result.status is Status.WARN
    assert "allkeys-lru" in result.message and "noeviction" in result.fix


# --- SMTP -------------------------------------------------------------------------------


def _auth_env(env: dict[str, str], port: int, password: str) -> dict[str, str]:
    return {
        **env,
        "HEBDO_SMTP_HOST": "127.0.0.1",
        "HEBDO_SMTP_PORT": str(port),
        "HEBDO_SMTP_USER": SMTP_USER,
        "HEBDO_SMTP_PASSWORD": password,
    }


def test_smtp_login_with_the_right_password_is_ok(
    env: dict[str, str], auth_smtp_server: SMTPSink
) -> None:
    settings = load_settings(_auth_env(env, auth_smtp_server.port, SMTP_PASSWORD))
    (result,) = check_smtp(settings)

    assert result.status is Status.OK, result
    assert "AUTH as 'hebdo'" in result.message


def test_smtp_login_with_a_wrong_password_fails_with_the_server_answer_never_the_password(
    env: dict[str, str], auth_smtp_server: SMTPSink
) -> None:
    wrong = "wrong-Password-42"
    values = _auth_env(env, auth_smtp_server.port, wrong)
    results = run_checks(values)
    smtp = by_name(results)["smtp"]

    assert smtp.status is Status.FAIL
    assert "login as 'hebdo' refused: 535" in smtp.message
    assert "HEBDO_SMTP_PASSWORD" in smtp.fix
    text = format_results(results) + repr(results)
    for secret in (wrong, base64.b64encode(wrong.encode()).decode(), SMTP_PASSWORD):
        assert secret not in text


def test_smtp_user_without_auth_on_the_server_fails(
    env: dict[str, str], smtp_server: SMTPSink
) -> None:
    settings = load_settings(_auth_env(env, smtp_server.port, SMTP_PASSWORD))
    (result,) = check_smtp(settings)

    assert result.status is Status.FAIL
    assert "offers no AUTH" in result.message


def test_a_relay_that_never_greets_fails_after_the_timeout(
    env: dict[str, str], silent_port: int
) -> None:
    settings = load_settings(
        {**env, "HEBDO_SMTP_HOST": "127.0.0.1", "HEBDO_SMTP_PORT": str(silent_port)}
    )
    started = time.monotonic()
    (result,) = check_smtp(settings, timeout=0.5)

    assert result.status is Status.FAIL and "cannot connect" in result.message
    assert time.monotonic() - started < 3


def _starttls_env(env: dict[str, str], port: int) -> dict[str, str]:
    return {
        **env,
        "HEBDO_SMTP_HOST": "127.0.0.1",
        "HEBDO_SMTP_PORT": str(port),
        "HEBDO_SMTP_TLS": "starttls",
    }


def test_starttls_with_a_trusted_certificate_is_ok(
    env: dict[str, str],
    starttls_smtp_server: SMTPSink,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Trust the test certificate the way an operator trusts a private CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    (result,) = check_smtp(load_settings(_starttls_env(env, starttls_smtp_server.port)))

    assert result.status is Status.OK, result
    assert "EHLO, STARTTLS, MAIL FROM" in result.message


def test_starttls_with_an_untrusted_certificate_fails(
    env: dict[str, str], starttls_smtp_server: SMTPSink
) -> None:
    (result,) = check_smtp(load_settings(_starttls_env(env, starttls_smtp_server.port)))

    assert result.status is Status.FAIL
    assert "its TLS certificate is not trusted" in result.message


def test_starttls_configured_but_not_offered_fails(
    env: dict[str, str], smtp_server: SMTPSink
) -> None:
    (result,) = check_smtp(load_settings(_starttls_env(env, smtp_server.port)))

    assert result.status is Status.FAIL
    assert "does not offer STARTTLS" in result.message


def test_mail_capture_is_ok_outside_production(env: dict[str, str]) -> None:
    (result,) = check_smtp(load_settings(env))
    assert result.status is Status.OK and "/dev/mailbox" in result.message


def test_a_relay_refusing_our_sender_fails(env: dict[str, str], smtp_server: SMTPSink) -> None:
    smtp_server.mail_reply = "553 5.7.1 Sender address rejected: not owned by user"
    settings = load_settings(
        {**env, "HEBDO_SMTP_HOST": "127.0.0.1", "HEBDO_SMTP_PORT": str(smtp_server.port)}
    )
    (result,) = check_smtp(settings)

    assert result.status is Status.FAIL
    assert "refuses our sender newsletter@news.example.fr: 553" in result.message


# --- DNS --------------------------------------------------------------------------------


def test_dns_all_records_present_is_ok(
    dkim_env: dict[str, str], dns_server: DNSServer, dkim_keys: tuple[Key, Key]
) -> None:
    publish_all(dns_server, dkim_keys[0].public)
    results = check_dns(load_settings(dkim_env), nameserver=dns_server.address)

    assert statuses(results) == {"spf": Status.OK, "dkim": Status.OK, "dmarc": Status.OK}
    found = by_name(results)
    assert found["spf"].message == f'{DOMAIN}: "v=spf1 a:smtp.example.fr -all"'
    # The 2048-bit key's record is longer than one DNS string: it was joined back.
    assert "2048-bit RSA key matching the signing key" in found["dkim"].message
    assert (f"{SELECTOR}._domainkey.{DOMAIN}.", "TXT") in dns_server.queries


def test_missing_dmarc_warns_with_a_record_to_publish(
    dkim_env: dict[str, str], dns_server: DNSServer, dkim_keys: tuple[Key, Key]
) -> None:
    publish_all(dns_server, dkim_keys[0].public)
    dns_server.remove(f"_dmarc.{DOMAIN}")
    found = by_name(check_dns(load_settings(dkim_env), nameserver=dns_server.address))

    assert found["dmarc"].status is Status.WARN
    assert f'_dmarc.{DOMAIN}. TXT "v=DMARC1; p=none;' in found["dmarc"].fix
    # The organisational domain was asked too, as receivers do.
    assert ("_dmarc.example.fr.", "TXT") in dns_server.queries


def test_dmarc_of_the_organisational_domain_applies(
    dkim_env: dict[str, str], dns_server: DNSServer, dkim_keys: tuple[Key, Key]
) -> None:
    publish_all(dns_server, dkim_keys[0].public)
    dns_server.remove(f"_dmarc.{DOMAIN}")
    dns_server.txt("_dmarc.example.fr", "v=DMARC1; p=reject; sp=none")
    found = by_name(check_dns(load_settings(dkim_env), nameserver=dns_server.address))

    assert found["dmarc"].status is Status.OK
    assert found["dmarc"].message.startswith("_dmarc.example.fr: policy none")


def test_missing_spf_fails_with_an_example(
    dkim_env: dict[str, str], dns_server: DNSServer, dkim_keys: tuple[Key, Key]
) -> None:
    publish_all(dns_server, dkim_keys[0].public)
    dns_server.records[(DOMAIN + ".", "TXT")] = ['"google-site-verification=abc123"']
    found = by_name(check_dns(load_settings(dkim_env), nameserver=dns_server.address))

    assert found["spf"].status is Status.FAIL
    assert f'{DOMAIN}. TXT "v=spf1 ' in found["spf"].fix


def test_a_dkim_record_of_another_key_fails_and_gives_the_right_one(
    dkim_env: dict[str, str], dns_server: DNSServer, dkim_keys: tuple[Key, Key]
) -> None:
    signing, other = dkim_keys
    publish_all(dns_server, other.public)
    found = by_name(check_dns(load_settings(dkim_env), nameserver=dns_server.address))

    assert found["dkim"].status is Status.FAIL
    assert "not the public half of HEBDO_DKIM_KEY_FILE" in found["dkim"].message
    # The record to publish carries the signing key's public half, as openssl derives it.
    assert f"p={signing.public}" in found["dkim"].fix


def test_a_missing_dkim_record_fails(
    dkim_env: dict[str, str], dns_server: DNSServer, dkim_keys: tuple[Key, Key]
) -> None:
    publish_all(dns_server, dkim_keys[0].public)
    dns_server.remove(f"{SELECTOR}._domainkey.{DOMAIN}")
    found = by_name(check_dns(load_settings(dkim_env), nameserver=dns_server.address))

    assert found["dkim"].status is Status.FAIL
    assert f"no DKIM key at {SELECTOR}._domainkey.{DOMAIN}" in found["dkim"].message
    assert f"p={dkim_keys[0].public}" in found["dkim"].fix


def test_dkim_public_key_matches_openssl(dkim_keys: tuple[Key, Key]) -> None:
    for key in dkim_keys:
        private = dkim.crypto.parse_pem_private_key(key.path.read_bytes())
        assert dkim_public_key(private["modulus"], private["publicExponent"]) == key.public


@pytest.mark.slow
def test_no_dns_server_answering_is_skipped_not_failed(env: dict[str, str]) -> None:
    started = time.monotonic()
    results = check_dns(load_settings(env), nameserver=("127.0.0.1", free_port()), timeout=1)

    assert [(r.name, r.status) for r in results] == [("dns", Status.SKIPPED)]
    assert results[0].message.startswith("network unreachable")
    assert "--nameserver" in results[0].fix
    assert time.monotonic() - started < 2.5


def test_a_silent_dns_server_is_skipped_within_the_timeout(env: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        results = check_dns(
            load_settings(env), nameserver=("127.0.0.1", silent.getsockname()[1]), timeout=0.5
        )
    assert statuses(results) == {"dns": Status.SKIPPED}
    assert time.monotonic() - started < 2


def test_a_resolver_that_denies_everything_is_skipped_not_failed(
    env: dict[str, str], dns_server: DNSServer
) -> None:
    """This sandbox's resolver answers NXDOMAIN for every name: records are unknown,
    not missing."""
    dns_server.deny_everything = True
    results = check_dns(load_settings(env), nameserver=dns_server.address)

    assert statuses(results) == {"dns": Status.SKIPPED}
    assert "root zone" in results[0].message


def test_a_sending_domain_that_does_not_exist_fails(
    env: dict[str, str], dns_server: DNSServer
) -> None:
    results = check_dns(load_settings(env), nameserver=dns_server.address)
    assert statuses(results) == {"dns": Status.FAIL}
    assert f"{DOMAIN} does not exist in DNS" in results[0].message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
    ],
)
def test_nameserver_option_forms(value: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(value) == expected


# --- The command ------------------------------------------------------------------------


def _invoke(values: dict[str, str], *args: str) -> Any:
    # Only the test's settings: none of the shell's HEBDO_* may leak in.
    environ: dict[str, str | None] = {k: None for k in os.environ if k.startswith("HEBDO_")}
    environ.update(values)
    return CliRunner().invoke(main, ["doctor", *args], env=environ)


def test_cli_exits_0_when_nothing_failed(
    dkim_env: dict[str, str], dns_server: DNSServer, dkim_keys: tuple[Key, Key]
) -> None:
    publish_all(dns_server, dkim_keys[0].public)
    dns_server.remove(f"_dmarc.{DOMAIN}")  # a warning does not fail the run
    result = _invoke(dkim_env, "--nameserver", f"127.0.0.1:{dns_server.port}")

    assert result.exit_code == 0, result.output
    assert "WARN    dmarc" in result.output
    assert "0 failed, 1 warning" in result.output


@pytest.mark.slow
def test_cli_exits_1_on_a_failure_and_never_prints_the_password(
    env: dict[str, str], auth_smtp_server: SMTPSink
) -> None:
    wrong = "wrong-Password-42"
    result = _invoke(_auth_env(env, auth_smtp_server.port, wrong), "--nameserver", "127.0.0.1:1")

    assert result.exit_code == 1, result.output
    assert "FAIL    smtp" in result.output and "535" in result.output
    assert wrong not in result.output


def test_cli_reports_a_configuration_error_as_a_failure(env: dict[str, str]) -> None:
    result = _invoke({**env, "HEBDO_SMTP_PORT": "twenty-five"})

    # 1 like any failed check, not the group's 2 for an app that cannot load.
    assert result.exit_code == 1, result.output
    assert "FAIL    configuration  HEBDO_SMTP_PORT must be a whole number" in result.output


def test_cli_rejects_a_malformed_nameserver(env: dict[str, str]) -> None:
    result = _invoke(env, "--nameserver", "127.0.0.1:99999")
    assert result.exit_code == 2 and "out of range" in result.output
