"""Benchmark: plan and send one issue to N synthetic subscribers through the real pipeline.

PostgreSQL + Redis + a Celery worker (prefork, 2 processes by default) + SMTP into
Postfix's `smtp-sink`, and in the same run the machine's ceiling: `smtp-source`
blasting messages of the same size into the same sink over 2 reused sessions.
Prints messages/s, total time, peak worker memory, and the SQL statements one
batch costs (for two batch sizes, to show it does not grow with the batch).

    .venv/bin/python bench/send.py                 # 10,000 and 100,000 subscribers
    .venv/bin/python bench/send.py --subscribers 2000
    .venv/bin/python bench/send.py --narrowed 0 0.2 --database sqlite
    .venv/bin/python bench/send.py --subscribers 100000 --journal off auto off auto
    .venv/bin/python bench/send.py --subscribers 1000000

`--narrowed` runs each size once per share of readers who chose some categories
only (spread over three choices of the issue's categories, one written in
another order): each such share is a send with more variants of the issue to
render, the figure issue 17 holds within 5 % of the all-categories one.
`--database sqlite` puts the data in a SQLite file of the run's folder instead.
`--journal` runs each size once per HEBDO_SEND_JOURNAL value: `off auto off auto` prices
the send journal. Each send prints messages/s end to end (plan, snapshot, dispatch, send,
record) and its share of the ceiling, the worker's CPU per message, the peak memory of the
worker's parent and of its largest pool process, the snapshot's time and the database's size.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import event, func, insert, select, text, update  # noqa: E402

from bench.database import app_settings  # noqa: E402
from bench.database import reset_database as reset_pg  # noqa: E402
from bench.tools import ensure_tool  # noqa: E402
from service import create_app  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.digest import delivery, feeds  # noqa: E402
from service.digest.planning import get_issue, plan_issue  # noqa: E402
from service.extensions import db  # noqa: E402
from service.mail.smtp import SMTPTransport  # noqa: E402
from service.models import Delivery, IssueArticle, Subscriber  # noqa: E402
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


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'bench.sqlite3'}"


def environment(port: int, data_dir: Path, batch: int, database_url: str) -> dict[str, str]:
    return app_settings(
        data_dir,
        database_url,
        HEBDO_BROKER_URL=REDIS_URL,
        HEBDO_SMTP_HOST="127.0.0.1",
        HEBDO_SMTP_PORT=str(port),
        HEBDO_FEEDS="sample",
        **({"HEBDO_SEND_BATCH": str(batch)} if batch else {}),
    )


def reset_database(url: str) -> None:
    if url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    else:
        reset_pg(url)
    redis.Redis.from_url(REDIS_URL).flushdb()


def narrow(share: float) -> int:
    """Give `share` of the subscribers a choice of categories: three choices in turn, each
    leaving some of the planned issue's articles (one is another's set in another order, as
    readers write them). Returns how many readers were narrowed."""
    if share <= 0:
        return 0
    present = sorted(set(db.session.execute(select(IssueArticle.category)).scalars()))
    first, second = present[0], present[-1]
    choices = [[first], [second, first], [first, second, first]]
    narrowed = 0
    for turn, choice in enumerate(choices):
        narrowed += db.session.execute(
            update(Subscriber)
            .where(Subscriber.id % 100 < round(share * 100), Subscriber.id % 3 == turn)
            .values(categories=choice)
        ).rowcount
    db.session.commit()
    return narrowed


def prepare(values: dict[str, str], subscribers: int, narrowed: float = 0.0) -> float:
    """Empty database, N active subscribers (`narrowed` of them with a choice of categories),
    the sample feed, a planned issue. Returns the seconds planning the issue took (part of
    the send, end to end)."""
    reset_database(values["HEBDO_DATABASE_URL"])
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
        started = time.perf_counter()
        plan_issue(app.config["SETTINGS"], WEEK, now)
        planning = time.perf_counter() - started
        if narrowed > 0:
            print(f"{narrow(narrowed):,} of {subscribers:,} readers on a narrowed choice")
        # A database in steady state has statistics; a freshly bulk-loaded one has none yet.
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return planning


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
            def send(self, mail, **options):  # type: ignore[no-untyped-def]
                sizes.append(len(mail.data))
                return super().send(mail, **options)

        event.listen(db.engine, "before_cursor_execute", counter)
        with Measuring(settings) as transport:
            report = delivery.send_batch(
                settings, issue.id, transport=transport, clock=lambda: datetime.now(UTC)
            )
        event.remove(db.engine, "before_cursor_execute", counter)
        db.session.remove()
        db.engine.dispose()
    return count, report.sent, sum(sizes) / max(len(sizes), 1)


def worker_pids(pid: int) -> list[str]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [str(pid), *children.stdout.split()]


def cpu_seconds(pid: int, *, pool_only: bool = False) -> float:
    """CPU time (user + system) used so far by a process and its children (or its children
    alone): what a send costs the worker, which other load on the machine disturbs far less
    than a wall-clock rate."""
    ticks = 0
    for p in worker_pids(pid)[1 if pool_only else 0 :]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_memory(pid: int) -> dict[str, int]:
    """Peak RSS (kB) of a process and of each of its children, by pid."""
    peaks = {}
    for p in worker_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[p] = int(line.split()[1])
        except OSError:
            continue
    return peaks


def database_size(url: str) -> int:
    """Bytes the database takes on disk (tables, indexes, TOAST; SQLite: the files)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return sum(
            Path(path + suffix).stat().st_size
            for suffix in ("", "-wal")
            if Path(path + suffix).exists()
        )
    return int(db.session.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


@dataclass
class Run:
    """One send, as the benchmark saw it."""

    subscribers: int
    narrowed: float
    journal: str
    sent: int = 0
    seconds: float = 0.0  # plan + snapshot + dispatch + send + record, to the issue `sent`
    snapshot: float = 0.0
    sustained: float = 0.0  # messages/s from the first message sent to the last
    cpu_ms: float = 0.0  # worker CPU (parent and pool) per message
    pool_cpu_ms: float = 0.0  # the pool processes' part of it
    main_kb: int = 0  # peak RSS of the worker's parent process
    pool_kb: int = 0  # largest peak RSS among its pool processes
    database_bytes: int = 0
    redis_peak_bytes: int = 0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


def send(values: dict[str, str], run: Run) -> None:
    """Start a worker, send the planned issue, wait until it is sent; fill in `run` (its
    `seconds` already hold the planning time)."""
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
            cpu_before = cpu_seconds(worker.pid)
            pool_before = cpu_seconds(worker.pid, pool_only=True)
            started = time.perf_counter()
            delivery.start_send(settings, issue.id, datetime.now(UTC))
            run.snapshot = time.perf_counter() - started
            delivery.dispatch(settings, issue.id, datetime.now(UTC), enqueue_batch(app))
            peaks: dict[str, int] = {}
            deadline = time.monotonic() + TIMEOUT
            while True:
                db.session.expire_all()
                issue = get_issue(WEEK)
                assert issue is not None
                for pid, kb in peak_memory(worker.pid).items():
                    peaks[pid] = max(peaks.get(pid, 0), kb)
                if issue.status == "sent":
                    break
                if time.monotonic() > deadline:
                    sys.exit(f"send did not finish in {TIMEOUT}s")
                time.sleep(0.2)
            run.seconds += time.perf_counter() - started
            run.sent = issue.sent_count
            first, last = db.session.execute(
                select(func.min(Delivery.sent_at), func.max(Delivery.sent_at))
            ).one()
            run.sustained = run.sent / max((last - first).total_seconds(), 0.001)
            run.cpu_ms = (cpu_seconds(worker.pid) - cpu_before) * 1000 / max(run.sent, 1)
            pool = cpu_seconds(worker.pid, pool_only=True) - pool_before
            run.pool_cpu_ms = pool * 1000 / max(run.sent, 1)
            run.main_kb = peaks.pop(str(worker.pid), 0)
            run.pool_kb = max(peaks.values(), default=0)
            run.database_bytes = database_size(values["HEBDO_DATABASE_URL"])
            info = redis.Redis.from_url(REDIS_URL).info("memory")
            run.redis_peak_bytes = int(info["used_memory_peak"])
            db.session.remove()
            db.engine.dispose()
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
    parser.add_argument(
        "--batch", type=int, default=0, help="HEBDO_SEND_BATCH (default: the setting's default)"
    )
    parser.add_argument(
        "--narrowed",
        type=float,
        nargs="+",
        default=[0.0],
        help="share(s) of readers on a narrowed choice of categories, e.g. 0 0.2",
    )
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--journal",
        nargs="+",
        default=["auto"],
        help="HEBDO_SEND_JOURNAL for each send, e.g. `auto off` to price the journal",
    )
    args = parser.parse_args()
    print(f"CPU check: {cpu_check():.2f} s for 5,000,000 Python additions (lower is faster)")
    sink, port = start_sink()
    rows: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="hebdo-bench-") as folder:
            url = sqlite_url(Path(folder)) if args.database == "sqlite" else PG_URL
            values = environment(port, Path(folder), args.batch, url)
            prepare(values, 300)
            small = statements_per_batch(values, 10)
            large = statements_per_batch(values, 100)
            size = int(large[2])
            print(f"digest size on the wire: {size} bytes")
            print(f"batches of {load_settings(values).send_batch} (HEBDO_SEND_BATCH)")
            print(
                f"SQL statements per batch: {small[0]} for {small[1]} messages, "
                f"{large[0]} for {large[1]} messages"
            )
            top = ceiling(port, size)
            print(f"smtp-source ceiling (2 sessions, {size} bytes): {top:,.0f} msg/s")
            for n in args.subscribers:
                for share in args.narrowed:
                    for journal in args.journal:
                        run = Run(n, share, journal)
                        redis.Redis.from_url(REDIS_URL).config_resetstat()
                        run.seconds = prepare(values, n, share)
                        send(
                            {
                                **values,
                                "HEBDO_WORKER_CONCURRENCY": str(args.concurrency),
                                "HEBDO_SEND_JOURNAL": journal,
                            },
                            run,
                        )
                        rows.append(run)
                        print(
                            f"{n:,} subscribers, {share:.0%} narrowed, journal {journal}: "
                            f"{run.sent:,} sent in {run.seconds:.1f} s = {run.rate:,.0f} msg/s "
                            f"({run.rate / top:.2f} of the ceiling), {run.sustained:,.0f} msg/s "
                            f"from the first message to the last, snapshot of recipients "
                            f"{run.snapshot:.2f} s, worker CPU {run.cpu_ms:.3f} ms/message "
                            f"({run.pool_cpu_ms:.3f} in the pool), peak "
                            f"RSS {run.main_kb / 1024:.0f} MiB (worker parent) and "
                            f"{run.pool_kb / 1024:.0f} MiB (largest pool process), database "
                            f"{run.database_bytes / 2**20:,.0f} MiB",
                            flush=True,
                        )
    finally:
        sink.terminate()
        sink.wait(10)
    print()
    print(
        "| Subscribers | Narrowed | Journal | Sent | Time, plan to `sent` | Messages/s end to end "
        f"| Share of smtp-source ({top:,.0f}/s) | Messages/s, first to last message "
        "| Snapshot | Worker CPU per message | Peak RSS, worker parent / pool process "
        "| Database | Redis peak |"
    )
    print("|" + " ---: |" * 2 + " --- |" + " ---: |" * 10)
    for r in rows:
        print(
            f"| {r.subscribers:,} | {r.narrowed:.0%} | {r.journal} | {r.sent:,} "
            f"| {r.seconds:.1f} s | {r.rate:,.0f} | {r.rate / top:.2f} | {r.sustained:,.0f} "
            f"| {r.snapshot:.2f} s | {r.cpu_ms:.3f} ms | {r.main_kb / 1024:.0f} / "
            f"{r.pool_kb / 1024:.0f} MiB | {r.database_bytes / 2**20:,.0f} MiB "
            f"| {r.redis_peak_bytes / 2**20:.1f} MiB |"
        )


if __name__ == "__main__":
    main()
