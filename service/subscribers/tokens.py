"""Signed tokens for links in mails and pages, one salt per purpose.

A token signed for one purpose never verifies for another, and tokens signed
with a key listed in HEBDO_SECRET_KEY_FALLBACKS keep verifying after a rotation.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from service.config import Settings
from service.models import Subscriber


class Purpose(enum.StrEnum):
    CONFIRM = "hebdo.confirm"
    UNSUBSCRIBE = "hebdo.unsubscribe"
    RESUBSCRIBE = "hebdo.resubscribe"
    # The reader's preference page, linked from every digest.
    PREFERENCES = "hebdo.preferences"
    # A change of address, sent to the new address: it names the row and that address.
    ADDRESS = "hebdo.address"
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


# payload.timestamp.signature in URL-safe base64 without padding, as make_token writes it
# (a compressed payload starts with a dot).
_TOKEN_FORM = re.compile(r"\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _one_spelling(token: str) -> bool:
    """Whether `token` is written exactly as make_token writes it.

    itsdangerous decodes the signature leniently: padding, `+` and `/` for `-` and `_`,
    other bits in the last character, non-ASCII characters dropped. A link changed by one
    character could then still verify, as a second spelling of the same token. The payload
    and timestamp are signed as written, so only the signature needs this check.
    """
    if not _TOKEN_FORM.fullmatch(token):
        return False
    signature = token.rpartition(".")[2]
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=") == signature.encode()


def read_token(
    settings: Settings, purpose: Purpose, token: str, *, max_age: int | None = None
) -> list[Any]:
    """Return the payload, or raise BadToken."""
    if len(token) > 512:
        raise BadToken("token too long")
    if not _one_spelling(token):
        raise BadToken("bad signature")
    try:
        payload = _serializer(settings, purpose).loads(token, max_age=max_age)
    except SignatureExpired:
        raise BadToken("expired", expired=True) from None
    except BadSignature:
        raise BadToken("bad signature") from None
    if not isinstance(payload, list):
        raise BadToken("malformed payload")
    return payload


def _token_identity(sub: Subscriber) -> list[Any]:
    return _identity(sub.id, sub.created_at)


def _identity(subscriber_id: int, created_at: datetime) -> list[Any]:
    # The creation time makes a token specific to this row even if an id is reused after erasure.
    return [subscriber_id, int(created_at.timestamp())]


def confirm_token(settings: Settings, sub: Subscriber) -> str:
    return make_token(settings, Purpose.CONFIRM, [*_token_identity(sub), sub.optin_serial])


def unsubscribe_token(settings: Settings, sub: Subscriber) -> str:
    return unsubscribe_token_for(settings, sub.id, sub.created_at)


def unsubscribe_token_for(settings: Settings, subscriber_id: int, created_at: datetime) -> str:
    """The one-click unsubscribe token, from columns alone (the digest sender has no rows)."""
    return make_token(settings, Purpose.UNSUBSCRIBE, _identity(subscriber_id, created_at))


def preferences_token_for(settings: Settings, subscriber_id: int, created_at: datetime) -> str:
    """The preference page's token, from columns alone (as the unsubscribe token): it names
    the reader's row and nothing else, so it lasts as long as the row."""
    return make_token(settings, Purpose.PREFERENCES, _identity(subscriber_id, created_at))


def resubscribe_token(settings: Settings, sub: Subscriber) -> str:
    assert sub.unsubscribed_at is not None
    return make_token(
        settings, Purpose.RESUBSCRIBE, [*_token_identity(sub), _micros(sub.unsubscribed_at)]
    )


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def public_url(settings: Settings, path: str) -> str:
    return f"{settings.base_url}{path}"
