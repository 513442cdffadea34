"""Benchmark: the sign-up endpoint under load, against the framework's and the storage's ceilings.

gunicorn runs exactly as `hebdo run` starts it (service/ops/runner.py `commands()`, 2 sync
workers) and wrk drives, one after the other and each after a short warm-up:

1. `POST /minimal` of bench/minimal_app.py: Flask reads the body and answers (framework ceiling);
2. `POST /insert` of bench/minimal_app.py: one row inserted and committed in a throw-away
   table of the same database (storage ceiling);
3. `POST /api/v1/subscriptions`, JSON, a distinct address per request;
4. the same, form-encoded (the hosted form; with its form token when the page has one);
5. the honeypot: the form with `website` filled — answered like a person, nothing stored.

on SQLite (a fresh data folder, the embedded file-system broker) and on PostgreSQL + Redis.
After each sign-up run it checks that every accepted address is stored (stored == accepted,
give or take the requests wrk left in flight when it stopped), that the sign-ups queued
confirmation sweeps (one per second and web process at most, not one per sign-up: see
service/jobs.py), and that the honeypot stored and queued nothing. Then it times where
one JSON sign-up spends its time, in-process. Prints req/s, p50/p99 latency, non-2xx/3xx
counts, a table and the ratio JSON sign-up / insert-and-commit (the target: >= 0.60,
p99 < 50 ms, no 5xx). Other processes on the machine skew every figure: before each run
it waits (up to --quiet-wait seconds) for the CPUs to be < 15 % busy, and prints how busy
they were before and during it (all CPU time but gunicorn's, wrk's and the database
servers').

    /tmp/venv/bin/python bench/subscribe.py                      # both databases, 10 s runs
    /tmp/venv/bin/python bench/subscribe.py --databases sqlite --duration 5

Talks only to 127.0.0.1. Needs wrk (Debian package `wrk`). Uses the PostgreSQL database
`hebdo_bench` (created if missing, emptied) and Redis database 14 (flushed). Every process it
starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import event, func, select  # noqa: E402

from bench import minimal_app  # noqa: E402
from bench.database import reset_database  # noqa: E402
from bench.tools import ensure_tool  # noqa: E402
from service import create_app, jobs  # noqa: E402
from service.config import SETTING_NAMES, load_settings  # noqa: E402
from service.extensions import db  # noqa: E402
from service.models import Subscriber  # noqa: E402
from service.ops.runner import commands  # noqa: E402
from service.signup import defences as signup_defences  # noqa: E402
from service.signup import screening  # noqa: E402
from service.subscribers import lifecycle  # noqa: E402

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/hebdo_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
UNLIMITED = "1000000/second"
# Set only when service/config.py knows them (unknown HEBDO_* names are refused).
ANTI_THROTTLE = {
    "HEBDO_SUBSCRIBE_RATE_LIMIT": UNLIMITED,
    "HEBDO_SUBSCRIBE_NETWORK_RATE_LIMIT": UNLIMITED,
    "HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT": UNLIMITED,
    "HEBDO_FORM_MIN_SECONDS": "0",
}
SUBSCRIBE_PATH = "/api/v1/subscriptions"
WARMUP_SECONDS = 2
SERVERS: list[int] = []  # running gunicorn masters
# Processes that serve the benchmark: their CPU is not "others' load".
SERVING = ("postgres", "redis-server")

# A distinct address per request: `<prefix>reader<thread>-<n>@exemple.fr`. Counts the
# requests sent and the answers by status per thread; done() prints them with the latency.
LUA = r"""
local path, kind, prefix, extra = "%(path)s", "%(kind)s", "%(prefix)s", "%(extra)s"
local threads, counter = {}, 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  sent, answered, statuses = 0, 0, {}
end

function request()
  sent = sent + 1
  local email = prefix .. "reader" .. id .. "-" .. sent .. "@exemple.fr"
  if kind == "json" then
    return wrk.format("POST", path, {["Content-Type"] = "application/json"},
      '{"email": "' .. email .. '", "locale": "fr"}')
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "email=" .. email:gsub("@", "%%%%40") .. "&locale=fr" .. extra)
end

