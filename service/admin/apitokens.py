"""Bearer tokens for machine clients: created once, shown once, stored as SHA-256.

Tokens are 256 random bits, so a plain SHA-256 (not a slow password hash) is
enough to make a stolen database useless, and lets a request be authenticated
with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.extensions import db
from service.models import ApiToken

# publisher: push articles; feedback: post complaint reports (a relay's webhook); editor and
# admin: the admin API as in the admin area (admin may also post reports).
ROLES = ("publisher", "feedback", "editor", "admin")
PREFIX = "hebdo_"
# Writing the last-use time on every request would make each API call a write.
_TOUCH_EVERY = timedelta(minutes=1)


class TokenError(ValueError):
    """A token command cannot be carried out; the message says why."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(name: str, role: str, now: datetime) -> str:
    """Store a new token; return it in clear (the only time it exists so)."""
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 64:
        raise TokenError("name must be 1 to 64 characters")
    token = PREFIX + secrets.token_urlsafe(32)
    db.session.add(ApiToken(name=name, token_hash=_hash(token), role=role, created_at=now))
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise TokenError(f"a token named {name!r} already exists") from None
    return token


def revoke_token(name: str, now: datetime) -> bool:
    row = db.session.execute(select(ApiToken).where(ApiToken.name == name)).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now
    db.session.commit()
    return True


def authenticate(token: str, now: datetime) -> ApiToken | None:
    """The live (not revoked) token, or None. The caller checks its role."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    row = db.session.execute(
        select(ApiToken).where(ApiToken.token_hash == _hash(token))
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        row.last_used_at = now
        db.session.commit()
    return row


def list_tokens() -> list[ApiToken]:
    return list(db.session.execute(select(ApiToken).order_by(ApiToken.name)).scalars())
