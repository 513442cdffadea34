"""Queue Celery tasks by name, after the data they need is committed.

The service never imports the worker: tasks are sent by name. A broker that is
down makes `enqueue` return False and log it; the request still succeeds,
because the periodic sweep finds whatever was committed but never queued.
"""

from __future__ import annotations

import logging

from celery import Celery
from flask import current_app

log = logging.getLogger(__name__)

SEND_CONFIRMATION = "hebdo.send_confirmation"
SWEEP_CONFIRMATIONS = "hebdo.sweep_confirmations"
SEND_BATCH = "hebdo.send_batch"
DIGEST_TICK = "hebdo.digest_tick"
FETCH_FEEDS = "hebdo.fetch_feeds"


def enqueue(name: str, *args: object) -> bool:
    celery: Celery = current_app.extensions["celery"]
    try:
        celery.send_task(name, args=args)
    except Exception as exc:  # kombu raises OperationalError, OSError, or its own errors
        log.warning("broker unavailable, %s left for the sweep: %s", name, type(exc).__name__)
        return False
    return True


def enqueue_batch(issue_id: int) -> bool:
    """Queue one batch task of an issue (it claims whatever is due when it runs)."""
    return enqueue(SEND_BATCH, issue_id)