function response(status, headers, body)
  answered = answered + 1
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local s, a, codes = 0, 0, {}
  for _, t in ipairs(threads) do
    s = s + t:get("sent")
    a = a + t:get("answered")
    for code, n in pairs(t:get("statuses")) do codes[code] = (codes[code] or 0) + n end
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH sent=%%d answered=%%d requests=%%d duration_us=%%d p50_us=%%d p99_us=%%d " ..
    "connect=%%d read=%%d write=%%d timeout=%%d\n",
    s, a, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
  for code, n in pairs(codes) do io.write(string.format("BENCH_STATUS %%d %%d\n", code, n)) end
end
"""


@dataclass
class Run:
    database: str
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    sent: int
    answered: int
    socket_errors: int
    accepted_status: int
    busy: float  # share of the CPUs others kept busy just before the run
    during: float  # ... and during it (all CPU time but gunicorn's, wrk's, the databases')
    stored: int | None = None
    queued: int | None = None
    check: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.statuses.get(self.accepted_status, 0)

    @property
    def bad(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 400)

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code >= 500)

    @property
    def in_flight(self) -> int:
        """Requests written that got no answer before wrk stopped (the server may still act)."""
        return self.sent - self.answered


# ---------------------------------------------------------------- processes


def ensure_wrk() -> str:
    return ensure_tool("wrk", "wrk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gunicorn(values: dict[str, str], target: str, log: Path) -> Iterator[str]:
    """gunicorn with `hebdo run`'s arguments, serving `target`; yields its base URL (the
    master's pid is kept in SERVERS while it runs, for the CPU accounting)."""
    port = free_port()
    argv = commands(load_settings(values), "127.0.0.1", port)["web"]
    assert argv[-1] == "service.wsgi:app", argv
    argv[-1] = target
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}, **values}
    with log.open("ab") as out:
        server = subprocess.Popen(argv, env=environ, cwd=ROOT, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=5).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer: a worker is up
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        SERVERS.append(server.pid)
        yield base
    finally:
        if server.pid in SERVERS:
            SERVERS.remove(server.pid)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wrk(
    wrk_bin: str,
    base: str,
    *,
    path: str,
    kind: str,
    prefix: str,
    extra: str,
    duration: float,
    threads: int,
    connections: int,
    folder: Path,
) -> dict[str, Any]:
    script = folder / f"{prefix.rstrip('-')}.lua"
    script.write_text(LUA % {"path": path, "kind": kind, "prefix": prefix, "extra": extra})
    argv = [
        wrk_bin,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        base + path,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True)
    with (folder / "wrk.log").open("a") as log:
        log.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    found: dict[str, Any] = {"statuses": {}}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            found.update({k: int(v) for k, v in (p.split("=") for p in line.split()[1:])})
        elif line.startswith("BENCH_STATUS "):
            _, code, n = line.split()
            found["statuses"][int(code)] = int(n)
    if "sent" not in found:
        sys.exit(f"wrk printed no figures:\n{done.stdout}\n{done.stderr}")
    return found


# ---------------------------------------------------------------- databases


def reset_postgresql() -> None:
    reset_database(PG_URL)
    redis.Redis.from_url(REDIS_URL).flushdb()


def environment(database: str, data_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The app's settings for one database, and which anti-throttle settings were absent."""
    known = set(SETTING_NAMES)
    values = {
        # Production: what a real deployment runs (no dev mailbox); no mail is sent (no worker).
        "HEBDO_ENV": "production",
        "HEBDO_DATA_DIR": str(data_dir),
        "HEBDO_SECRET_KEY": "bench-secret-key-0123456789-0123456789",
        "HEBDO_BASE_URL": "https://hebdo.example.fr",
        "HEBDO_MAIL_FROM": "L'Hebdo <newsletter@news.example.fr>",
        "HEBDO_SMTP_HOST": "127.0.0.1",
        "HEBDO_FEEDS": "",
        "HEBDO_WEB_WORKERS": "2",
    }
    if database == "postgresql":
        values["HEBDO_DATABASE_URL"] = PG_URL
        values["HEBDO_BROKER_URL"] = REDIS_URL
    values.update({k: v for k, v in ANTI_THROTTLE.items() if k in known})
    return values, sorted(k for k in ANTI_THROTTLE if k not in known)


def stored(app: Any, prefix: str) -> int:
    with app.app_context():
        count = db.session.execute(
            select(func.count()).select_from(Subscriber).where(Subscriber.email.like(prefix + "%"))
        ).scalar_one()
        db.session.remove()
    return int(count)


def inserted(url: str, prefix: str) -> int:
    engine = minimal_app.engine_for(url)
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count())
            .select_from(minimal_app.table)
            .where(minimal_app.table.c.email.like(prefix + "%"))
        ).scalar_one()
    engine.dispose()
    return int(count)


