"""`hebdo run`: web (gunicorn), Celery worker and Celery beat in the foreground.

Each child gets its own session, so the terminal's Ctrl-C reaches only this
supervisor; it then sends SIGTERM to each child's main process, never to a
process group (signalling a Celery worker's pool children first can deadlock
its parent). A child that dies takes the others down: a half-running service
is worse than a stopped one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO

from flask import Flask
from flask_babel import gettext as _
from flask_migrate import upgrade

from service.admin import accounts
from service.config import Settings
from service.extensions import QUEUES, TASK_TIME_LIMIT
from service.jobs import FETCH_FEEDS, enqueue

STOP_GRACE_SECONDS = 20
# The worker's SIGTERM is Celery's warm shutdown: its running tasks end on their own, within
# the hard time limit (a digest batch stops claiming after 120 s, but a stalled relay can hold
# its last message longer). Killed before that, a batch's rows wait for the claim timeout
# and the messages it handed over since its last write are sent again. docker-compose.yml
# gives the same 330 s. Ctrl-C a second time to stop at once all the same.
WORKER_STOP_GRACE_SECONDS = TASK_TIME_LIMIT + 30


def commands(settings: Settings, host: str, port: int) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "web": [
            python,
            "-m",
            "gunicorn",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(settings.web_workers),
            # No gunicorn access log: link tokens are in paths; hebdo.access logs routes.
            "--graceful-timeout",
            "10",
            # An admin import of 100,000 rows is applied within its request (≈30 s measured).
            "--timeout",
            "120",
            "service.wsgi:app",
        ],
        "worker": [
            python,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            # One worker for every queue here; production runs worker-mail and worker-default.
            "--queues",
            ",".join(QUEUES),
            "--concurrency",
            str(settings.worker_concurrency),
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
        ],
        "beat": [
            python,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "beat",
            "--schedule",
            str(settings.data_dir / "celerybeat-schedule"),
            "--loglevel",
            settings.log_level,
        ],
    }


def metrics_environment(settings: Settings) -> dict[str, str]:
    """The children's environment, with an emptied folder for prometheus_client's
    multiprocess mode: web and worker processes then add up their counters in /metrics."""
    folder = settings.data_dir / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # Celery's banner against running as root is for production machines; the image runs
    # as its own user, and a laptop's container as root is no news to its owner.
    quiet = "ignore:You're running the worker with superuser privileges"
    warnings = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), quiet)))
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONWARNINGS": warnings}


def public_url(settings: Settings, host: str, port: int) -> str:
    """The base URL of every link and of the sample page's box. Outside production an
    unset HEBDO_BASE_URL follows --host and --port: a newcomer on `--port 8101` must not
    get a box posting to :8000 and mails linking there."""
    if settings.env == "production" or "base_url" in settings.model_fields_set:
        return settings.base_url
    return listen_url(host, port)


def listen_url(host: str, port: int) -> str:
    """Where the web app answers on this machine."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (any address: reach it on loopback)
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def lock_data_dir(settings: Settings) -> IO[str] | int:
    """Hold the data folder for this `hebdo run` (an flock the system drops when this
    process ends, however it ends): a second one would start a second worker and a second
    beat on the same files. The open lock file, or the PID of the run holding it."""
    path = settings.data_dir / "run.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        return int(holder) if holder.isdigit() else 0
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def port_problem(host: str, port: int) -> str | None:
    """Why the web app could not listen on host:port, said before anything starts (else
    the banner prints and gunicorn fails seconds later amid the worker's start-up)."""
    error = _bind_error(host, port)
    if error is None:
        return None
    if error.errno == errno.EADDRINUSE:
        # The first free port above, to suggest (8001 after 8000).
        other = next(
            (p for p in range(port + 1, min(port + 50, 65536)) if not _bind_error(host, p)),
            port + 1,
        )
        return _(
            "hebdo: port %(port)s on %(host)s is already in use (another `hebdo run`, "
            "or another server); stop it, or choose another port: `hebdo run --port %(other)s`",
            port=port,
            host=host,
            other=other,
        )
    return _(
        "hebdo: cannot listen on %(host)s port %(port)s: %(error)s",
        host=host,
        port=port,
        error=error.strerror,
    )


