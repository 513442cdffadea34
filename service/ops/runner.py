"""`hebdo run`: web (gunicorn), Celery worker and Celery beat in the foreground.

Each child gets its own session, so the terminal's Ctrl-C reaches only this
supervisor; it then sends SIGTERM to each child's main process, never to a
process group (signalling a Celery worker's pool children first can deadlock
its parent). A child that dies takes the others down: a half-running service
is worse than a stopped one.
"""

from __future__ import annotations

import os
import shutil
import signal
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
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}


def _pump(name: str, stream: IO[bytes]) -> None:
    """Prefix each line of a child's output with its name."""
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"[{name}] {line.decode('utf-8', 'replace')}")
        sys.stdout.flush()


def run_all(app: Flask, *, host: str, port: int) -> int:
    settings: Settings = app.config["SETTINGS"]
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
    url = f"http://{host}:{port}"
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