def queue_length(values: dict[str, str], data_dir: Path) -> int:
    """Messages waiting in the broker (nothing consumes them during the benchmark)."""
    if values.get("HEBDO_BROKER_URL", "").startswith("redis://"):
        client = redis.Redis.from_url(values["HEBDO_BROKER_URL"])
        return sum(int(client.llen(key)) for key in client.scan_iter(match="default*"))
    folder = data_dir / "broker" / "queue"
    return sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def form_token(base: str) -> str | None:
    """The hosted form's token field (`ts`), when the page carries one."""
    with urllib.request.urlopen(base + "/subscribe?lang=fr", timeout=10) as page:
        html = page.read().decode()
    for tag in re.findall(r"<input\b[^>]*>", html):
        if re.search(r"""\bname=["']ts["']""", tag):
            value = re.search(r"""\bvalue=["']([^"']*)["']""", tag)
            return value.group(1) if value else None
    return None


# ---------------------------------------------------------------- where the time goes


def breakdown(values: dict[str, str], count: int) -> dict[str, float]:
    """Time `count` JSON sign-ups through the Flask test client, in this process, with the
    validation, SQL statements, commits, pre-pings and the broker enqueue timed apart."""
    app = create_app(values)
    spent: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
                calls[name] = calls.get(name, 0) + 1

        return wrapper

    # The rate limit's address key validates the address first (uncached); the view and
    # subscribe() ask again (remembered).
    patched = [
        (signup_defences, "normalise_email", "validation"),
        (screening, "normalise_email", "validation"),
        (lifecycle, "normalise_email", "validation"),
        (jobs, "enqueue", "enqueue"),
    ]
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patched]
    for module, attr, name in patched:
        setattr(module, attr, timed(name, getattr(module, attr)))
    starts: list[float] = []
    try:
        with app.app_context():
            engine = db.engine
            dialect = engine.dialect
            dialect.do_commit = timed("commit", dialect.do_commit)  # type: ignore[method-assign]
            dialect.do_ping = timed("pre-ping", dialect.do_ping)  # type: ignore[method-assign]

            def before(*_args: object) -> None:
                starts.append(time.perf_counter())

            def after(*_args: object) -> None:
                spent["sql"] = spent.get("sql", 0.0) + time.perf_counter() - starts.pop()
                calls["sql"] = calls.get("sql", 0) + 1

            event.listen(engine, "before_cursor_execute", before)
            event.listen(engine, "after_cursor_execute", after)
            client = app.test_client()
            for n in range(20):  # warm: templates, pools, the broker connection
                client.post(SUBSCRIBE_PATH, json={"email": f"warm-prof-{n}@exemple.fr"})
            spent.clear()
            calls.clear()
            started = time.perf_counter()
            statuses: dict[int, int] = {}
            for n in range(count):
                answer = client.post(
                    SUBSCRIBE_PATH, json={"email": f"prof-reader-{n}@exemple.fr", "locale": "fr"}
                )
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            total = time.perf_counter() - started
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)
            db.session.remove()
            engine.dispose()
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)
    figures = {"total": total / count * 1000}
    for name, seconds in spent.items():
        figures[name] = seconds / count * 1000
        figures[name + " calls"] = calls[name] / count
    figures["statuses"] = statuses  # type: ignore[assignment]
    return figures


# ---------------------------------------------------------------- one database


