"""Admin accounts and their browser sessions.

Passwords are kept as werkzeug scrypt hashes. A browser session is a random
id in a signed cookie whose SHA-256 is a row here: logging in always makes a
new one (no fixation), logging out deletes it, and the idle and absolute
timeouts are checked against the row, so they hold even for a stolen cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from flask_babel import gettext as _
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from service.admin.audit import audit
from service.config import Settings
from service.extensions import db, rowcount
from service.models import AdminRole, AdminSession, AdminUser

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
# Writing last_seen_at on every page would make each click a write.
_TOUCH_EVERY = timedelta(seconds=60)
# Compared against when the account does not exist, so a wrong name costs as much
# time as a wrong password and response times do not reveal which names exist.
_DUMMY_HASH = generate_password_hash("not-a-password-" + secrets.token_hex(8), "scrypt")


class AccountError(ValueError):
    """An account command cannot be carried out; the message says why."""


@cache
def _common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords of zxcvbn's frequency lists (Dropbox's estimator,
    ported by the zxcvbn package; from leaked password sets), loaded once, on first use."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def _check_password(password: str) -> None:
    """Refuse a password of the wrong length, or a common one: as it is, or once the
    digits and punctuation around it are taken off ("Password2024!" is "password"), since
    guessers try those variants first."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    lowered = password.lower()
    core = lowered.strip(string.digits + string.punctuation + string.whitespace)
    common = _common_passwords()
    if lowered in common or (core and core in common):
        raise AccountError(
            _(
                "this password is one of the most common ones (zxcvbn's list of 30,000 "
                "leaked passwords): choose another"
            )
        )


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(
    name: str, password: str, role: str, now: datetime, *, email: str | None = None
) -> AdminUser:
    if role not in tuple(AdminRole):
        raise AccountError(f"role must be one of {', '.join(AdminRole)}")
    if not name or len(name) > 64 or not name.isprintable() or name != name.strip():
        raise AccountError("name must be 1 to 64 printable characters")
    _check_password(password)
    user = AdminUser(
        name=name,
        password_hash=generate_password_hash(password, "scrypt"),
        role=role,
        email=email,
        created_at=now,
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise AccountError(f"a user named {name!r} already exists") from None
    return user


def set_password(name: str, password: str) -> None:
    user = _user_named(name)
    if user is None:
        raise AccountError(f"no user named {name!r}")
    _check_password(password)
    user.password_hash = generate_password_hash(password, "scrypt")
    # A new password ends every session opened with the old one.
    db.session.execute(delete(AdminSession).where(AdminSession.user_id == user.id))
    db.session.commit()


def _user_named(name: str) -> AdminUser | None:
    return db.session.execute(select(AdminUser).where(AdminUser.name == name)).scalar_one_or_none()


def check_login(name: str, password: str) -> AdminUser | None:
    """The enabled user with this name and password, else None (same cost either way)."""
    user = _user_named(name[:64]) if name else None
    if user is None or len(password) > MAX_PASSWORD:
        check_password_hash(_DUMMY_HASH, password[:MAX_PASSWORD])
        return None
    if not check_password_hash(user.password_hash, password):
        return None
    return user if user.disabled_at is None else None


def open_session(user: AdminUser, now: datetime, ip: str | None) -> str:
    """A new session for a successful login; returns the id to put in the cookie."""
    token = secrets.token_urlsafe(32)
    db.session.add(
        AdminSession(
            token_hash=_hash(token), user_id=user.id, created_at=now, last_seen_at=now, ip=ip
        )
    )
    user.last_login_at = now
    db.session.commit()
    return token


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    name: str
    role: str
    email: str | None
    locale: str


def session_user(settings: Settings, token: str, now: datetime) -> SignedIn | None:
    """The user of a live session, or None when it ended, idled out or expired."""
    row = db.session.execute(
        select(AdminSession, AdminUser)
        .join(AdminUser, AdminUser.id == AdminSession.user_id)
        .where(AdminSession.token_hash == _hash(token))
    ).first()
    if row is None:
        return None
    session, user = row
    idle = timedelta(minutes=settings.admin_idle_minutes)
    absolute = timedelta(hours=settings.admin_session_hours)
    if (
        user.disabled_at is not None
        or now - session.last_seen_at > idle
        or now - session.created_at > absolute
    ):
        db.session.delete(session)
        db.session.commit()
        return None
    if now - session.last_seen_at > _TOUCH_EVERY:
        session.last_seen_at = now
        db.session.commit()
    return SignedIn(user.id, user.name, user.role, user.email, user.locale)


def close_session(token: str) -> None:
    db.session.execute(delete(AdminSession).where(AdminSession.token_hash == _hash(token)))
    db.session.commit()


def purge_sessions(settings: Settings, now: datetime) -> int:
    """Delete the rows of sessions that timed out (run by the periodic sweep)."""
    result = db.session.execute(
        delete(AdminSession).where(
            or_(
                AdminSession.last_seen_at < now - timedelta(minutes=settings.admin_idle_minutes),
                AdminSession.created_at < now - timedelta(hours=settings.admin_session_hours),
            )
        )
    )
    db.session.commit()
    return rowcount(result)


def record(name: str, action: str, now: datetime, ip: str | None) -> None:
    """An audit event about an admin's own session (`admin.login`, `admin.logout`)."""
    audit(action, actor=f"admin:{name}", now=now, subject=f"user:{name}", ip=ip)
    db.session.commit()


def list_users() -> list[AdminUser]:
    return list(db.session.execute(select(AdminUser).order_by(AdminUser.name)).scalars())
