"""Signed tokens for links in mails and pages, one salt per purpose.

A token signed for one purpose never verifies for another, and tokens signed
with a key listed in HEBDO_SECRET_KEY_FALLBACKS keep verifying after a rotation.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .config import Settings


class Purpose(enum.StrEnum):
    CONFIRM = "hebdo.confirm"
    UNSUBSCRIBE = "hebdo.unsubscribe"
    RESUBSCRIBE = "hebdo.resubscribe"
    # The sign-up form's timestamp (minimum fill time), not a link.
    FORM = "hebdo.form"


class BadToken(ValueError):
    """The link is tampered with, for another purpose, expired (`expired=True`) or stale."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


def _serializer(settings: Settings, purpose: Purpose) -> URLSafeTimedSerializer:
    return _cached_serializer(tuple(settings.signing_keys), purpose)


@lru_cache(maxsize=32)
def _cached_serializer(keys: tuple[str, ...], purpose: Purpose) -> URLSafeTimedSerializer:
    # A list of keys: itsdangerous signs with the last and verifies with all.
    # Cached: a digest signs one unsubscribe link per subscriber.
    return URLSafeTimedSerializer(list(keys), salt=purpose.value)


def make_token(settings: Settings, purpose: Purpose, payload: list[Any]) -> str:
    token = _serializer(settings, purpose).dumps(payload)
    assert isinstance(token, str)
    return token


def read_token(
    settings: Settings, purpose: Purpose, token: str, *, max_age: int | None = None
) -> list[Any]:
    """Return the payload, or raise BadToken."""
    if len(token) > 512:
        raise BadToken("token too long")
    try:
        payload = _serializer(settings, purpose).loads(token, max_age=max_age)
    except SignatureExpired:
        raise BadToken("expired", expired=True) from None
    except BadSignature:
        raise BadToken("bad signature") from None
    if not isinstance(payload, list):
        raise BadToken("malformed payload")
    return payload