def bench_database(database: str, args: argparse.Namespace, wrk_bin: str) -> list[Run]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix=f"hebdo-bench-subscribe-{database}-") as name:
        folder = Path(name)
        data_dir = folder / "data"
        values, absent = environment(database, data_dir)
        if absent:
            print(f"  note: settings absent from service/config.py, not set: {', '.join(absent)}")
        if database == "postgresql":
            reset_postgresql()
        app = create_app(values)
        url = app.config["SETTINGS"].database_url
        with app.app_context():
            upgrade()
            db.session.remove()
            db.engine.dispose()
        minimal_app.create_table(url)
        load = {
            "duration": args.duration,
            "threads": args.threads,
            "connections": args.connections,
            "folder": folder,
        }

        def measure(
            base: str,
            label: str,
            path: str,
            kind: str,
            prefix: str,
            extra: str = "",
            accepted: int = 202,
        ) -> Run:
            busy = quiet(args.quiet_wait)
            wrk(
                wrk_bin,
                base,
                path=path,
                kind=kind,
                prefix="warm-" + prefix,
                extra=extra,
                **{**load, "duration": WARMUP_SECONDS},
            )
            before = cpu_accounting()
            found = wrk(wrk_bin, base, path=path, kind=kind, prefix=prefix, extra=extra, **load)
            during = others_share(before, cpu_accounting())
            seconds = found["duration_us"] / 1e6
            run = Run(
                database=database,
                name=label,
                rps=found["requests"] / seconds,
                p50_ms=found["p50_us"] / 1000,
                p99_ms=found["p99_us"] / 1000,
                statuses=found["statuses"],
                sent=found["sent"],
                answered=found["answered"],
                socket_errors=sum(found[k] for k in ("connect", "read", "write", "timeout")),
                accepted_status=accepted,
                busy=busy,
                during=during,
            )
            runs.append(run)
            return run

        env = {**values, "BENCH_DATABASE_URL": url}
        with gunicorn(
            env, "bench.minimal_app:create_app()", folder / "gunicorn-minimal.log"
        ) as base:
            show(measure(base, "minimal Flask", "/minimal", "json", "min-"))
            run = measure(base, "insert + commit", "/insert", "json", "ins-")
            run.stored = settle(lambda: inserted(url, "ins-"))
            run.check = check_stored(run)
            show(run)
        minimal_app.drop_table(url)

        with gunicorn(values, "service.wsgi:app", folder / "gunicorn-app.log") as base:
            token = form_token(base)
            token_field = f"&ts={urllib.parse.quote(token)}" if token else ""
            print(f"  form token on /subscribe: {'yes, posted with the form' if token else 'none'}")
            scenarios = [
                ("JSON subscribe", "json", "json-", "", 202),
                ("form subscribe", "form", "form-", token_field, 303),
                (
                    "honeypot",
                    "form",
                    "trap-",
                    token_field + "&website=http%3A%2F%2Fspam.example",
                    303,
                ),
            ]
            for label, kind, prefix, extra, status in scenarios:
                before = queue_length(values, data_dir)
                run = measure(base, label, SUBSCRIBE_PATH, kind, prefix, extra, status)
                # gunicorn still answers what was in flight (and in its backlog) at wrk's stop.
                run.stored = settle(
                    lambda prefix=prefix: (stored(app, prefix), queue_length(values, data_dir))
                )[0]
                # Sweep messages queued by this run (and its warm-up, a second or two).
                run.queued = queue_length(values, data_dir) - before
                run.check = check_honeypot(run) if label == "honeypot" else check_stored(run)
                show(run)

        if args.profile:
            figures = breakdown(values, args.profile)
            print_breakdown(database, figures)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    return runs


def settle(read: Callable[[], Any]) -> Any:
    """`read()` once it stops changing (0.5 s apart): the server has worked off its backlog."""
    last = read()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now == last:
            break
        last = now
    return last


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (/proc/stat): others' load before a run."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle

    total1, idle1 = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1 - (idle2 - idle1) / max(total2 - total1, 1)


def _jiffies(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_accounting() -> tuple[int, int, int, float]:
    """(busy jiffies, all jiffies, jiffies of the processes serving the benchmark, wrk's s)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    total = sum(fields[:8])
    busy = total - fields[3] - fields[4]
    pids = list(SERVERS)
    for master in SERVERS:
        for task in Path(f"/proc/{master}/task").glob("*/children"):
            pids += [int(p) for p in task.read_text().split()]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in SERVING:
                    pids.append(int(entry.name))
            except OSError:
                continue
    ours = sum(_jiffies(pid) for pid in pids)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, total, ours, children.ru_utime + children.ru_stime


def others_share(before: tuple[int, int, int, float], after: tuple[int, int, int, float]) -> float:
    """Share of all CPUs used during a run by processes other than the benchmark's."""
    tick = os.sysconf("SC_CLK_TCK")
    busy, total = after[0] - before[0], after[1] - before[1]
    ours = (after[2] - before[2]) + (after[3] - before[3]) * tick
    return max(0.0, (busy - ours) / max(total, 1))


def quiet(wait: float) -> float:
    """Wait up to `wait` seconds for the machine to be < 15 % busy; the last share measured."""
    deadline = time.monotonic() + wait
    busy = cpu_busy()
    while busy >= 0.15 and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def check_stored(run: Run) -> str:
    """Every accepted address stored once: stored == accepted, up to the requests wrk left
    unanswered when it stopped (the server still handles those)."""
    assert run.stored is not None
    extra = run.stored - run.accepted
    if 0 <= extra <= run.in_flight:
        detail = f", +{extra} of {run.in_flight} unanswered at stop" if extra else ""
        verdict = f"OK (stored {run.stored:,} = accepted {run.accepted:,}{detail})"
    else:
        verdict = (
            f"MISMATCH (stored {run.stored:,}, accepted {run.accepted:,}, "
            f"{run.in_flight} unanswered)"
        )
    if run.queued is not None:
        verdict += f"; {run.queued:,} confirmation sweep(s) queued for {run.stored:,} sign-ups"
    return verdict


def check_honeypot(run: Run) -> str:
    assert run.stored is not None
    if run.stored == 0 and not run.queued:
        return "OK (nothing stored, nothing queued)"
    return f"FAIL (stored {run.stored:,}, queued {run.queued:,})"


def show(run: Run) -> None:
    codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(run.statuses.items()))
    print(
        f"  {run.name}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, "
        f"non-2xx/3xx {run.bad:,}, socket errors {run.socket_errors}, statuses {{{codes}}}, "
        f"others' CPU before/during: {run.busy:.0%}/{run.during:.0%}"
        + (f" — {run.check}" if run.check else ""),
        flush=True,
    )


