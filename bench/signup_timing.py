"""Benchmark: does the sign-up endpoint's time tell a known address from a new one?

The answer's body never does (tests/test_attacks.py); its time might, if a known address
costs the server more work than a new one. This posts JSON sign-ups through the Flask
test client, in this process (what differs is the server's work, not the network), in
rounds of four in a shuffled order: a new address, one pending (signed up before, its
confirmation mail already sent), one active, and a new one again. It prints each kind's
median and the z-score of a Mann-Whitney U test of each known kind against new addresses
(|z| > 3: the two are told apart), on SQLite (a fresh data folder, the embedded
file-system broker) and on PostgreSQL + Redis. Other processes skew it: before each
database it waits (up to --quiet-wait seconds) for the CPUs to be < 15 % busy, and prints
how busy they were.

    .venv/bin/python bench/signup_timing.py                       # both, 2,000 rounds
    .venv/bin/python bench/signup_timing.py --databases sqlite --rounds 500

The settings are bench/subscribe.py's (production, no rate limits); it uses the same
PostgreSQL database `hebdo_bench` (created if missing, emptied) and Redis database 14
(flushed). Talks only to 127.0.0.1. No worker runs: queued sweeps stay in the broker.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import update  # noqa: E402

from bench.subscribe import (  # noqa: E402
    SUBSCRIBE_PATH,
    cpu_busy,
    environment,
    quiet,
    reset_postgresql,
)
from service import create_app  # noqa: E402
from service.extensions import db  # noqa: E402
from service.models import Status, Subscriber  # noqa: E402

KINDS = ("new", "pending", "active")
WARM = 50


def mann_whitney_z(a: list[float], b: list[float]) -> float:
    """The U test's normal approximation (ties averaged): negative when `a` is faster."""
    ranked = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_a = sum(r for r, (_x, group) in zip(ranks, ranked, strict=True) if group == 0)
    n1, n2 = len(a), len(b)
    u = rank_a - n1 * (n1 + 1) / 2
    return (u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)


def measure(database: str, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per sign-up, by kind of address."""
    with tempfile.TemporaryDirectory(prefix=f"hebdo-bench-timing-{database}-") as folder:
        values, _absent = environment(database, Path(folder))
        if database == "postgresql":
            reset_postgresql()
        app = create_app(values)
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
        client = app.test_client()
        # Each known address is posted once, as a prober would: a repeated one would find
        # what the process remembers of it (the address's validation is cached).
        pending = [f"pending{n}@exemple.fr" for n in range(rounds + WARM)]
        active = [f"active{n}@exemple.fr" for n in range(rounds + WARM)]
        for email in pending + active:
            assert client.post(SUBSCRIBE_PATH, json={"email": email}).status_code == 202
        with app.app_context():
            # Their first confirmation mail went out: a new post owes none (the resend limit).
            db.session.execute(
                update(Subscriber).values(confirm_due_at=None, confirm_sent_at=datetime.now(UTC))
            )
            db.session.execute(
                update(Subscriber)
                .where(Subscriber.email.in_(active))
                .values(status=Status.ACTIVE, confirmed_at=datetime.now(UTC))
            )
            db.session.commit()
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        fresh = iter(range(10**9))
        for n in range(rounds + WARM):
            order = ["new", "pending", "active", "new"]
            random.shuffle(order)
            for kind in order:
                if kind == "new":
                    email = f"new{next(fresh)}@exemple.fr"
                else:
                    email = (pending if kind == "pending" else active)[n]
                started = time.perf_counter()
                answer = client.post(SUBSCRIBE_PATH, json={"email": email, "locale": "fr"})
                spent = (time.perf_counter() - started) * 1000
                assert answer.status_code == 202, answer.get_data(as_text=True)
                if n >= WARM:
                    times[kind].append(spent)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        return times


def report(database: str, times: dict[str, Any]) -> None:
    new = times["new"]
    print(f"{database}: {len(new)} new, {len(times['pending'])} pending, ", end="")
    print(f"{len(times['active'])} active sign-ups")
    for kind in KINDS:
        median = statistics.median(times[kind])
        p90 = statistics.quantiles(times[kind], n=10)[-1]
        line = f"  {kind:8} median {median:6.2f} ms   p90 {p90:6.2f} ms"
        if kind != "new":
            line += f"   vs new: {median - statistics.median(new):+5.2f} ms, "
            line += f"z = {mann_whitney_z(times[kind], new):+5.1f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument(
        "--quiet-wait", type=float, default=120, help="seconds to wait for idle CPUs"
    )
    args = parser.parse_args()
    for database in args.databases.split(","):
        before = quiet(args.quiet_wait)
        times = measure(database, args.rounds)
        print(f"(CPUs {before:.0%} busy before, {cpu_busy():.0%} after)")
        report(database, times)


if __name__ == "__main__":
    main()
