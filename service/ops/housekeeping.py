"""What must not outlive its use, deleted by an hourly beat task.

Admin sessions end on the server after HEBDO_ADMIN_IDLE_MINUTES or HEBDO_ADMIN_SESSION_HOURS
(each request checks), but their rows would stay; uploaded CSV files hold addresses and go
after a day when nobody imports them (the imports page also purges them, but only when
someone opens it). Mail that came back (inbound) keeps its raw message for
RAW_KEEP_DAYS for a person to read: it holds a reader's address and words, so it goes
after that, the record of what was done staying.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.admin.accounts import purge_sessions
from service.config import Settings
from service.extensions import db
from service.inbound.receive import purge_raw
from service.subscribers.csv_io import purge_import_files


@dataclass(frozen=True)
class Purged:
    sessions: int
    import_files: int
    inbound_raw: int = 0


def housekeeping(settings: Settings, now: datetime) -> Purged:
    files = purge_import_files(now)
    raw = purge_raw(now)
    db.session.commit()
    return Purged(sessions=purge_sessions(settings, now), import_files=files, inbound_raw=raw)
