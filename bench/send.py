"""Benchmark: plan and send one issue to N synthetic subscribers through the real pipeline.

PostgreSQL + Redis + a Celery worker (prefork, 2 processes by default) + SMTP into
Postfix's `smtp-sink`, and in the same run the machine's ceiling: `smtp-source`
blasting messages of the same size into the same sink over 2 reused sessions.
Prints messages/s, total time, peak worker memory, and the SQL statements one
batch costs (for two batch sizes, to show it does not grow with the batch).

    .venv/bin/python bench/send.py                 # 10,000 and 100,000 subscribers
    .venv/bin/python bench/send.py --subscribers 2000

Talks only to 127.0.0.1. Uses the PostgreSQL database `hebdo_bench` (created if
missing, emptied) and Redis database 14. Needs Debian's `postfix` package for
smtp-sink/smtp-source. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import event, func, insert, select, text  # noqa: E402

from bench.database import app_settings  # noqa: E402
from bench.database import reset_database as reset_pg  # noqa: E402
from bench.tools import ensure_tool  # noqa: E402
from service import create_app  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.digest import delivery, feeds  # noqa: E402
from service.digest.planning import get_issue, plan_issue  # noqa: E402
from service.extensions import db  # noqa: E402
from service.mail.smtp import SMTPTransport  # noqa: E402
from service.models import Delivery, Subscriber  # noqa: E402
from service.ops.runner import commands  # noqa: E402

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hebdo_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
WEEK = "2026-W48"
TIMEOUT = 900  # seconds any one send may take before the benchmark gives up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    sink_command = ensure_tool("smtp-sink", "postfix")
    port = free_port()
    argv = [sink_command, "-m", "64", f"127.0.0.1:{port}", "256"]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(argv)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sink, port
        except OSError:
            time.sleep(0.1)
    sys.exit("smtp-sink did not start")


def ceiling(port: int, size: int, count: int = 20000) -> float:
    """smtp-source: `count` messages of `size` bytes over 2 sessions that stay connected."""
    started = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-d",
            "-s",
            "2",
            "-m",
            str(count),
            "-l",
            str(size),
            "-f",
            "bench@news.example.fr",
            "-t",
            "reader@exemple.fr",
            f"127.0.0.1:{port}",
        ],
        check=True,
        timeout=TIMEOUT,
    )
    return count / (time.perf_counter() - started)


def environment(port: int, data_dir: Path, batch: int) -> dict[str, str]:
    return app_settings(
        data_dir,
        PG_URL,
        HEBDO_BROKER_URL=REDIS_URL,
        HEBDO_SMTP_HOST="127.0.0.1",
        HEBDO_SMTP_PORT=str(port),
        HEBDO_SEND_BATCH=str(batch),
        HEBDO_FEEDS="sample",
    )


def reset_database() -> None:
    reset_pg(PG_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()


def prepare(values: dict[str, str], subscribers: int) -> float:
    """Empty database, N active subscribers, the sample feed, a planned issue. Returns seconds."""
    started = time.perf_counter()
    reset_database()
    app = create_app(values)
    with app.app_context():
        upgrade()
        now = datetime.now(UTC)
        for first in range(0, subscribers, 10000):
            rows = [
                {
                    "email": f"reader{n}@exemple.fr",
                    "status": "active",
                    "locale": "en" if n % 10 == 0 else "fr",
                    "created_at": now,
                    "optin_serial": 1,
                    "confirmed_at": now,
                    "consent_at": now,
                    "consent_text_version": "bench",
                    "confirm_attempts": 0,
                }
                for n in range(first, min(first + 10000, subscribers))
            ]
            db.session.execute(insert(Subscriber), rows)
            db.session.commit()
        feeds.ingest_all(app.config["SETTINGS"], now)
        plan_issue(app.config["SETTINGS"], WEEK, now)
        # A database in steady state has statistics; a freshly bulk-loaded one has none yet.
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return time.perf_counter() - started


def statements_per_batch(values: dict[str, str], batch: int) -> tuple[int, int, float]:
    """(SQL statements, messages, bytes per message) for one batch sent in this process."""
    app = create_app({**values, "HEBDO_SEND_BATCH": str(batch)})
    count = 0
    sizes: list[int] = []
    with app.app_context():
        settings = app.config["SETTINGS"]
        issue = get_issue(WEEK)
        assert issue is not None
        if issue.status == "scheduled":
            delivery.start_send(settings, issue.id, datetime.now(UTC))

        def counter(*_args: object) -> None:
            nonlocal count
            count += 1

        class Measuring(SMTPTransport):
            def send(self, mail):  # type: ignore[no-untyped-def]
                sizes.append(len(mail.data))
                return super().send(mail)

        event.listen(db.engine, "before_cursor_execute", counter)
        with Measuring(settings) as transport:
            report = delivery.send_batch(
                settings, issue.id, transport=transport, clock=lambda: datetime.now(UTC)
            )
        event.remove(db.engine, "before_cursor_execute", counter)
        db.session.remove()
        db.engine.dispose()
    return count, report.sent, sum(sizes) / max(len(sizes), 1)


def peak_memory(pid: int) -> int:
    """Largest peak RSS (kB) among a process and its children."""
    pids = [
        str(pid),
        *subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split(),
    ]
    peak = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


def send(values: dict[str, str]) -> tuple[float, int, int, float, float]:
    """Start a worker, send the planned issue, wait until it is sent.

    Returns (seconds from start to sent, messages sent, peak worker kB, seconds to snapshot,
    messages/s from the first message sent to the last).
    """
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}, **values}
    log = Path(values["HEBDO_DATA_DIR"]) / "worker.log"
    # The worker exactly as `hebdo run` starts it (HEBDO_WORKER_CONCURRENCY processes).
    argv = commands(load_settings(values), "127.0.0.1", 0)["worker"]
    worker = subprocess.Popen(
        argv, env=environ, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        app = create_app(values)
        with app.app_context():
            inspect = app.extensions["celery"].control.inspect(timeout=1)
            deadline = time.monotonic() + 60
            while not inspect.ping():
                if time.monotonic() > deadline or worker.poll() is not None:
                    sys.exit(f"worker did not start:\n{log.read_text()[-2000:]}")
            settings = app.config["SETTINGS"]
            issue = get_issue(WEEK)
            assert issue is not None
            started = time.perf_counter()
            delivery.start_send(settings, issue.id, datetime.now(UTC))
            snapshot = time.perf_counter() - started
            delivery.dispatch(settings, issue.id, datetime.now(UTC), enqueue_batch(app))
            peak = 0
            deadline = time.monotonic() + TIMEOUT
            while True:
                db.session.expire_all()
                issue = get_issue(WEEK)
                assert issue is not None
                peak = max(peak, peak_memory(worker.pid))
                if issue.status == "sent":
                    break
                if time.monotonic() > deadline:
                    sys.exit(f"send did not finish in {TIMEOUT}s")
                time.sleep(0.2)
            elapsed = time.perf_counter() - started
            sent = issue.sent_count
            first, last = db.session.execute(
                select(func.min(Delivery.sent_at), func.max(Delivery.sent_at))
            ).one()
            sustained = sent / max((last - first).total_seconds(), 0.001)
            db.session.remove()
            db.engine.dispose()
        return elapsed, sent, peak, snapshot, sustained
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


def enqueue_batch(app):  # type: ignore[no-untyped-def]
    celery = app.extensions["celery"]

    def enqueue(issue_id: int) -> bool:
        celery.send_task("hebdo.send_batch", args=(issue_id,))
        return True

    return enqueue


def cpu_check() -> float:
    """Seconds for a fixed pure-Python loop: this machine's speed today, to compare runs."""
    started = time.perf_counter()
    total = 0
    for n in range(5_000_000):
        total += n
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    print(f"CPU check: {cpu_check():.2f} s for 5,000,000 Python additions (lower is faster)")
    sink, port = start_sink()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="hebdo-bench-") as folder:
            values = environment(port, Path(folder), args.batch)
            prepare(values, 300)
            small = statements_per_batch(values, 10)
            large = statements_per_batch(values, 100)
            size = int(large[2])
            print(f"digest size on the wire: {size} bytes")
            print(
                f"SQL statements per batch: {small[0]} for {small[1]} messages, "
                f"{large[0]} for {large[1]} messages"
            )
            top = ceiling(port, size)
            print(f"smtp-source ceiling (2 sessions, {size} bytes): {top:,.0f} msg/s")
            for n in args.subscribers:
                prepare(values, n)
                elapsed, sent, peak, snapshot, sustained = send(
                    {**values, "HEBDO_WORKER_CONCURRENCY": str(args.concurrency)}
                )
                rate = sent / elapsed
                rows.append((n, sent, elapsed, rate, rate / top, peak, sustained))
                print(
                    f"{n:,} subscribers: {sent:,} sent in {elapsed:.1f} s = {rate:,.0f} msg/s "
                    f"({rate / top:.2f} of the ceiling), {sustained:,.0f} msg/s from the first "
                    f"message to the last, peak worker RSS {peak / 1024:.0f} MiB, "
                    f"snapshot of recipients {snapshot:.2f} s"
                )
    finally:
        sink.terminate()
        sink.wait(10)
    print()
    print(
        "| Subscribers | Sent | Time, start to `sent` | Messages/s end to end "
        f"| Share of smtp-source ({top:,.0f}/s) | Messages/s, first to last message "
        "| Peak worker RSS |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, sent, elapsed, rate, share, peak, sustained in rows:
        print(
            f"| {n:,} | {sent:,} | {elapsed:.1f} s | {rate:,.0f} | {share:.2f} "
            f"| {sustained:,.0f} | {peak / 1024:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
