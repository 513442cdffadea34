"""Benchmark: the admin subscriber list at a million subscribers, on PostgreSQL.

Fills the database `hebdo_bench_list` (created if missing, emptied first) with N
synthetic subscribers (default 1,000,000; `--subscribers`) in one INSERT … SELECT,
then times what the list page and the API do, through the Flask test client with
a real admin token: the first page, a page deep in the list (after walking the
cursor), a status filter, substring searches (a rare one and a common one), counts
per status, and a walk of 20 consecutive pages. Prints each figure, median of 5.
`cursor=` (empty) asks
for a first page without the counts, so each line times one thing.

Talks only to 127.0.0.1; stops by itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench.database import MIXED_STATUSES, app_settings, reset_database, subscriber_fill  # noqa: E402
from service import create_app  # noqa: E402
from service.admin import apitokens  # noqa: E402
from service.extensions import db  # noqa: E402

PG_URL = os.environ.get(
    "BENCH_LIST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hebdo_bench_list"
)


def timed(client, path: str, headers: dict[str, str], repeat: int = 5) -> tuple[float, dict]:
    samples = []
    body: dict = {}
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code, response.data[:300])
        body = response.json
    return statistics.median(samples) * 1000, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    args = parser.parse_args()
    reset_database(PG_URL)
    data_dir = Path(tempfile.mkdtemp(prefix="hebdo-bench-list-"))
    app = create_app(app_settings(data_dir, PG_URL))
    with app.app_context():
        upgrade()
        started = time.perf_counter()
        db.session.execute(
            subscriber_fill(MIXED_STATUSES, confirmed=False), {"n": args.subscribers}
        )
        db.session.commit()
        fill = time.perf_counter() - started
        db.session.execute(text("ANALYZE subscribers"))
        db.session.commit()
        token = apitokens.create_token("bench", "admin", datetime.now(UTC))
    headers = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    print(f"subscribers: {args.subscribers:,} (filled in {fill:.1f} s)")

    figures: list[tuple[str, float]] = []
    ms, body = timed(client, "/api/v1/admin/subscribers?limit=50", headers)
    figures.append(("first page (50, with counts per status)", ms))
    cursor = body["next_cursor"]
    ms, _ = timed(client, f"/api/v1/admin/subscribers?limit=50&cursor={cursor}", headers)
    figures.append(("second page (50, keyset)", ms))

    # Walk 20 pages of 500 and time the walk; the last page is 10,000 rows deep.
    started = time.perf_counter()
    cursor = None
    for _ in range(20):
        url = "/api/v1/admin/subscribers?limit=500" + (f"&cursor={cursor}" if cursor else "")
        cursor = client.get(url, headers=headers).json["next_cursor"]
    walk = (time.perf_counter() - started) * 1000
    figures.append(("walk of 20 pages of 500 (per page)", walk / 20))
    ms, _ = timed(client, f"/api/v1/admin/subscribers?limit=50&cursor={cursor}", headers)
    figures.append(("page after 10,000 rows (keyset)", ms))

    ms, _ = timed(client, "/api/v1/admin/subscribers?limit=50&cursor=", headers)
    figures.append(("first page (50, without counts)", ms))
    ms, _ = timed(client, "/api/v1/admin/subscribers?limit=50&sort=email&cursor=", headers)
    figures.append(("first page sorted by address", ms))
    ms, _ = timed(client, "/api/v1/admin/subscribers?limit=50&status=bounced&cursor=", headers)
    figures.append(("status=bounced (1 % of rows)", ms))
    ms, body = timed(client, "/api/v1/admin/subscribers?limit=50&q=reader123456@&cursor=", headers)
    figures.append((f"search, rare substring ({len(body['items'])} hits)", ms))
    ms, _ = timed(client, "/api/v1/admin/subscribers?limit=50&q=gmail&cursor=", headers)
    figures.append(("search, common substring (a quarter of rows)", ms))
    ms, _ = timed(
        client,
        "/api/v1/admin/subscribers?limit=50&q=reader99&status=active&locale=en&cursor=",
        headers,
    )
    figures.append(("search + status + locale", ms))
    for name, value in figures:
        print(f"{name:<48} {value:8.1f} ms")


if __name__ == "__main__":
    main()
