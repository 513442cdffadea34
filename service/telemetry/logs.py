"""Logging: one line per record, plain text or JSON, carrying the id of the web request or the
Celery task it belongs to, and an access log that never holds a link's token.

`HEBDO_LOG_FORMAT=json` (the default in production) writes one JSON object per line, for a
log shipper: `time`, `level`, `logger`, `message`, `request_id` or `task_id` when there is
one, `exception` with the traceback. `text` writes the same as a readable line.

Request ids: a sane `X-Request-ID` from the proxy is kept (so a request can be followed
from nginx to hebdo), else one is made; it is sent back in the response's `X-Request-ID`.
Task ids come from Celery (worker/celery_app.py sets them around each task).

The access log (logger `hebdo.access`) names the route, not the path: confirm and
unsubscribe links carry signed tokens in their path, which gunicorn's own access log
would write out (so hebdo does not turn it on). Addresses never reach a log line in full:
the code that logs one masks it (see signup.defences.mask, mail.errors.mask_addresses).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

request_id: ContextVar[str | None] = ContextVar("hebdo_request_id", default=None)
task_id: ContextVar[str | None] = ContextVar("hebdo_task_id", default=None)

_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HANDLER_MARK = "_hebdo_handler"
access_log = logging.getLogger("hebdo.access")


class _Context(logging.Filter):
    """Puts the current request and task ids on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.task_id = task_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "task_id"):
            value = getattr(record, key, None)
            if value:
                line[key] = value
        for key in ("method", "route", "status", "ms"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _escaped(char: int) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return named.get(chr(char), f"\\x{char:02x}" if char < 0x100 else f"\\u{char:04x}")


# Every character that could end or rewrite a line on a terminal or in a log file: C0 and
# C1 controls, DEL, and Unicode's own line and paragraph separators.
_CONTROLS = {char: _escaped(char) for char in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}


def escape_controls(text: str) -> str:
    """`text` on one line: each control character written as its escape (`\\r`, `\\n`, `\\x1b`)."""
    return text.translate(_CONTROLS)


class TextFormatter(logging.Formatter):
    """One record, one line: whatever a message or its arguments hold (an address posted
    with a CR/LF in it), control characters are escaped, so nobody can forge a line. A
    traceback follows on lines of its own, each indented, so no line of it reads as a
    record either."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{k}={v}" for k in ("request_id", "task_id") if (v := getattr(record, k, None))]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        # The record's own line is escaped (formatMessage): every line after it is a
        # traceback's or a stack's, indented (the record keeps its traceback unindented
        # for the other handlers).
        head, *rest = super().format(record).split("\n")
        return "\n".join([head, *("    " + escape_controls(line) for line in rest)])

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def configure(level: str, fmt: str) -> None:
    """Install hebdo's handler on the root logger (once per process; a later call, as each
    test's app makes, only updates the level and the format)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        setattr(handler, _HANDLER_MARK, True)
        handler.addFilter(_Context())
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(level)


def init_app(app: Flask) -> None:
    """Request ids in and out, and one access log line per request."""

    @app.before_request
    def _start() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        g.request_token = request_id.set(g.request_id)
        g.request_started = time.monotonic()

    @app.after_request
    def _finish(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
            access_log.info(
                "%s %s %s",
                request.method,
                _route(),
                response.status_code,
                extra={
                    "method": request.method,
                    "route": _route(),
                    "status": response.status_code,
                    "ms": round((time.monotonic() - g.request_started) * 1000, 1),
                },
            )
        return response

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id.reset(token)


def _route() -> str:
    """The matched rule (`/confirm/<token>`), never the path with its values; `-` for a path
    that matched nothing (it may be anything a client typed)."""
    rule = request.url_rule
    return rule.rule if rule is not None else "-"