def print_breakdown(database: str, f: dict[str, Any]) -> None:
    total = f["total"]
    parts = [
        ("email validation", "validation"),
        ("SQL statements", "sql"),
        ("commits", "commit"),
        ("pool pre-pings", "pre-ping"),
        ("broker enqueue (confirmation mail)", "enqueue"),
    ]
    accounted = 0.0
    print(f"  where one JSON sign-up's time goes ({database}, in-process, no contention):")
    print(f"    whole request through the test client: {total:.2f} ms  statuses {f['statuses']}")
    for label, key in parts:
        if key in f:
            accounted += f[key]
            print(
                f"    {label}: {f[key]:.2f} ms ({f[key] / total:.0%}), "
                f"{f[key + ' calls']:.1f} per request"
            )
    # Statements run inside a commit (autoflush) are counted under both: only approximate.
    print(f"    the rest (Flask, limiter, app Python, JSON, i18n): {total - accounted:.2f} ms")


def cpu_check() -> float:
    """Seconds for a fixed pure-Python loop: this machine's speed today, to compare runs."""
    started = time.perf_counter()
    total = 0
    for n in range(5_000_000):
        total += n
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--profile", type=int, default=300, help="sign-ups timed in-process (0: none)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="seconds to wait, before each run, for the machine to be < 15%% busy",
    )
    args = parser.parse_args()
    wrk_bin = ensure_wrk()
    print(f"CPU check: {cpu_check():.2f} s for 5,000,000 Python additions (lower is faster)")
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s after a "
        f"{WARMUP_SECONDS} s warm-up; gunicorn as `hebdo run`, 2 sync workers; "
        f"{os.cpu_count()} CPUs"
    )
    runs: list[Run] = []
    for database in args.databases:
        print(f"{database}:", flush=True)
        runs.extend(bench_database(database, args, wrk_bin))

    print()
    print(
        "| Database | Endpoint | req/s | p50 | p99 | non-2xx/3xx | 5xx | socket errors "
        "| others' CPU before/during | check |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for run in runs:
        print(
            f"| {run.database} | {run.name} | {run.rps:,.0f} | {run.p50_ms:.1f} ms "
            f"| {run.p99_ms:.1f} ms | {run.bad:,} | {run.server_errors:,} | {run.socket_errors} "
            f"| {run.busy:.0%}/{run.during:.0%} | {run.check or '—'} |"
        )
    print()
    for database in args.databases:
        by_name = {run.name: run for run in runs if run.database == database}
        json_run, ceiling = by_name["JSON subscribe"], by_name["insert + commit"]
        ratio = json_run.rps / ceiling.rps
        met = ratio >= 0.60 and json_run.p99_ms < 50 and json_run.server_errors == 0
        print(
            f"{database}: JSON subscribe / insert-and-commit = {json_run.rps:,.0f} / "
            f"{ceiling.rps:,.0f} = {ratio:.2f}; p99 {json_run.p99_ms:.1f} ms; "
            f"5xx {json_run.server_errors} — target (>= 0.60, p99 < 50 ms, no 5xx) "
            f"{'met' if met else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
