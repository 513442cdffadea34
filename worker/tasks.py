"""Thin Celery tasks over the domain functions: ids in, no results out."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import shared_task
from flask import current_app

from service.config import Settings
from service.mailer import TransientFailure, open_transport
from service.subscriptions import send_confirmation, send_due_confirmations

log = logging.getLogger(__name__)


def _settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


@shared_task(name="hebdo.send_confirmation")
def send_confirmation_task(subscriber_id: int) -> None:
    """Send one confirmation mail. A transient failure is left to the sweep (with backoff)."""
    settings = _settings()
    with open_transport(settings) as transport:
        try:
            send_confirmation(
                subscriber_id, transport=transport, settings=settings, now=datetime.now(UTC)
            )
        except TransientFailure as exc:
            log.info("confirmation for %s deferred: %s", subscriber_id, exc)


@shared_task(name="hebdo.sweep_confirmations")
def sweep_confirmations_task() -> None:
    """Send every owed confirmation mail nobody is sending."""
    settings = _settings()
    with open_transport(settings) as transport:
        sent = send_due_confirmations(transport=transport, settings=settings, now=datetime.now(UTC))
    if sent:
        log.info("sweep sent %d confirmation mail(s)", sent)
