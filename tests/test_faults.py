"""The delivery pipeline on its worst day: real Celery worker processes, PostgreSQL, Redis and
an aiosmtpd server that injects faults and records every accepted (Message-ID, recipient).

1. workers SIGKILLed mid-send: tests/test_exactly_once.py, on both backends;
2. the broker restarted, and flushed, mid-send;
3. the database restarted mid-send;
4. SMTP faults: 4xx for a fifth of the recipients, 550s, hang-ups after the final dot, a
   stall past the timeout, a 421 "try again in 30 seconds";
5. a poison subscriber whose mail crashes the worker process that builds it;
6. 200 sign-ups while the broker is down;
7. two `hebdo digest send` and a beat tick at the same moment.

Each is bounded in time and counts what it saw; the figures are printed (run with -s) and
gathered in docs/reliability.md. PostgreSQL and Redis are the production pair these
guarantees are stated for: without HEBDO_DATABASE_URL (PostgreSQL) and HEBDO_BROKER_URL
(Redis) the module is skipped; `.ci/run` always sets both. The broker of each test is a
private redis-server (tests.support.processes.RedisServer), so restarting it disturbs nothing else.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from service.digest.planning import get_issue
from service.extensions import db
from service.models import Delivery, DeliveryStatus, Issue, Subscriber
from tests.support.data import add_article, add_subscribers
from tests.support.processes import Process, RedisServer, wait_until
from tests.support.settings import BROKER_URL, DATABASE_URL, ROOT
from tests.support.smtp import SMTPSink

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATABASE_URL.startswith("postgresql") and BROKER_URL.startswith("redis")),
        reason="fault injection runs against PostgreSQL + Redis (HEBDO_DATABASE_URL, "
        "HEBDO_BROKER_URL)",
    ),
    pytest.mark.timeout(300),
]

FINAL = ("sent", "failed", "bounced", "skipped")


# ---------------------------------------------------------------- shared machinery


@dataclass
class Send:
    """One issue being sent, and what the database and the SMTP server say of it."""

    app: Flask
    sink: SMTPSink
    week: str
    total: int
    watcher: Watcher | None = None

    def counts(self) -> dict[str, int]:
        with self.app.app_context():
            rows = db.session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)
            ).all()
            db.session.remove()
        return {status: n for status, n in rows}

    def claimed(self) -> set[int]:
        """The deliveries claimed right now (by live workers, or dead ones not yet swept)."""
        with self.app.app_context():
            ids = db.session.execute(
                select(Delivery.id).where(Delivery.status == DeliveryStatus.SENDING)
            ).scalars()
            found = set(ids)
            db.session.remove()
        return found

    def issue(self) -> Issue:
        with self.app.app_context():
            db.session.expire_all()
            issue = get_issue(self.week)
            assert issue is not None
            db.session.expunge(issue)
            db.session.remove()
            return issue

    def received(self) -> Counter[str]:
        return self.sink.per_recipient()

    def wait_done(self, timeout: float) -> None:
        wait_until(lambda: self.issue().status == "sent", timeout, "the issue to be marked sent")

    def check_closed(self) -> None:
        """Every delivery final (none queued or claimed), the issue sent, and the watcher
        never saw it marked sent while a delivery was still open."""
        counts = self.counts()
        assert set(counts) <= set(FINAL), counts
        assert sum(counts.values()) == self.total
        assert self.issue().status == "sent"
        assert self.watcher is not None and self.watcher.premature == []

    def duplicates(self) -> int:
        return self.sink.duplicates()


class Watcher(threading.Thread):
    """Polls, in one REPEATABLE READ snapshot at a time, whether an issue is marked sent while
    one of its deliveries is still queued or claimed (which must never be seen)."""

    def __init__(self, app: Flask) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.premature: list[tuple[str, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        open_rows = (
            select(Issue.week, func.count(Delivery.id))
            .join(Delivery, Delivery.issue_id == Issue.id)
            .where(
                Issue.status == "sent",
                Delivery.status.in_([DeliveryStatus.QUEUED, DeliveryStatus.SENDING]),
            )
            .group_by(Issue.week)
        )
        with self.app.app_context():
            engine = db.engine
        while not self.stopped.wait(0.05):
            try:
                with engine.connect() as conn:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                    with conn.begin():
                        self.premature += [(week, n) for week, n in conn.execute(open_rows)]
            except Exception:  # the database restart test: keep watching once it is back
                time.sleep(0.2)


@pytest.fixture
def watcher(make_app: Callable[[dict[str, str]], Flask]) -> Iterator[Callable[[Flask], Watcher]]:
    started: list[Watcher] = []

    def start(app: Flask) -> Watcher:
        started.append(Watcher(app))
        started[-1].start()
        return started[-1]

    yield start
    for thread in started:
        thread.stopped.set()
        thread.join(5)


def start_send(app: Flask, sink: SMTPSink, subscribers: int, watch: Watcher) -> Send:
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1), title="À la une")
    add_subscribers(app, subscribers)
    result = app.test_cli_runner().invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    return Send(app, sink, result.output.split(":", 1)[0], subscribers, watch)


@pytest.fixture
def broker(redis_server: RedisServer) -> RedisServer:
    redis_server.start()
    return redis_server


@pytest.fixture
def fault_env(smtp_env: dict[str, str], broker: RedisServer) -> dict[str, str]:
    """Fast clocks for faults: claims expire after 3 s, the sweep runs every second,
    a temporary failure is retried after 1 s, then 2 s."""
    return {
        **smtp_env,
        "HEBDO_BROKER_URL": broker.url,
        "HEBDO_SEND_BATCH": "50",
        "HEBDO_SMTP_TIMEOUT": "0.5",
        "HEBDO_CLAIM_TIMEOUT_SECONDS": "3",
        "HEBDO_SWEEP_SECONDS": "1",
        "HEBDO_RETRY_BASE_SECONDS": "1",
    }


# About 300 messages/s per SMTP connection: a fault lands mid-send.
SLOW = 0.003


@dataclass
class Pipeline:
    """An app, the fault-injecting SMTP server, real workers (beat embedded, 2 processes)
    and a watcher: what each send scenario starts the same way."""

    make_app: Callable[[dict[str, str]], Flask]
    env: dict[str, str]
    sink: SMTPSink
    start_worker: Callable[..., Process]
    watch: Callable[[Flask], Watcher]

    def worker(self, extra: dict[str, str] | None = None) -> Process:
        return self.start_worker({**self.env, **(extra or {})}, concurrency=2, beat=True)

    def send(
        self,
        subscribers: int,
        *,
        slow: bool = False,
        settings: dict[str, str] | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> tuple[Send, Process]:
        self.env = {**self.env, **(settings or {})}
        app = self.make_app(self.env)
        self.sink.data_delay = SLOW if slow else 0
        worker = self.worker(worker_env)
        return start_send(app, self.sink, subscribers, self.watch(app)), worker


@pytest.fixture
def pipeline(
    make_app: Callable[[dict[str, str]], Flask],
    fault_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
    watcher: Callable[[Flask], Watcher],
) -> Pipeline:
    return Pipeline(make_app, fault_env, smtp_server, celery_worker, watcher)


# ---------------------------------------------------------------- 2. broker lost


@pytest.mark.parametrize("how", ["restarted", "flushed"])
def test_the_broker_restarted_or_flushed_mid_send_and_the_send_completes(
    how: str, pipeline: Pipeline, broker: RedisServer, smtp_server: SMTPSink
) -> None:
    total = 2000
    send, _worker = pipeline.send(total, slow=True)
    wait_until(lambda: len(smtp_server.messages) >= 400, 120, "400 messages")
    at = len(smtp_server.messages)
    claimed = len(send.claimed())
    # Every queued batch task goes: with the restart (no persistence) or the flush.
    broker.restart() if how == "restarted" else broker.flush()
    smtp_server.data_delay = 0
    send.wait_done(120)
    received = send.received()
    print(
        f"\n[faults] broker {how} after {at} of {total} messages: "
        f"{send.duplicates()} duplicate(s) ({claimed} rows claimed at that moment)"
    )
    assert len(received) == total
    # The workers kept their claims through the outage: nothing is sent twice.
    assert send.duplicates() == 0
    send.check_closed()


# ---------------------------------------------------------------- 3. database restarted


def test_the_database_restarted_mid_send_workers_reconnect_and_no_claim_is_left(
    pipeline: Pipeline, smtp_server: SMTPSink
) -> None:
    total, batch, concurrency = 2000, 50, 2
    send, _worker = pipeline.send(total, slow=True)
    wait_until(lambda: len(smtp_server.messages) >= 400, 120, "400 messages")
    claimed = len(send.claimed())
    restart_postgresql()
    smtp_server.data_delay = 0
    send.wait_done(120)
    print(
        f"\n[faults] PostgreSQL restarted mid-send: {send.duplicates()} duplicate(s) "
        f"({claimed} rows claimed at the restart)"
    )
    assert len(send.received()) == total
    # A batch whose outcomes could not be written is retaken by the sweep: its messages
    # may go out twice, at most what was claimed when the database went away.
    assert send.duplicates() <= batch * concurrency
    send.check_closed()  # no row left claimed


def restart_postgresql() -> None:
    """A real restart of the local cluster (fast shutdown: every connection is cut)."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", "-m", "fast", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=60,
    )


