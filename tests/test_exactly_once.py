"""Exactly once under kill -9: real Celery workers (prefork, 2 processes) sending to a real
SMTP server on loopback, their whole process group SIGKILLed mid-send and restarted.

A killed process can send again only the one message whose 250 it was holding: every
message its server accepted before is in the send journal (service/digest/journal.py),
which the sweep reads before it takes the dead worker's rows back. So the bound is two
duplicates per kill of a 2-process worker, however large the batches.

Runs on the embedded default (SQLite, the file-system broker, the journal in files) and
on PostgreSQL + Redis (the journal in Redis). Two workers under different host names, as
two machines would run them (each with its own data folder, sharing only the database
and Redis), need the latter.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from service.digest.planning import get_issue
from service.extensions import db
from service.models import Delivery, DeliveryStatus
from tests.support.data import add_article, add_subscribers
from tests.support.processes import Process, wait_until
from tests.support.settings import BROKER_URL, DATABASE_URL
from tests.support.smtp import SMTPSink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DISTRIBUTED = DATABASE_URL.startswith("postgresql") and BROKER_URL.startswith("redis")
needs_redis = pytest.mark.skipif(
    not DISTRIBUTED,
    reason="two machines share PostgreSQL and Redis (HEBDO_DATABASE_URL, HEBDO_BROKER_URL)",
)

TOTAL = 4000
KILLS = 3
CONCURRENCY = 2
# About 300 messages/s per SMTP connection: a kill lands mid-send, mid-batch.
SLOW = 0.003


@pytest.fixture
def send_env(smtp_env: dict[str, str]) -> dict[str, str]:
    """Fast clocks: claims expire after 3 s, the sweep runs every second."""
    return {
        **smtp_env,
        "HEBDO_SEND_BATCH": "100",
        "HEBDO_SMTP_TIMEOUT": "0.5",
        "HEBDO_CLAIM_TIMEOUT_SECONDS": "3",
        "HEBDO_SWEEP_SECONDS": "1",
        "HEBDO_RETRY_BASE_SECONDS": "1",
        "HEBDO_SEND_JOURNAL": os.environ.get("XJ", "auto"),
    }


def start_issue(app: Flask, subscribers: int) -> str:
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1), title="À la une")
    add_subscribers(app, subscribers)
    result = app.test_cli_runner().invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    return result.output.split(":", 1)[0]


def killpg(worker: Process) -> None:
    """SIGKILL the worker's whole process group (parent, pool, embedded beat) at once."""
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()


def claimed(app: Flask) -> int:
    with app.app_context():
        count = db.session.execute(
            select(func.count()).where(Delivery.status == DeliveryStatus.SENDING)
        ).scalar_one()
        db.session.remove()
    return int(count)


def finished(app: Flask, week: str) -> tuple[str, dict[str, int]]:
    with app.app_context():
        issue = get_issue(week)
        assert issue is not None
        rows = db.session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        counts = {status: n for status, n in rows}
        status = issue.status
        db.session.remove()
    return status, counts


def recovered(*workers: Process) -> int:
    """Rows the sweeps found in the journal (from the workers' logs)."""
    total = 0
    for worker in workers:
        for line in worker.output().splitlines():
            if "had gone out (send journal)" in line:
                total += int(line.split(" deliveries of a lost worker")[0].rsplit(" ", 1)[1])
    return total


def send_with_kills(
    app: Flask,
    sink: SMTPSink,
    start: Callable[[int], Process],
    groups: int,
) -> tuple[list[int], list[Process]]:
    """Start `groups` workers, send to TOTAL readers, kill a worker's process group at three
    random points (in turn across the groups) and restart it. Returns the rows claimed at
    each kill and every worker started."""
    sink.data_delay = SLOW
    workers = [start(group) for group in range(groups)]
    started = list(workers)
    week = start_issue(app, TOTAL)
    rng = random.Random(20261206)
    at_kill = []
    for n, target in enumerate(sorted(rng.sample(range(600, TOTAL - 600, 100), KILLS))):
        wait_until(lambda t=target: len(sink.messages) >= t, 120, f"{target} messages")
        # Mid-batch: the worker holds claims (not between the restart and its first task).
        wait_until(lambda: claimed(app) > 0, 60, "a batch in flight")
        group = n % groups
        killpg(workers[group])
        at_kill.append(claimed(app))
        workers[group] = start(group)
        started.append(workers[group])
    sink.data_delay = 0
    wait_until(lambda: finished(app, week)[0] == "sent", 180, "the issue to be sent")
    _status, counts = finished(app, week)
    assert counts == {"sent": TOTAL}, counts
    return at_kill, started


