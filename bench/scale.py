"""Benchmark: what one issue to a million subscribers costs the database, a worker and Redis.

Fills the PostgreSQL database `hebdo_scale` (created if missing, emptied first, dropped at
the end unless `--keep`) with N synthetic active subscribers (default 1,000,000;
`--subscribers`) in one INSERT … SELECT, plans the sample issue, then measures:

1. `delivery.start_send`: the snapshot of every recipient as a queued delivery (time,
   peak RSS of this process, table and index sizes);
2. the real claim-and-record path, `delivery.send_batch`, with a transport that accepts
   every message at once (each message is still built: that is the CPU cost), for
   `--sample-batches` batches at the start of the queue, after one UPDATE marks most rows
   sent (the claim must not slow down as the queue drains), and near its end, each before
   and after a VACUUM (what autovacuum does during a real send): claim time
   and record (flush) time per batch, build time per message, SQL statements per batch,
   messages/s in this one process;
3. Redis: the memory taken by 10,000 queued `hebdo.send_batch` tasks (`--tasks`), sent
   with the app's Celery app to redis://127.0.0.1:6379/13; the keys it created are
   deleted afterwards.

Talks only to 127.0.0.1; stops by itself (≈ 2–4 minutes on 2 cores for 1,000,000).

    .venv/bin/python bench/scale.py [--subscribers 1000000] [--sample-batches 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import event, text  # noqa: E402

from bench.database import (  # noqa: E402
    ALL_ACTIVE,
    app_settings,
    drop_database,
    reset_database,
    subscriber_fill,
)
from service import create_app  # noqa: E402
from service.digest import delivery, feeds  # noqa: E402
from service.digest.planning import get_issue, plan_issue  # noqa: E402
from service.extensions import MAIL_QUEUE, db  # noqa: E402
from service.mail.message import Outgoing  # noqa: E402

PG_URL = os.environ.get(
    "BENCH_SCALE_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hebdo_scale"
)
REDIS_URL = "redis://127.0.0.1:6379/13"
WEEK = "2026-W48"


class Instant:
    """A Transport that accepts every message at once (the message is built all the same)."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def send(self, mail: Outgoing, **options: Any) -> str:
        self.count += 1
        self.bytes += len(mail.data)
        if options.get("meanwhile"):
            options["meanwhile"]()
        return "250 2.0.0 accepted"