# ---------------------------------------------------------------- 4. SMTP faults


def test_smtp_faults_transient_ones_delivered_permanent_ones_bounced_delays_honoured(
    pipeline: Pipeline, smtp_server: SMTPSink
) -> None:
    total = 1000
    emails = [f"reader{n}@exemple.fr" for n in range(total)]
    rng = random.Random(8058)
    shuffled = rng.sample(emails[:900], 900)
    greylisted = shuffled[:200]  # 20 %: 451 or 452 on their first two tries
    rejected = shuffled[200:210]  # 1 %: 550, no such mailbox
    dropped = shuffled[210:215]  # 0.5 %: the connection drops right after their final dot
    stalled = shuffled[215]  # the server stalls past the client's timeout at its RCPT
    throttled = emails[950]  # 421, try again in 30 seconds (a late batch: the others are done)
    for n, address in enumerate(greylisted):
        code = "451 4.7.1 Greylisted, try again" if n % 2 else "452 4.2.2 Mailbox full for now"
        smtp_server.rcpt_sequences[address] = [code, code]
    for address in rejected:
        smtp_server.rcpt_replies[address] = "550 5.1.1 No such user here"
    for address in dropped:
        smtp_server.drop_after_data[address] = 1
    smtp_server.stall_rcpt[stalled] = 1
    smtp_server.stall_seconds = 2.0  # four times HEBDO_SMTP_TIMEOUT
    smtp_server.rcpt_sequences[throttled] = ["421 4.7.0 Too many messages, try again in 30 seconds"]

    send, worker = pipeline.send(total, settings={"HEBDO_SEND_BATCH": "100"})
    app = send.app
    send.wait_done(150)
    received = send.received()
    counts = send.counts()
    print(f"\n[faults] SMTP faults on {total} recipients: {counts}")
    # Every temporary failure was delivered in the end, once (or twice for a drop after
    # the dot, which the server did receive).
    accepted_everyone = set(emails) - set(rejected)
    assert set(received) == accepted_everyone
    assert all(received[a] == 1 for a in accepted_everyone - set(dropped))
    assert all(smtp_server.rcpt_attempts[a] == 3 for a in greylisted)
    # 5xx: bounced (and the subscriber suppressed), never retried.
    assert counts == {"sent": total - len(rejected), "bounced": len(rejected)}
    assert all(smtp_server.rcpt_attempts[a] == 1 for a in rejected)
    with app.app_context():
        statuses = dict(
            db.session.execute(
                select(Subscriber.email, Subscriber.status).where(Subscriber.email.in_(rejected))
            ).all()
        )
        flagged: dict[str, bool] = dict(
            db.session.execute(  # type: ignore[arg-type]
                select(Subscriber.email, Delivery.uncertain)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Subscriber.email.in_(dropped))
            ).all()
        )
    assert set(statuses.values()) == {"bounced"}
    # Dropped after the dot: retried at most once, and flagged as possibly received twice.
    assert all(received[a] <= 2 for a in dropped) and all(flagged.values())
    # The 421 asked for 30 s: its recipient was not tried again sooner.
    refused_at = next(t for a, r, t in smtp_server.refusals if a == throttled and r[:3] == "421")
    accepted_at = next(m.at for m in smtp_server.messages if m.rcpt_tos == [throttled])
    assert accepted_at - refused_at >= 30
    assert "TimeLimitExceeded" not in worker.output()
    send.check_closed()


