"""hebdo's digest through a real Postfix that bounces it back.

A private Postfix instance (its own configuration, queue and data folders; the machine's
own instance is never read or touched) listens on a free loopback port and gives each
reader's domain a fate: `gone.example` an unknown user (5.1.1, a permanent failure),
`full.example` a full mailbox until the queue lifetime runs out (returned as failed with
4.2.2: a soft bounce for hebdo), `ok.example` a delivery. The delivery status notifications
Postfix writes to hebdo's VERP addresses come back to hebdo the ways docs/inbound.md gives
operators: LMTP or SMTP to `hebdo inbound serve`, or a pipe transport running
`hebdo inbound ingest`.

Needs the `postfix` package (Debian: `apt-get install -y postfix`) and root: Postfix's
master runs as root and its daemons as the `postfix` user. Skipped without them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from service.extensions import db
from service.models import DeliveryStatus, InboundMessage, Status
from service.subscribers.suppressions import is_suppressed
from tests.support import missing
from tests.support.data import add_article, add_readers
from tests.support.inbound import BOUNCES
from tests.support.mail import subscriber
from tests.support.processes import Process
from tests.support.sending import NOW, Sender
from tests.support.smtp import free_port

# Postfix's side of the loop; hebdo's recording of what comes back runs on both backends
# in tests/test_inbound_corpus.py.
pytestmark = pytest.mark.backend_neutral

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
GONE, FULL, OK = "reader@gone.example", "reader@full.example", "reader@ok.example"
# What each reader's mail server does with the digest (transport(5) entries).
FATES = {
    "gone.example": "error:5.1.1 user unknown",
    "full.example": "retry:4.2.2 mailbox full",
    "ok.example": "discard:",
}
# The system user the pipe runs hebdo as: Postfix refuses root and its own mail owner.
PIPE_USER = "nobody"

# The services of a Postfix that only relays: no pickup (nothing is posted with sendmail),
# no local delivery, no chroot.
MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
smtp      unix  - - n - - smtp
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
# docs/inbound.md's pipe transport, run as PIPE_USER by a wrapper holding the settings.
PIPE = """\
hebdo     unix  - n n - 4 pipe
  flags=Rq user={user}
  argv={wrapper} inbound ingest --sender ${{sender}} --recipient ${{original_recipient}}
