"""Benchmark: CSV import and export of 100,000 subscribers on PostgreSQL, through the app.

Import: the dry run and the apply (batches of 1,000, one audit row per subscriber), timed
in-process through the domain functions; export: the streamed CSV through the Flask test
client, read chunk by chunk as a client would. Then the round trip: the export holds
exactly the imported addresses. Prints times, rows/s and peak RSS (getrusage, so the
process's high-water mark: growth is measured against the mark before each phase).

    /tmp/venv/bin/python bench/admin_io.py               # 100,000 rows
    /tmp/venv/bin/python bench/admin_io.py --rows 10000

Talks only to 127.0.0.1. Creates the PostgreSQL database `hebdo_bench` if missing, empties
it, and drops it at the end unless --keep.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.database import drop_database, reset_database  # noqa: E402
from service import create_app  # noqa: E402
from service.extensions import db  # noqa: E402
from service.models import AuditEvent, Subscriber  # noqa: E402
from service.subscribers.csv_io import apply_import, plan_import  # noqa: E402

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hebdo_bench")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sample_csv(rows: int) -> str:
    """Two thirds with asserted consent (active), one third pending; two locales."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("email", "locale", "source", "consent_date", "consent_text"))
    for n in range(rows):
        if n % 3:
            writer.writerow((f"lecteur.{n}@exemple.fr", "fr", "salon-2024", "2024-03-01", "v3"))
        else:
            writer.writerow((f"lecteur.{n}@exemple.fr", "en", "", "", ""))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the hebdo_bench database")
    args = parser.parse_args()

    reset_database(PG_URL)
    data_dir = tempfile.mkdtemp(prefix="hebdo-bench-io-")
    values = {
        "HEBDO_ENV": "test",
        "HEBDO_DATA_DIR": data_dir,
        "HEBDO_DATABASE_URL": PG_URL,
        "HEBDO_BROKER_URL": "memory://",
        "HEBDO_SECRET_KEY": "bench-secret-key-0123456789-0123456789",
        "HEBDO_BASE_URL": "https://hebdo.example.fr",
        "HEBDO_ADMIN_MAX_REQUEST_BYTES": str(64 * 1024 * 1024),
        "HEBDO_LOG_LEVEL": "WARNING",
    }
    app = create_app(values)
    settings = app.config["SETTINGS"]
    content = sample_csv(args.rows)
    print(f"{args.rows:,} rows, {len(content) / 1e6:.1f} MB of CSV")

    try:
        with app.app_context():
            upgrade()
            base = peak_rss_mb()
            now = datetime.now(UTC)
            started = time.perf_counter()
            plan = plan_import(content, filename="bench.csv", settings=settings, now=now)
            dry = time.perf_counter() - started
            assert plan.counts["total"] == args.rows, plan.counts
            db.session.rollback()
            print(
                f"dry run : {dry:6.2f} s  {args.rows / dry:8,.0f} rows/s  "
                f"peak RSS {peak_rss_mb():.0f} MB (+{peak_rss_mb() - base:.0f})"
            )
            del plan

            base = peak_rss_mb()
            started = time.perf_counter()
            plan = apply_import(
                content, filename="bench.csv", settings=settings, now=now, actor="bench"
            )
            applied = time.perf_counter() - started
            print(
                f"apply   : {applied:6.2f} s  {args.rows / applied:8,.0f} rows/s  "
                f"peak RSS {peak_rss_mb():.0f} MB (+{peak_rss_mb() - base:.0f})  {plan.counts}"
            )
            subscribers = db.session.execute(select(func.count()).select_from(Subscriber))
            audits = db.session.execute(select(func.count()).select_from(AuditEvent))
            print(
                f"          {subscribers.scalar_one():,} subscribers, "
                f"{audits.scalar_one():,} audit events"
            )
            del plan
            from service.admin import apitokens

            token = apitokens.create_token("bench", "admin", now)
            db.session.commit()

        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        base = peak_rss_mb()
        started = time.perf_counter()
        response = client.get(
            "/api/v1/admin/subscribers.csv?sort=email", headers=headers, buffered=False
        )
        assert response.status_code == 200, response.status_code
        exported: set[str] = set()
        size = 0
        header_seen = False
        for chunk in response.response:
            piece = chunk.decode() if isinstance(chunk, bytes) else chunk
            size += len(piece)
            for row in csv.reader(io.StringIO(piece)):
                if not header_seen:
                    header_seen = True
                    continue
                exported.add(row[0])
        response.close()
        elapsed = time.perf_counter() - started
        print(
            f"export  : {elapsed:6.2f} s  {len(exported) / elapsed:8,.0f} rows/s  "
            f"{size / 1e6:.1f} MB  peak RSS {peak_rss_mb():.0f} MB "
            f"(+{peak_rss_mb() - base:.0f}; the set of {len(exported):,} addresses kept "
            "for the check is part of it)"
        )
        imported = {f"lecteur.{n}@exemple.fr" for n in range(args.rows)}
        same = exported == imported
        print(f"round trip: export == imported set: {same}")
        with app.app_context():
            event = db.session.execute(
                select(AuditEvent).where(AuditEvent.action == "export")
            ).scalar_one()
            print(f"export audit event: {event.detail}")
            db.session.remove()
            db.engine.dispose()
        if not same:
            sys.exit(1)
    finally:
        if not args.keep:
            drop_database(PG_URL)


if __name__ == "__main__":
    main()
