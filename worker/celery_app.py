"""The Celery app, built from the Flask app so tasks share its configuration.

`celery -A worker.celery_app worker` and `celery -A worker.celery_app beat`.
"""

from __future__ import annotations

from service import create_app

flask_app = create_app()
celery = flask_app.extensions["celery"]
settings = flask_app.config["SETTINGS"]

celery.conf.beat_schedule = {
    # Sends confirmation mails that were committed but never sent (broker down, worker killed).
    "sweep-confirmations": {
        "task": "hebdo.sweep_confirmations",
        "schedule": settings.sweep_seconds,
        # A sweep that could not run in time is skipped, not piled up.
        "options": {"expires": max(5.0, settings.sweep_seconds)},
    },
    # Plans and starts the weekly issue when due (computed in HEBDO_TIMEZONE each tick,
    # so daylight-saving changes need nothing), and sweeps sending issues.
    "digest-tick": {
        "task": "hebdo.digest_tick",
        "schedule": settings.sweep_seconds,
        "options": {"expires": max(5.0, settings.sweep_seconds)},
    },
    # Timed-out admin sessions and uploads never imported (they hold addresses).
    "housekeeping": {
        "task": "hebdo.housekeeping",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    "fetch-feeds": {
        "task": "hebdo.fetch_feeds",
        "schedule": settings.feed_interval_minutes * 60.0,
        "options": {"expires": settings.feed_interval_minutes * 60.0},
    },
}

# Registers the tasks and the signal handlers; imported at module top so a worker never
# imports inside a task.
from worker import signals, tasks  # noqa: E402,F401