# ---------------------------------------------------------------- 5. poison subscriber

POISON = "reader137@exemple.fr"


@pytest.fixture
def crash_on_poison(tmp_path: Path) -> dict[str, str]:
    """Settings that make a worker process die (os._exit, as a segfault would) while it
    builds the poison subscriber's mail: a sitecustomize on the worker's PYTHONPATH wraps
    the mail builder in that process only."""
    folder = tmp_path / "poison"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os

            from service.digest import delivery

            _build = delivery.mail_for


            def mail_for(settings, template, recipient, *args, **kwargs):
                if recipient.email == {POISON!r}:
                    os._exit(70)
                return _build(settings, template, recipient, *args, **kwargs)


            delivery.mail_for = mail_for
            """
        )
    )
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


def test_a_poison_subscriber_is_quarantined_and_everyone_else_delivered(
    pipeline: Pipeline, crash_on_poison: dict[str, str]
) -> None:
    total = 300
    send, worker = pipeline.send(
        total, settings={"HEBDO_SEND_BATCH": "20"}, worker_env=crash_on_poison
    )
    app = send.app
    send.wait_done(120)
    received = send.received()
    with app.app_context():
        poison = db.session.execute(
            select(Delivery)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == POISON)
        ).scalar_one()
    print(
        f"\n[faults] poison subscriber: quarantined after {poison.lost_claims} lost claims "
        f"({poison.last_error}); {len(received)} others delivered, "
        f"{send.duplicates()} duplicate(s)"
    )
    assert poison.status == "failed" and poison.lost_claims <= 3
    assert "quarantined" in (poison.last_error or "")
    assert set(received) == {f"reader{n}@exemple.fr" for n in range(total)} - {POISON}
    assert "exited prematurely" in worker.output()  # it really did kill the process
    # The first crash took its batch down: the messages it had sent before reaching the
    # poison (outcomes not yet written) go again. Alone afterwards, it takes no one down.
    assert send.duplicates() < 20
    send.check_closed()


# ---------------------------------------------------------------- 6. broker down at sign-up


def test_two_hundred_sign_ups_while_the_broker_is_down_each_get_one_confirmation(
    make_app: Callable[[dict[str, str]], Flask],
    fault_env: dict[str, str],
    broker: RedisServer,
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
    watcher: Callable[[Flask], Watcher],
) -> None:
    values = {**fault_env, "HEBDO_SUBSCRIBE_RATE_LIMIT": "1000/minute"}
    app = make_app(values)
    broker.stop()
    client = app.test_client()
    addresses = [f"panne{n}@exemple.fr" for n in range(200)]
    started = time.monotonic()
    for n, address in enumerate(addresses):
        answer = client.post(
            "/api/v1/subscriptions",
            json={"email": address},
            environ_base={"REMOTE_ADDR": f"198.51.{n % 50}.{n // 50 + 1}"},
        )
        assert answer.status_code == 202, answer.get_data(as_text=True)
    took = time.monotonic() - started
    assert smtp_server.messages == []
    broker.start()
    celery_worker(values, concurrency=2, beat=True)
    smtp_server.wait_for(200, timeout=120)
    time.sleep(3)  # three more sweeps: none sends a mail twice
    received = smtp_server.per_recipient()
    print(f"\n[faults] 200 sign-ups with the broker down took {took:.1f} s; {len(received)} mailed")
    assert set(received) == set(addresses) and set(received.values()) == {1}


# ---------------------------------------------------------------- 7. concurrent starts


# `hebdo digest send --now` in its own process, its app built beforehand (a CLI spends
# ~0.5 s starting), run when a start file appears: the three contenders start together.
LAUNCHER = textwrap.dedent(
    """
    import pathlib, sys, time
    from service import create_app
    runner = create_app().test_cli_runner()
    print("ready", flush=True)
    go = pathlib.Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.001)
    result = runner.invoke(args=["digest", "send", "--now", "--yes"])
    print(result.output, end="")
    sys.exit(result.exit_code)
    """
)


def test_two_digest_sends_and_a_beat_tick_at_once_make_one_issue_sent_once(
    tmp_path: Path,
    make_app: Callable[[dict[str, str]], Flask],
    fault_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
    watcher: Callable[[Flask], Watcher],
) -> None:
    total = 500
    # The weekly send is due now (a minute ago, UTC): a beat tick starts it.
    due = datetime.now(UTC) - timedelta(minutes=1)
    values = {
        **fault_env,
        "HEBDO_TIMEZONE": "UTC",
        "HEBDO_SEND_SCHEDULE": due.strftime("%a %H:%M").lower(),
    }
    app = make_app(values)
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1), title="À la une")
    add_subscribers(app, total)
    watch = watcher(app)
    celery_worker(values, concurrency=2)  # no beat: the tick is sent below, at the same moment
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")} | values
    go = tmp_path / "go"
    clis = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(go)],
            env=environ,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for cli in clis:  # both imported and waiting at the start line
        assert cli.stdout is not None and cli.stdout.readline() == "ready\n"
    go.touch()
    app.extensions["celery"].send_task("hebdo.digest_tick")
    outputs = [cli.communicate(timeout=120)[0] for cli in clis]
    assert [cli.returncode for cli in clis] == [0, 0], outputs
    with app.app_context():
        issues = db.session.execute(select(Issue.week, Issue.status)).all()
    assert len(issues) == 1, (issues, outputs)
    send = Send(app, smtp_server, issues[0][0], total, watch)
    send.wait_done(120)
    received = send.received()
    said = [o.strip().splitlines()[-1] for o in outputs]
    print(f"\n[faults] two CLI sends and a tick at once: {said}")
    # Each contender says what happened: one started it (a CLI or the tick), the others saw it.
    assert sum(f"sending to {total} subscribers" in line for line in said) <= 1
    assert all("sending to" in line or "nothing sent twice" in line for line in said), said
    assert len(received) == total and set(received.values()) == {1}
    send.check_closed()
