"""Bearer tokens for machine clients: created once, shown once, stored as SHA-256.

Tokens are 256 random bits, so a plain SHA-256 (not a slow password hash) is
enough to make a stolen database useless, and lets a request be authenticated
with one indexed lookup. A token may be given a lifetime: once it is over, the token is
refused as a revoked one is (a token copied into a forgotten script stops working).
"""

from __future__ import annotations

import hashlib
import re
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


_LIFETIME = re.compile(r"([1-9][0-9]{0,4})([hdw])")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}
# Beyond ten years, "never" says it better (and no date overflows).
_LONGEST = timedelta(days=3660)


def parse_lifetime(text: str) -> timedelta:
    """`90d`, `12w`, `36h` as a timedelta; TokenError for anything else."""
    found = _LIFETIME.fullmatch(text.strip().lower())
    if found is None:
        raise TokenError(f"a lifetime is a number and h, d or w (e.g. 90d), got {text!r}")
    lifetime = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    if lifetime > _LONGEST:
        raise TokenError(
            "a lifetime is at most 3660 days; leave it out for a token that never expires"
        )
    return lifetime


def create_token(
    name: str, role: str, now: datetime, *, expires_in: timedelta | None = None
) -> str:
    """Store a new token, valid for `expires_in` (None: until revoked); return it in clear
    (the only time it exists so)."""
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 64:
        raise TokenError("name must be 1 to 64 characters")
    token = PREFIX + secrets.token_urlsafe(32)
    expires_at = now + expires_in if expires_in is not None else None
    db.session.add(
        ApiToken(
            name=name, token_hash=_hash(token), role=role, created_at=now, expires_at=expires_at
        )
    )
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
    """The live (neither revoked nor expired) token, or None. The caller checks its role."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    row = db.session.execute(
        select(ApiToken).where(ApiToken.token_hash == _hash(token))
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and now >= row.expires_at:
        return None
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        row.last_used_at = now
        db.session.commit()
    return row


def list_tokens() -> list[ApiToken]:
    return list(db.session.execute(select(ApiToken).order_by(ApiToken.name)).scalars())
