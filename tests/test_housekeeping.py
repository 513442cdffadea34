"""The hourly housekeeping: rows that must not outlive their use are deleted, and only them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import select, update

from service.extensions import db
from service.housekeeping import housekeeping
from service.models import AdminSession, ImportFile
from tests.conftest import Admin, create_admin


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
    # The live session still works; the purged one was already refused and stays so.
    assert bob.get("/admin/subscribers").status_code == 200
    assert admin.get("/admin/subscribers").status_code == 302