def check_once(sink: SMTPSink, label: str, at_kill: list[int], workers: list[Process]) -> None:
    received = sink.per_recipient()
    duplicates = sink.duplicates()
    print(
        f"\n[exactly once] {label}: {TOTAL:,} readers, {KILLS} SIGKILLs of a 2-process group; "
        f"rows claimed at each kill {at_kill}, {recovered(*workers)} found sent in the journal, "
        f"{duplicates} duplicate(s)"
    )
    assert len(received) == TOTAL  # nobody lost
    # At most the message whose 250 each killed process was holding.
    assert duplicates <= KILLS * CONCURRENCY, received.most_common(8)


def test_a_worker_group_killed_three_times_mid_send_duplicates_at_most_one_message_per_process(
    make_app: Callable[[dict[str, str]], Flask],
    send_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    app = make_app(send_env)

    def start(_group: int) -> Process:
        return celery_worker(send_env, beat=True, concurrency=CONCURRENCY, group=True)

    at_kill, workers = send_with_kills(app, smtp_server, start, groups=1)
    check_once(smtp_server, "one machine", at_kill, workers)
    # What the journal held is gone once the database has it.
    if DISTRIBUTED:
        journal = redis.Redis.from_url(BROKER_URL)
        assert journal.keys("hebdo:journal:*") == [] or all(
            journal.hlen(key) == 0 for key in journal.keys("hebdo:journal:*")
        )
    else:
        assert list((Path(send_env["HEBDO_DATA_DIR"]) / "journal").glob("*.log")) == []


@needs_redis
def test_two_machines_killed_in_turn_keep_the_same_bound(
    make_app: Callable[[dict[str, str]], Flask],
    send_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
    tmp_path: Path,
) -> None:
    app = make_app(send_env)

    def start(group: int) -> Process:
        return machine(celery_worker, send_env, tmp_path, group, killable=True)

    at_kill, workers = send_with_kills(app, smtp_server, start, groups=2)
    check_once(smtp_server, "two machines", at_kill, workers)


def machine(
    celery_worker: Callable[..., Process],
    env: dict[str, str],
    tmp_path: Path,
    n: int,
    *,
    killable: bool = False,
) -> Process:
    """Machine n's worker (2 processes): its own host name and data folder, the database
    and Redis shared; the first machine also runs the clock (beat)."""
    data = tmp_path / f"machine{n + 1}"
    data.mkdir(exist_ok=True)
    return celery_worker(
        {**env, "HEBDO_DATA_DIR": str(data)},
        beat=n == 0,
        concurrency=CONCURRENCY,
        group=killable,
        hostname=f"mail@machine{n + 1}",
    )


@needs_redis
def test_two_machines_keep_to_one_global_send_rate(
    make_app: Callable[[dict[str, str]], Flask],
    send_env: dict[str, str],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """HEBDO_SEND_RATE is one schedule in Redis: four processes on two machines together
    never go faster than it."""
    rate, total = 150, 600
    env = {**send_env, "HEBDO_SEND_RATE": str(rate), "HEBDO_SEND_BATCH": "20"}
    app = make_app(env)
    for n in range(2):
        machine(celery_worker, env, tmp_path, n)
    week = start_issue(app, total)
    wait_until(lambda: finished(app, week)[0] == "sent", 120, "the issue to be sent")
    arrivals = sorted(m.at for m in smtp_server.messages)
    assert len(arrivals) == total
    # Every message had its own slot, 1/rate apart: no second holds more than the rate
    # (a slot's message may arrive late, by its SMTP exchange: a few of those at most).
    busiest = max(
        sum(1 for t in arrivals[i:] if t < start + 1.0) for i, start in enumerate(arrivals)
    )
    span = arrivals[-1] - arrivals[0]
    print(
        f"\n[send rate] {total} messages at HEBDO_SEND_RATE={rate} over two machines, "
        f"4 processes: {span:.2f} s first to last, busiest second {busiest} messages"
    )
    assert busiest <= rate * 1.1
    assert span >= (total - 1) / rate * 0.95
    assert {m.rcpt_tos[0] for m in smtp_server.messages} == {
        f"reader{n}@exemple.fr" for n in range(total)
    }
