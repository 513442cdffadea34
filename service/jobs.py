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


def enqueue(name: str, *args: object) -> bool:
    celery: Celery = current_app.extensions["celery"]
    try:
        celery.send_task(name, args=args)
    except Exception as exc:  # kombu raises OperationalError, OSError, or its own errors
        log.warning("broker unavailable, %s left for the sweep: %s", name, type(exc).__name__)
        return False
    return True
