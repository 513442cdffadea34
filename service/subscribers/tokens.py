"""Signed tokens for links in mails and pages, one salt per purpose.

A token signed for one purpose never verifies for another, and tokens signed
with a key listed in HEBDO_SECRET_KEY_FALLBACKS keep verifying after a rotation.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import json
import re
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

from itsdangerous import (
    BadSignature,
    Serializer,
    SignatureExpired,
    Signer,
    TimestampSigner,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode, want_bytes

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


@lru_cache(maxsize=64)
def _derived_key(signer: type[TimestampSigner], secret_key: bytes, salt: bytes) -> bytes:
    return TimestampSigner.derive_key(signer(secret_key, salt=salt), secret_key)


class _Signer(TimestampSigner):
    """itsdangerous's TimestampSigner with its key derived once per key and salt and its
    HMAC in one C call (hmac.digest): the same tokens byte for byte, at a fraction of the
    cost. A digest signs two links per reader, and the stock signer derived the key and
    built an HMAC object in Python for each; that was the largest cost of a message's build."""

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)
        return _derived_key(TimestampSigner, key, self.salt)

    def get_signature(self, value: str | bytes) -> bytes:
        return base64_encode(hmac.digest(self.derive_key(), want_bytes(value), "sha1"))


# Payloads shorter than this are never compressed (see _Serializer.dump_payload).
COMPRESS_FROM = 64


class _Serializer(URLSafeTimedSerializer):
    """Signs with one _Signer made once, instead of a new signer per token, and does not
    try to compress a short payload: zlib sets up ~256 KB of state per call, 13 µs to learn
    that `[id, timestamp]` does not shrink. Such a token is the uncompressed form
    itsdangerous also writes whenever compression does not pay, and reads either way."""

    default_signer = _Signer

    def __init__(self, keys: list[str], salt: str) -> None:
        super().__init__(keys, salt=salt)
        self._signer = super().make_signer(self.salt)

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is None or want_bytes(salt) == self.salt:
            return self._signer
        return super().make_signer(salt)

    def dump_payload(self, obj: Any) -> bytes:
        compact = Serializer.dump_payload(self, obj)  # the JSON, not yet base64
        if len(compact) < COMPRESS_FROM:
            return base64_encode(compact)
        return super().dump_payload(obj)


def _serializer(settings: Settings, purpose: Purpose) -> URLSafeTimedSerializer:
    return _cached_serializer(tuple(settings.signing_keys), purpose)


@lru_cache(maxsize=32)
def _cached_serializer(keys: tuple[str, ...], purpose: Purpose) -> URLSafeTimedSerializer:
    # A list of keys: itsdangerous signs with the last and verifies with all.
    # Cached: a digest signs one unsubscribe link per subscriber.
    return _Serializer(list(keys), salt=purpose.value)


class _Minter:
    """Writes a short payload's token straight in itsdangerous's URL-safe timed format
    (`base64(json).base64(timestamp).base64(hmac-sha1)`, no padding), byte for byte what
    _Serializer.dumps writes, without its layers of calls: a digest mints two tokens per
    reader, and through the serializer they were a fifth of a message's CPU. Longer
    payloads (compressed when that pays) go through the serializer."""

    __slots__ = ("_mac", "_second", "_serializer", "_stamp")

    def __init__(self, keys: tuple[str, ...], purpose: Purpose) -> None:
        self._serializer = _cached_serializer(keys, purpose)
        # itsdangerous signs with the last key (see _cached_serializer).
        key = _derived_key(TimestampSigner, keys[-1].encode(), purpose.value.encode())
        # Keyed once; each token copies it (half the cost of hmac.digest, which keys anew).
        self._mac = hmac.new(key, digestmod="sha1")
        self._second = -1
        self._stamp = b""

    def __call__(self, payload: list[Any]) -> str:
        if all(type(item) is int for item in payload):
            # A link's `[id, timestamp]`: the JSON json.dumps writes, without its encoder.
            compact = f"[{','.join(map(str, payload))}]".encode()
        else:
            compact = json.dumps(payload, separators=(",", ":")).encode()
        if len(compact) >= COMPRESS_FROM:
            token = self._serializer.dumps(payload)
            assert isinstance(token, str)
            return token
        now = int(time.time())
        if now != self._second:
            self._second = now
            # itsdangerous's int_to_bytes: 8 bytes big-endian, leading zeros dropped.
            self._stamp = b"." + _b64(now.to_bytes(8, "big").lstrip(b"\x00"))
        value = _b64(compact) + self._stamp
        mac = self._mac.copy()
        mac.update(value)
        return (value + b"." + _b64(mac.digest())).decode("ascii")


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@lru_cache(maxsize=32)
def _minter(keys: tuple[str, ...], purpose: Purpose) -> _Minter:
    return _Minter(keys, purpose)


def make_token(settings: Settings, purpose: Purpose, payload: list[Any]) -> str:
    return _minter(tuple(settings.signing_keys), purpose)(payload)


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
