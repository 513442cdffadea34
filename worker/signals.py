"""Celery signal handlers: every log line a task writes carries its task id; a worker
machine serves its processes' metrics (HEBDO_METRICS_PORT, multiprocess mode)."""

from __future__ import annotations

import logging
import os
from contextvars import Token
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_process_shutdown, worker_ready
from prometheus_client import multiprocess, start_http_server

from service.config import load_settings
from service.telemetry import logs, metrics

log = logging.getLogger(__name__)

_tokens: dict[str, Token[str | None]] = {}


@task_prerun.connect
def _task_started(task_id: str | None = None, **_kwargs: Any) -> None:
    if task_id:
        _tokens[task_id] = logs.task_id.set(task_id)


@task_postrun.connect
def _task_finished(task_id: str | None = None, **_kwargs: Any) -> None:
    token = _tokens.pop(task_id or "", None)
    if token is not None:
        logs.task_id.reset(token)


@worker_ready.connect
def _serve_metrics(sender: Any = None, **_kwargs: Any) -> None:
    """In the worker's main process, once: the pool's counters on HEBDO_METRICS_PORT."""
    port = load_settings(os.environ).metrics_port
    if not port:
        return
    if not metrics.multiprocess_dir():
        log.warning("HEBDO_METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not: no metrics")
        return
    start_http_server(port, registry=metrics.counters_registry())
    log.info("worker metrics on port %d", port)


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_kwargs: Any) -> None:
    if metrics.multiprocess_dir():
        multiprocess.mark_process_dead(pid or os.getpid())
