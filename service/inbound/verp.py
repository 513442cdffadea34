"""Addresses that say what a mail coming back is about: VERP bounce addresses and the
per-reader unsubscribe mailto.

Each digest and confirmation mail goes out with the envelope sender
`bounces+<token>@<domain of HEBDO_BOUNCE_ADDRESS>` (VERP): a delivery status notification
goes to the envelope sender, so the bounce names the very delivery (issue and subscriber)
or confirmation mail it is about, whatever the relay did to the headers. And every mail's
`List-Unsubscribe` offers `mailto:unsubscribe+<token>@…` beside its https link, naming the
reader: Gmail and Yahoo require every advertised channel to work.

Tokens are short (a local part holds 64 characters at most), lowercase (some MTAs fold the
case of local parts), and signed: an HMAC-SHA256 under the secret key, truncated to 80 bits,
with a purpose of its own, so that nobody who can mail the bounce address can make a bounce
or an unsubscription name somebody. Tokens signed with a key in HEBDO_SECRET_KEY_FALLBACKS
keep verifying after a rotation.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from service.config import Settings

BOUNCE = "hebdo.verp.bounce"
UNSUBSCRIBE = "hebdo.verp.unsubscribe"
_MAC_BYTES = 10
# d<issue>.<subscriber>.<mac> | c<subscriber>.<opt-in serial>.<mac>; ids in base 36.
_BOUNCE_TOKEN = re.compile(r"([dc])([0-9a-z]{1,13})\.([0-9a-z]{1,13})\.([a-z2-7]{16})")
_UNSUBSCRIBE_TOKEN = re.compile(r"([0-9a-z]{1,13})\.([a-z2-7]{16})")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("negative id")
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
        if not number:
            return out


@lru_cache(maxsize=8)
def _keyed(key: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed once per signing key; each MAC copies it (two per digest sent)."""
    return hmac.new(key.encode(), digestmod="sha256")


def _mac(key: str, purpose: str, payload: str) -> str:
    mac = _keyed(key).copy()
    mac.update(f"{purpose}|{payload}".encode())
    return base64.b32encode(mac.digest()[:_MAC_BYTES]).decode().lower()


def _signed(settings: Settings, purpose: str, payload: str, mac: str) -> bool:
    return any(
        hmac.compare_digest(_mac(key, purpose, payload), mac) for key in settings.signing_keys
    )


def _split(address: str) -> tuple[str, str, str] | None:
    """(local part before `+`, the token after it, domain), lower-cased; None for an address
    without a `+` token."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or "+" not in local:
        return None
    base, _, token = local.partition("+")
    return base.lower(), token.lower(), domain.lower()


@dataclass(frozen=True)
class BounceTarget:
    """What a VERP address names: one delivery of an issue, or one confirmation mail."""

    kind: str  # "delivery" or "confirmation"
    subscriber_id: int
    issue_id: int | None = None
    optin_serial: int | None = None


def bounce_address(
    settings: Settings,
    subscriber_id: int | None,
    *,
    issue_id: int | None = None,
    optin_serial: int | None = None,
) -> str | None:
    """The envelope sender of one mail; None without HEBDO_BOUNCE_ADDRESS (the mail then
    goes out from HEBDO_MAIL_FROM's address, as before). Without a subscriber (a test mail
    to any address) the bounce address itself: what comes back names nobody."""
    if not settings.bounce_address:
        return None
    if subscriber_id is None:
        return settings.bounce_address
    if issue_id is not None:
        payload = f"d{_base36(issue_id)}.{_base36(subscriber_id)}"
    else:
        payload = f"c{_base36(subscriber_id)}.{_base36(optin_serial or 0)}"
    local, _, domain = settings.bounce_address.rpartition("@")
    token = f"{payload}.{_mac(settings.secret_key, BOUNCE, payload)}"
    return f"{local}+{token}@{domain}"


def read_bounce_address(settings: Settings, address: str) -> BounceTarget | None:
    """The delivery or confirmation a VERP address names, when it is ours and its signature
    holds; None otherwise (another address, a forged or damaged token)."""
    if not settings.bounce_address:
        return None
    parts = _split(address)
    local, _, domain = settings.bounce_address.lower().rpartition("@")
    if parts is None or parts[0] != local or parts[2] != domain:
        return None
    found = _BOUNCE_TOKEN.fullmatch(parts[1])
    if not found:
        return None
    kind, first, second, mac = found.groups()
    payload = f"{kind}{first}.{second}"
    if not _signed(settings, BOUNCE, payload, mac):
        return None
    if kind == "d":
        return BounceTarget("delivery", int(second, 36), issue_id=int(first, 36))
    return BounceTarget("confirmation", int(first, 36), optin_serial=int(second, 36))


def _identity(subscriber_id: int, created_at: datetime) -> str:
    # The row's creation time too: an id reused after an erasure names nobody.
    return f"{_base36(subscriber_id)}.{int(created_at.timestamp() * 1_000_000)}"


def unsubscribe_address(settings: Settings, subscriber_id: int, created_at: datetime) -> str:
    """The reader's own unsubscribe mailto: `unsubscribe+<token>@…`."""
    local, _, domain = settings.unsubscribe_mailto.rpartition("@")
    mac = _mac(settings.secret_key, UNSUBSCRIBE, _identity(subscriber_id, created_at))
    return f"{local}+{_base36(subscriber_id)}.{mac}@{domain}"


def unsubscribe_subscriber_id(settings: Settings, address: str) -> int | None:
    """The subscriber id an unsubscribe mailto names, before its signature is checked
    (which needs the subscriber's creation time: see `unsubscribe_signed`)."""
    parts = _split(address)
    local, _, domain = settings.unsubscribe_mailto.lower().rpartition("@")
    if parts is None or parts[0] != local or parts[2] != domain:
        return None
    found = _UNSUBSCRIBE_TOKEN.fullmatch(parts[1])
    return int(found.group(1), 36) if found else None


def unsubscribe_signed(
    settings: Settings, address: str, subscriber_id: int, created_at: datetime
) -> bool:
    """Whether the mailto's signature is this subscriber's."""
    parts = _split(address)
    found = _UNSUBSCRIBE_TOKEN.fullmatch(parts[1]) if parts else None
    if not found or int(found.group(1), 36) != subscriber_id:
        return False
    return _signed(settings, UNSUBSCRIBE, _identity(subscriber_id, created_at), found.group(2))
