"""Queue Celery tasks by name, after the data they need is committed.

The service never imports the worker: tasks are sent by name. A broker that is
down makes `enqueue` return False and log it; the request still succeeds,
because the periodic sweep finds whatever was committed but never queued.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from flask import current_app

log = logging.getLogger(__name__)

SEND_CONFIRMATION = "hebdo.send_confirmation"
SWEEP_CONFIRMATIONS = "hebdo.sweep_confirmations"
SEND_BATCH = "hebdo.send_batch"
DIGEST_TICK = "hebdo.digest_tick"
FETCH_FEEDS = "hebdo.fetch_feeds"
HOUSEKEEPING = "hebdo.housekeeping"


def enqueue(name: str, *args: object, countdown: float | None = None) -> bool:
    celery: Celery = current_app.extensions["celery"]
    try:
        celery.send_task(name, args=args, countdown=countdown)
    except Exception as exc:  # kombu raises OperationalError, OSError, or its own errors
        log.warning("broker unavailable, %s left for the sweep: %s", name, type(exc).__name__)
        return False
    return True


# Sign-ups owe confirmation mails; one sweep task, run CONFIRMATION_WINDOW seconds after the
# first sign-up of a window, sends every mail owed by then. A burst of sign-ups then costs
# the broker one message per window and web process, not one per sign-up (a publish costs
# ≈ 1 ms, as much as the sign-up's own insert). A sign-up is covered by the sweep already
# scheduled if it commits at least COVER_MARGIN before that sweep is due.
CONFIRMATION_WINDOW = 1.0
COVER_MARGIN = 0.3
# After the broker refused a sweep, sign-ups stop asking it for this long: while it is down
# every publish fails (a connection attempt and a WARNING per sign-up, 200 lines a minute on
# a busy form) and the periodic sweep sends what they owe once it is back.
BROKER_RETRY_SECONDS = 5.0


class _SweepClock:
    """When this process's next scheduled confirmation sweep is due (monotonic seconds:
    a wall clock stepped back must not silence the sign-ups)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.due = 0.0


def enqueue_confirmation_sweep() -> bool:
    """Make sure a sweep sends the confirmation mail just committed, within about a second."""
    clock: _SweepClock = current_app.extensions.setdefault("hebdo.sweep_clock", _SweepClock())
    now = time.monotonic()
    with clock.lock:
        if now < clock.due - COVER_MARGIN:
            return True
        clock.due = now + CONFIRMATION_WINDOW
    if enqueue(SWEEP_CONFIRMATIONS, countdown=CONFIRMATION_WINDOW):
        return True
    with clock.lock:
        # Nothing scheduled after all: a sign-up tries again once the pause is over.
        clock.due = now + BROKER_RETRY_SECONDS + COVER_MARGIN
    return False


def enqueue_batch(issue_id: int) -> bool:
    """Queue one batch task of an issue (it claims whatever is due when it runs)."""
    return enqueue(SEND_BATCH, issue_id)
