"""The hourly housekeeping: rows that must not outlive their use are deleted, and only them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import select, update

from service.extensions import db
from service.models import AdminSession, ImportFile
from service.ops.housekeeping import housekeeping
from tests.support.admin import Admin, create_admin
from tests.support.settings import ROOT


def test_timed_out_sessions_and_forgotten_uploads_are_deleted(app: Flask, admin: Admin) -> None:
    now = datetime.now(UTC)
    create_admin(app, "bob")
    bob = Admin(app.test_client())
    assert bob.login("bob").status_code == 302
    with app.app_context():
        # eve's session has been idle past HEBDO_ADMIN_IDLE_MINUTES (30); bob's is live.
        sessions = set(db.session.execute(select(AdminSession.id)).scalars())
        eve_session = min(sessions)
        db.session.execute(
            update(AdminSession)
            .where(AdminSession.id == eve_session)
            .values(last_seen_at=now - timedelta(minutes=31))
        )
        for hours, name in ((25, "forgotten.csv"), (1, "waiting.csv")):
            db.session.add(
                ImportFile(
                    created_at=now - timedelta(hours=hours),
                    created_by="admin:eve",
                    filename=name,
                    content="email\nlecteur@exemple.fr\n",
                )
            )
        db.session.commit()

        purged = housekeeping(app.config["SETTINGS"], now)

        assert (purged.sessions, purged.import_files) == (1, 1)
        assert set(db.session.execute(select(AdminSession.id)).scalars()) == sessions - {
            eve_session
        }
        assert db.session.execute(select(ImportFile.filename)).scalars().all() == ["waiting.csv"]
    # The live session still works.
    assert bob.get("/admin/subscribers").status_code == 200


@pytest.mark.slow
def test_beat_runs_it_hourly_on_the_default_queue(env: dict[str, str]) -> None:
    """The schedule as a real beat reads it (worker.celery_app builds it from the settings)."""
    script = (
        "import json; from worker.celery_app import celery; "
        "entry = celery.conf.beat_schedule['housekeeping']; "
        "print(json.dumps([entry['task'], entry['schedule'], "
        "celery.amqp.router.route({}, entry['task'])['queue'].name]))"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}
    found = subprocess.run(
        [sys.executable, "-c", script],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    assert json.loads(found.stdout.strip().splitlines()[-1]) == [
        "hebdo.housekeeping",
        3600.0,
        "default",
    ]