def _bind_error(host: str, port: int) -> OSError | None:
    """Bind as gunicorn will (SO_REUSEADDR: a port left in TIME_WAIT by the previous run
    is free), and let go at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _name, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:  # socket.gaierror too: a host that does not resolve
        return exc
    return None


def _pump(name: str, stream: IO[bytes]) -> None:
    """Prefix each line of a child's output with its name."""
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"[{name}] {line.decode('utf-8', 'replace')}")
        sys.stdout.flush()


def run_all(app: Flask, *, host: str, port: int) -> int:
    settings: Settings = app.config["SETTINGS"]
    # Held (open) until this function returns: the lock goes with the supervisor.
    lock = lock_data_dir(settings)
    if isinstance(lock, int):
        print(
            _(
                "hebdo: another `hebdo run` (PID %(pid)s) is using the data folder %(folder)s; "
                "stop it first, or give this one its own HEBDO_DATA_DIR",
                pid=lock or "?",
                folder=settings.data_dir,
            ),
            file=sys.stderr,
            flush=True,
        )
        return 2
    problem = port_problem(host, port)
    if problem:
        print(problem, file=sys.stderr, flush=True)
        return 2
    print(
        _("hebdo: migrating %(database)s", database=settings.database_url.split("@")[-1]),
        flush=True,
    )
    upgrade()
    # Read the feeds now rather than an interval after beat starts: the worker picks it up.
    if settings.feeds:
        enqueue(FETCH_FEEDS)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()
    forced = threading.Event()
    signals = [0]

    def request_stop(signum: int, _frame: object) -> None:
        signals[0] += 1
        if signals[0] > 1:
            forced.set()  # a second Ctrl-C: stop waiting for the worker's tasks
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    environ = metrics_environment(settings)
    # Every child (gunicorn's pages, the worker's mails) builds its links from this.
    environ["HEBDO_BASE_URL"] = public_url(settings, host, port)
    for name, argv in commands(settings, host, port).items():
        child = subprocess.Popen(  # noqa: S603 (our own fixed argv)
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environ,
        )
        children[name] = child
        threading.Thread(target=_pump, args=(name, child.stdout), daemon=True).start()
    mode = (
        _("mail captured in %(folder)s", folder=settings.mail_capture_dir)
        if settings.capture_mail
        else _("SMTP %(host)s", host=settings.smtp_host)
    )
    url = listen_url(host, port)
    print(_("hebdo: %(url)s  (%(mode)s; Ctrl-C stops)", url=url, mode=mode), flush=True)
    if not accounts.list_users():
        print(
            _(
                "hebdo: admin area at %(url)s/admin/ — create its first user with "
                "`hebdo admin create-user NAME --email YOU@EXAMPLE` in another terminal",
                url=url,
            ),
            flush=True,
        )

    status = 0
    while not stopping.is_set():
        for name, child in children.items():
            if child.poll() is not None:
                print(
                    _(
                        "hebdo: %(name)s exited with %(code)s; stopping the rest",
                        name=name,
                        code=child.returncode,
                    ),
                    flush=True,
                )
                status = 1
                stopping.set()
                break
        stopping.wait(0.5)

    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    started = time.monotonic()
    for name, child in children.items():
        grace = WORKER_STOP_GRACE_SECONDS if name == "worker" else STOP_GRACE_SECONDS
        _wait_or_kill(name, child, started + grace, grace, forced)
    print(_("hebdo: stopped"), flush=True)
    return status


def _wait_or_kill(
    name: str,
    child: subprocess.Popen[bytes],
    deadline: float,
    grace: int,
    forced: threading.Event,
) -> None:
    told = False
    while child.poll() is None:
        if forced.is_set() or time.monotonic() >= deadline:
            if forced.is_set():
                print(
                    _("hebdo: %(name)s did not stop; killing it on a second Ctrl-C", name=name),
                    flush=True,
                )
            else:
                print(
                    _(
                        "hebdo: %(name)s did not stop; killing it after %(seconds)ss",
                        name=name,
                        seconds=grace,
                    ),
                    flush=True,
                )
            child.kill()
            break
        if not told and time.monotonic() - deadline + grace > 2:
            print(
                _(
                    "hebdo: waiting for the %(name)s to finish its tasks (up to %(seconds)ss; "
                    "Ctrl-C again to kill it)",
                    name=name,
                    seconds=grace,
                ),
                flush=True,
            )
            told = True
        time.sleep(0.1)
    child.wait()