"""


class Postfix:
    """A private Postfix instance in `root`, driven with `postfix -c` and `postconf -c`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "conf"
        self.port = free_port()
        self.started = False

    def start(
        self, routes: dict[str, str], services: str = "", extra: dict[str, str] | None = None
    ) -> None:
        """Write the configuration (transport_maps `routes`, more master.cf `services`,
        more main.cf settings) and start the instance."""
        queue, data = self.root / "queue", self.root / "data"
        for folder in (self.config, queue, data):
            folder.mkdir()
        # The master takes its lock in the data folder as the mail owner.
        shutil.chown(data, "postfix")
        (self.config / "transport").write_text("".join(f"{k} {v}\n" for k, v in routes.items()))
        (self.config / "master.cf").write_text(MASTER.format(port=self.port) + services)
        (self.config / "main.cf").write_text("")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(queue),
            "data_directory": str(data),
            "maillog_file": str(self.root / "maillog"),
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": "mx.test.example",
            "mynetworks": "127.0.0.0/8",
            # Nothing is delivered locally: every domain goes where transport_maps says, and
            # a domain it does not name fails at once rather than being looked up in DNS.
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "transport_maps": f"texthash:{self.config / 'transport'}",
            "default_transport": "error:5.4.4 no route in this test",
            # `bounces+<token>@…` finds the `bounces@…` entry, as in docs/inbound.md.
            "recipient_delimiter": "+",
            # Else smtpd refuses at RCPT an address routed to the error transport, and
            # hebdo would get a 550 while sending instead of a bounce mail.
            "smtpd_reject_unlisted_recipient": "no",
            "smtpd_peername_lookup": "no",
            "smtputf8_enable": "no",
            "notify_classes": "",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            # A temporary failure is returned as failed after a few retries. Not 0 (one
            # try): the bounces' own lifetime is capped to it, and they must be retried
            # when hebdo asks (451, exit 75).
            "maximal_queue_lifetime": "5s",
            "bounce_queue_lifetime": "5s",
            "delay_warning_time": "0h",
            **(extra or {}),
        }
        self.postconf("-e", *(f"{k}={v}" for k, v in main.items()))
        self.started = True
        began = time.monotonic()
        run = self.postfix("start")
        assert run.returncode == 0, f"postfix start: {run.stdout}{run.stderr}\n{self.log()}"
        print(f"postfix: started in {time.monotonic() - began:.2f} s on port {self.port}")

    def postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def postconf(self, *args: str) -> None:
        run = subprocess.run(
            [str(POSTCONF), "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr

    def stop(self) -> None:
        """`postfix stop` (which waits for the master up to 5 s, then kills it), else
        `postfix abort`."""
        if not self.started:
            return
        began = time.monotonic()
        try:
            stopped = self.postfix("stop", timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            stopped = False
        if not stopped:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.postfix("abort", timeout=30)
        print(f"postfix: stopped in {time.monotonic() - began:.2f} s")

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[Postfix]:
    """A private Postfix instance, not started yet (`.start(routes)`), stopped after the
    test. Its folder is outside pytest's temporary folders, which only their owner may enter:
    Postfix's daemons (and the pipe's user) reach it as other users."""
    if not POSTFIX.exists():
        missing(f"{POSTFIX} is missing (Debian package `postfix`)")
    if os.geteuid() != 0:
        missing("a Postfix instance needs root (its master runs as root)")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        missing("the `postfix` user is missing (the `postfix` package creates it)")
    root = Path(tempfile.mkdtemp(prefix="hebdo-postfix-"))
    root.chmod(0o711)
    instance = Postfix(root)
    try:
        yield instance
    finally:
        instance.stop()
        kept = tmp_path / "postfix"
        kept.mkdir()
        for name in ("maillog", "conf/main.cf", "conf/master.cf", "conf/transport"):
            if (root / name).exists():
                shutil.copy(root / name, kept / Path(name).name)
        shutil.rmtree(root, ignore_errors=True)


def inbound_rows(app: Flask) -> list[InboundMessage]:
    with app.app_context():
        rows = list(
            db.session.execute(select(InboundMessage).order_by(InboundMessage.id)).scalars()
        )
        for row in rows:
            db.session.expunge(row)
        return rows


# --- The pipe's user ------------------------------------------------------------------


def hebdo_command(user: pwd.struct_passwd, cwd: Path) -> tuple[list[str] | None, str]:
    """How `user` runs hebdo: this interpreter, or, when `user` cannot read it (a Python
    under root's home, as pyenv's), the system's Python of the same version with this
    environment's packages added (`-S`: none of the system's own). (None, why) if neither.

    That Python may be older than this one: redis-py needs the `async_timeout` backport
    before 3.11.3, which pip did not install for this one; asyncio's `timeout` stands in
    for it, from a folder of `cwd`."""
    shims = cwd / "shims"
    shims.mkdir(exist_ok=True)
    (shims / "async_timeout.py").write_text("from asyncio import timeout  # noqa: F401\n")
    shims.chmod(0o755)
    setup = (
        f"import sys; sys.path.insert(0, {str(shims)!r}); import runpy, site; "
        f"site.addsitedir({sysconfig.get_paths()['purelib']!r}); "
        "runpy.run_module('service.cli', run_name='__main__', alter_sys=True)"
    )
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    candidates = [[sys.executable, "-m", "service.cli"]]
    if system.exists():
        candidates.append([str(system), "-S", "-c", setup])
    why = ""
    for command in candidates:
        try:
            probe = subprocess.run(
                [*command, "--help"],
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                cwd=cwd,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                capture_output=True,
                text=True,
                timeout=60,
            )
        except OSError as exc:
            why += f"{command[0]}: {exc}; "
            continue
        if probe.returncode == 0:
            return command, ""
        lines = probe.stderr.strip().splitlines()
        why += f"{command[0]}: {lines[-1] if lines else f'exit {probe.returncode}'}; "
    return None, why


def hand_over(values: dict[str, str], root: Path, user: pwd.struct_passwd) -> dict[str, str]:
    """The settings with hebdo's data folder (and its SQLite database) moved into `root`
    and owned by `user`: the pipe writes them as that user. SQLite run as root gives the
    journal files it creates the database file's owner."""
    data = root / "hebdo-data"
    data.mkdir()
    url = values["HEBDO_DATABASE_URL"]
    if url.startswith("sqlite:///"):
        database = data / "hebdo.sqlite3"
        shutil.copyfile(url.removeprefix("sqlite:///"), database)
        os.chown(database, user.pw_uid, user.pw_gid)
        url = f"sqlite:///{database}"
    os.chown(data, user.pw_uid, user.pw_gid)
    return {**values, "HEBDO_DATA_DIR": str(data), "HEBDO_DATABASE_URL": url}


def wrapper(
    root: Path, values: dict[str, str], user: pwd.struct_passwd, command: list[str]
) -> Path:
    """The `hebdo` command the pipe runs: the settings exported, then this interpreter.
    Readable by the pipe's user only (it holds the secret key)."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(values.items()))
    path = root / "hebdo"
    path.write_text(
        "#!/bin/sh\n"
        f"{exports}export LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1\n"
        f'exec {shlex.join(command)} "$@"\n'
    )
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)
    return path


# --- The test -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("way_in", ["lmtp", "smtp", "pipe"])
def test_postfix_bounces_the_digest_back_to_hebdo(
    way_in: str,
    postfix: Postfix,
    env: dict[str, str],
    make_app: Callable[[dict[str, str]], Flask],
    spawn: Callable[..., Process],
) -> None:
    values = {
        **env,
        "HEBDO_SMTP_HOST": "127.0.0.1",
        "HEBDO_SMTP_PORT": str(postfix.port),
        "HEBDO_SMTP_TIMEOUT": "5",
        "HEBDO_BOUNCE_ADDRESS": BOUNCES,
    }
    services, main = "", {}
    if way_in == "pipe":
        user = pwd.getpwnam(PIPE_USER)
        command, why = hebdo_command(user, postfix.root)
        if command is None:
            missing(
                f"Postfix's pipe runs hebdo as a non-root user, and {PIPE_USER} can run "
                f"no Python with hebdo ({why}): put the virtualenv, its Python and the "
                "checkout where other users can read them"
            )
        values = hand_over(values, postfix.root, user)
        services = PIPE.format(user=PIPE_USER, wrapper=wrapper(postfix.root, values, user, command))
        # pipe(8): one recipient per command, so ${original_recipient} is one argument.
        main = {"hebdo_destination_recipient_limit": "1"}
        way = "hebdo:"
    else:
        port = free_port()
        argv = [sys.executable, "-m", "service.cli", "inbound", "serve", "--port", str(port)]
        spawn([*argv, *(["--lmtp"] if way_in == "lmtp" else [])], values, ready="listening on")
        way = f"lmtp:inet:127.0.0.1:{port}" if way_in == "lmtp" else f"smtp:[127.0.0.1]:{port}"
    # The bounce and unsubscribe addresses go to hebdo, as in docs/inbound.md.
    postfix.start({**FATES, BOUNCES: way, "unsubscribe@news.example.fr": way}, services, main)

    app = make_app(values)
    ids = add_readers(app, [GONE, FULL, OK])
    add_article(app, 1, NOW - timedelta(days=1))
    sender = Sender(app)
    began = time.monotonic()
    assert sender.start() == 3
    sender.run()
    sent = time.monotonic()
    deliveries = sender.deliveries()
    assert {e: d.status for e, d in deliveries.items()} == dict.fromkeys(
        (GONE, FULL, OK), DeliveryStatus.SENT
    )

    # Both bounces recorded, and the ok reader's mail delivered (so that no row about them
    # means nothing came back, not that nothing happened yet).
    deadline = sent + 60
    arrived: dict[int, float] = {}
    while True:
        now = time.monotonic()
        for row in inbound_rows(app):
            if row.subscriber_id is not None:
                arrived.setdefault(row.subscriber_id, now)
        log = postfix.log()
        delivered = f"to=<{OK}>" in log and "status=sent (ok.example)" in log
        if {ids[GONE], ids[FULL]} <= arrived.keys() and delivered:
            break
        assert now < deadline, f"bounces not recorded after 60 s ({arrived} of {ids}):\n{log}"
        time.sleep(0.1)
    print(
        f"{way_in}: digest sent through Postfix in {sent - began:.2f} s; recorded after the "
        f"send: 5.1.1 in {arrived[ids[GONE]] - sent:.2f} s, "
        f"4.2.2 in {arrived[ids[FULL]] - sent:.2f} s"
    )

    # One record per bounce, each tied to its delivery by the VERP token alone.
    received = inbound_rows(app)
    assert {row.subscriber_id: (row.verdict, row.rule) for row in received} == {
        ids[GONE]: ("bounced", "dsn 5.1.1"),
        ids[FULL]: ("soft_bounce", "dsn 4.2.2"),
    }, postfix.log()
    source = {"lmtp": "lmtp", "smtp": "smtp", "pipe": "cli"}[way_in]
    issue = sender.issue()
    diagnostics = {}
    for row in received:
        evidence = row.evidence or {}
        assert (row.source, row.kind, row.issue_id) == (source, "bounce", issue.id)
        assert evidence["matched"] == "VERP token" and evidence["failure"]["action"] == "failed"
        assert row.raw is not None and b"Reporting-MTA: dns; mx.test.example" in row.raw
        diagnostics[row.subscriber_id] = evidence["failure"]["diagnostic"]
    assert diagnostics == {ids[GONE]: "user unknown", ids[FULL]: "mailbox full"}

    with app.app_context():
        settings = app.config["SETTINGS"]
        suppressed = {e: is_suppressed(settings, e) for e in (GONE, FULL, OK)}
    assert suppressed == {GONE: True, FULL: False, OK: False}
    assert subscriber(app, GONE).status == Status.BOUNCED
    assert subscriber(app, FULL).status == Status.ACTIVE
    assert subscriber(app, OK).status == Status.ACTIVE
    deliveries = sender.deliveries()
    assert deliveries[FULL].soft_bounced_at is not None
    assert deliveries[GONE].soft_bounced_at is None and deliveries[OK].soft_bounced_at is None
    issue = sender.issue()
    assert (issue.hard_bounce_count, issue.soft_bounce_count) == (1, 1)
