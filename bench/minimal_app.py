"""The two ceilings bench/subscribe.py compares the sign-up endpoint with, served by
gunicorn under the same settings as the real app:

- `POST /minimal`: reads the JSON or form body and answers 202 — the framework's ceiling;
- `POST /insert`: inserts the posted address into a throw-away table of the app's own
  database and commits — the storage ceiling (one row, one unique index, one commit).

The engine gets the app's engine options and SQLite pragmas (WAL, busy timeout; PostgreSQL:
pool pre-ping), so the only difference left with the real endpoint is the app's own work.

    gunicorn 'bench.minimal_app:create_app()'    # BENCH_DATABASE_URL names the database
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from flask import Flask, Response, jsonify, request
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

# The app's engine options; importing service.extensions registers its SQLite pragmas.
from service.extensions import UTCDateTime, engine_options

TABLE_NAME = "bench_insert"

metadata = MetaData()
table = Table(
    TABLE_NAME,
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
)


def engine_for(url: str) -> Engine:
    return create_engine(url, **engine_options(url))


def create_table(url: str) -> None:
    engine = engine_for(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()


def drop_table(url: str) -> None:
    engine = engine_for(url)
    metadata.drop_all(engine)
    engine.dispose()


def _email() -> object:
    if request.mimetype == "application/json":
        data = request.get_json(silent=True)
        return data.get("email") if isinstance(data, dict) else None
    return request.form.get("email")


def create_app(url: str | None = None) -> Flask:
    """The app gunicorn serves; each worker builds its own (no --preload), so its own pool."""
    engine = engine_for(url or os.environ["BENCH_DATABASE_URL"])
    app = Flask("hebdo-bench-minimal")

    @app.post("/minimal")
    def minimal() -> tuple[Response, int]:
        _email()
        return jsonify(status="accepted"), 202

    @app.post("/insert")
    def insert_one() -> tuple[Response, int]:
        email = _email()
        if not isinstance(email, str) or not email:
            return jsonify(error="no email"), 422
        with Session(engine) as session:
            session.execute(insert(table).values(email=email, created_at=datetime.now(UTC)))
            session.commit()
        return jsonify(status="accepted"), 202

    return app
