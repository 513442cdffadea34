"""What must not outlive its use, deleted by an hourly beat task.

Admin sessions end on the server after HEBDO_ADMIN_IDLE_MINUTES or HEBDO_ADMIN_SESSION_HOURS
(each request checks), but their rows would stay; uploaded CSV files hold addresses and go
after a day when nobody imports them (the imports page also purges them, but only when
someone opens it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.admin.accounts import purge_sessions
from service.config import Settings
from service.extensions import db
from service.subscribers.csv_io import purge_import_files


@dataclass(frozen=True)
class Purged:
    sessions: int
    import_files: int


def housekeeping(settings: Settings, now: datetime) -> Purged:
    files = purge_import_files(now)
    db.session.commit()
    return Purged(sessions=purge_sessions(settings, now), import_files=files)