class Timers:
    """Wraps module functions of `delivery` to add up the time spent in them."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def wrap(self, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(delivery, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.samples.setdefault(label, []).append(time.perf_counter() - started)

        setattr(delivery, name, timed)

    def take(self) -> dict[str, list[float]]:
        samples, self.samples = self.samples, {}
        return samples


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def sizes() -> None:
    row = db.session.execute(
        text(
            "SELECT pg_relation_size('deliveries'), pg_indexes_size('deliveries'),"
            " pg_total_relation_size('deliveries'), pg_total_relation_size('subscribers')"
        )
    ).one()
    heap, indexes, total, subscribers = row
    print(
        f"  deliveries: table {mib(heap)}, indexes {mib(indexes)}, total {mib(total)} "
        f"(subscribers: total {mib(subscribers)})"
    )
    for name, size in db.session.execute(
        text(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index"
            " WHERE indrelid = 'deliveries'::regclass ORDER BY 2 DESC"
        )
    ):
        print(f"    index {name}: {mib(size)}")


@contextmanager
def counting_statements() -> Iterator[list[int]]:
    counter = [0]

    def count(*_args: object) -> None:
        counter[0] += 1

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield counter
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"median {statistics.median(values) * 1000:.2f} ms, "
        f"max {max(values) * 1000:.2f} ms (first {values[0] * 1000:.2f})"
    )


def sample(settings: Any, issue_id: int, batches: int, timers: Timers, label: str) -> float:
    """Send `batches` batches through delivery.send_batch; print the figures; messages/s."""
    transport = Instant()
    timers.take()
    per_batch: list[float] = []
    statements: list[int] = []
    for _ in range(batches):
        with counting_statements() as counter:
            started = time.perf_counter()
            report = delivery.send_batch(
                settings, issue_id, transport=transport, clock=lambda: datetime.now(UTC)
            )
            per_batch.append(time.perf_counter() - started)
        statements.append(counter[0])
        if not report.claimed:
            break
    samples = timers.take()
    sent = transport.count
    total = sum(per_batch)
    builds = samples.get("build", [])
    rate = sent / total if total else 0.0
    print(f"{label}: {len(per_batch)} batches, {sent:,} messages")
    print(f"  claim per batch (claim_rows): {ms(samples.get('claim', []))}")
    print(f"  record per batch (_flush):    {ms(samples.get('flush', []))}")
    print(
        f"  build per message (mail_for): median {statistics.median(builds) * 1e6:.0f} µs, "
        f"mean {statistics.fmean(builds) * 1e6:.0f} µs"
        if builds
        else "  build per message: -"
    )
    print(f"  whole send_batch per batch:   {ms(per_batch)}")
    print(
        f"  SQL statements per batch: {min(statements)}–{max(statements)}; "
        f"{rate:,.0f} messages/s in this one process "
        f"({transport.bytes / max(sent, 1):,.0f} bytes per message)"
    )
    return rate


def redis_cost(app: Any, issue_id: int, tasks: int) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    before_keys = set(client.keys("*"))
    celery = app.extensions["celery"]
    # One task first: the connection and kombu's binding keys are not per-task costs.
    celery.send_task("hebdo.send_batch", args=(issue_id,))
    client.delete(MAIL_QUEUE)
    before = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    for _ in range(tasks):
        celery.send_task("hebdo.send_batch", args=(issue_id,))
    elapsed = time.perf_counter() - started
    after = int(client.info("memory")["used_memory"])
    length = client.llen(MAIL_QUEUE)
    one = client.lindex(MAIL_QUEUE, 0) or b""
    print(
        f"Redis: {tasks:,} hebdo.send_batch tasks enqueued in {elapsed:.2f} s "
        f"({tasks / elapsed:,.0f}/s from one process); queue '{MAIL_QUEUE}' length {length:,}; "
        f"used_memory +{(after - before) / 2**20:.1f} MiB = {(after - before) / tasks:,.0f} "
        f"bytes per task (one message body: {len(one):,} bytes)"
    )
    created = set(client.keys("*")) - before_keys
    if created:
        client.delete(*created)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--sample-batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100, help="HEBDO_SEND_BATCH")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks queued in Redis")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    reset_database(PG_URL)
    data_dir = Path(tempfile.mkdtemp(prefix="hebdo-scale-"))
    app = create_app(
        app_settings(
            data_dir,
            PG_URL,
            HEBDO_BROKER_URL=REDIS_URL,
            HEBDO_SEND_BATCH=str(args.batch),
            HEBDO_FEEDS="sample",
        )
    )
    timers = Timers()
    timers.wrap("claim_rows", "claim")
    timers.wrap("_flush", "flush")
    timers.wrap("mail_for", "build")
    try:
        with app.app_context():
            settings = app.config["SETTINGS"]
            upgrade()
            started = time.perf_counter()
            db.session.execute(subscriber_fill(ALL_ACTIVE, confirmed=True), {"n": args.subscribers})
            db.session.commit()
            fill = time.perf_counter() - started
            now = datetime.now(UTC)
            feeds.ingest_all(settings, now)
            plan_issue(settings, WEEK, now)
            db.session.execute(text("ANALYZE"))
            db.session.commit()
            issue = get_issue(WEEK)
            assert issue is not None
            issue_id = issue.id
            print(f"subscribers: {args.subscribers:,} active (filled in {fill:.1f} s)")

            rss_before, peak_before = current_rss_mib(), peak_rss_mib()
            started = time.perf_counter()
            recipients = delivery.start_send(settings, issue_id, datetime.now(UTC))
            snapshot = time.perf_counter() - started
            print(
                f"start_send: {recipients:,} deliveries in {snapshot:.1f} s "
                f"({recipients / snapshot:,.0f} rows/s, ANALYZE included); this process: "
                f"RSS {rss_before:.0f} → {current_rss_mib():.0f} MiB, "
                f"peak RSS {peak_before:.0f} → {peak_rss_mib():.0f} MiB"
            )
            sizes()

            per_sample = args.sample_batches * args.batch
            rates = [sample(settings, issue_id, args.sample_batches, timers, "start of the queue")]

            # Most of the queue sent at once, as if the workers had got that far.
            for share, label in ((0.9, "after 90 % sent"), (None, "near the end")):
                left = int(
                    db.session.execute(
                        text(
                            "SELECT count(*) FROM deliveries WHERE issue_id = :i"
                            " AND status = 'queued'"
                        ),
                        {"i": issue_id},
                    ).scalar_one()
                )
                # Near the end: enough for the two samples (before and after VACUUM).
                keep = per_sample * 2 if share is None else int(left * (1 - share))
                started = time.perf_counter()
                marked = db.session.execute(
                    text(
                        "UPDATE deliveries SET status = 'sent', sent_at = now(), attempts = 1 "
                        "WHERE id IN (SELECT id FROM deliveries WHERE issue_id = :i "
                        "AND status = 'queued' ORDER BY id LIMIT :n)"
                    ),
                    {"i": issue_id, "n": max(left - keep, 0)},
                )
                db.session.commit()
                print(
                    f"(marked {marked.rowcount:,} more rows sent with one UPDATE in "  # type: ignore[attr-defined]
                    f"{time.perf_counter() - started:.1f} s; {keep:,} queued left)"
                )
                rates.append(sample(settings, issue_id, args.sample_batches, timers, label))
                # What autovacuum would do during a real send: the dead index entries the
                # UPDATE left behind go, and the claim's index walk gets short again.
                started = time.perf_counter()
                with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.execute(text("VACUUM (ANALYZE) deliveries"))
                print(f"(VACUUM (ANALYZE) deliveries: {time.perf_counter() - started:.1f} s)")
                rates.append(
                    sample(settings, issue_id, args.sample_batches, timers, f"{label}, vacuumed")
                )
            sizes()
            print(
                f"peak RSS of this process over the run: {peak_rss_mib():.0f} MiB "
                f"(current {current_rss_mib():.0f} MiB)"
            )
            redis_cost(app, issue_id, args.tasks)
            print(
                "messages/s per process (claim + build + record, instant transport): "
                + ", ".join(f"{r:,.0f}" for r in rates)
            )
            db.session.remove()
            db.engine.dispose()
    finally:
        if not args.keep:
            drop_database(PG_URL)


if __name__ == "__main__":
    main()
