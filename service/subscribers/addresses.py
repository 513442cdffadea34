"""Addresses: normalise and validate what a person typed (email-validator), and suggest a
fix for a mistyped domain of a major mailbox provider.
"""

from __future__ import annotations

import unicodedata
from functools import cache, lru_cache
from typing import Any

from email_validator import (
    EmailNotValidError,
    EmailUndeliverableError,
    caching_resolver,
    validate_email,
)
from flask_babel import force_locale, lazy_gettext

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit, minus the angle brackets
MAJOR_DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "hotmail.com",
    "hotmail.fr",
    "outlook.com",
    "outlook.fr",
    "live.com",
    "live.fr",
    "msn.com",
    "yahoo.com",
    "yahoo.fr",
    "icloud.com",
    "me.com",
    "orange.fr",
    "wanadoo.fr",
    "free.fr",
    "sfr.fr",
    "laposte.net",
    "neuf.fr",
    "bbox.fr",
    "gmx.fr",
    "gmx.com",
    "proton.me",
    "protonmail.com",
    "aol.com",
)


# Why an address was refused, for a person: one text per `InvalidEmail.code`.
REASONS = {
    "empty": lazy_gettext("Please enter your email address."),
    "type": lazy_gettext("The email address must be text."),
    "too_long": lazy_gettext("This email address is too long."),
    "control": lazy_gettext(
        "The email address contains forbidden characters (line break or control character)."
    ),
    "no_at": lazy_gettext("The email address is missing an “@”."),
    "many_at": lazy_gettext("The email address must contain exactly one “@”."),
    "quoted": lazy_gettext("Quoted email addresses are not accepted."),
    "ip_literal": lazy_gettext("An IP address instead of a domain name is not accepted."),
    "local": lazy_gettext("The part before the “@” is not valid."),
    "domain": lazy_gettext("The domain name after the “@” is not valid."),
    "undeliverable": lazy_gettext("This domain does not receive email."),
    "other": lazy_gettext("This email address is not valid."),
}


class InvalidEmail(ValueError):
    """The address was refused; `code` names the problem (a key of `REASONS`)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code
        self.detail = detail

    def message(self, locale: str | None = None) -> str:
        """Why, for a person: in `locale`, or in the current one (a request's) without it."""
        reason = REASONS.get(self.code, REASONS["other"])
        if locale is None:
            return str(reason)
        with force_locale(locale):
            return str(reason)


@cache
def _resolver(timeout: int) -> Any:
    return caching_resolver(timeout=timeout)


def normalise_email(
    raw: object, *, check_deliverability: bool = False, dns_timeout: int = 1
) -> str:
    """The stored form of an address, or InvalidEmail.

    Trimmed, Unicode-normalised by email-validator (internationalised addresses
    are kept in Unicode), then lower-cased as a whole: mailbox providers treat
    local parts case-insensitively, and one subscriber per mailbox matters more
    (limits, suppression, no duplicates) than the rare case-sensitive server.
    """
    if not isinstance(raw, str):
        raise InvalidEmail("type")
    if not check_deliverability:
        return _normalised(raw)
    return _normalise(raw, check_deliverability=True, dns_timeout=dns_timeout)


@lru_cache(maxsize=4096)
def _normalised(raw: str) -> str:
    """Syntax-only normalisation, remembered: a sign-up asks it three times (the
    per-address rate limit's key, the view, subscribe()), at ≈ 0.08 ms each. Only
    answers are cached; an invalid address raises every time."""
    return _normalise(raw, check_deliverability=False, dns_timeout=1)


def _normalise(raw: str, *, check_deliverability: bool, dns_timeout: int) -> str:
    email = raw.strip()
    if not email:
        raise InvalidEmail("empty")
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidEmail("too_long")
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in email):
        raise InvalidEmail("control")
    if "@" not in email:
        raise InvalidEmail("no_at")
    if email.startswith('"'):
        raise InvalidEmail("quoted")
    if email.count("@") > 1:
        raise InvalidEmail("many_at")
    if email.endswith("]") or "@[" in email:
        raise InvalidEmail("ip_literal")
    if "=?" in email:
        # The opening of an RFC 2047 encoded-word: atext, so valid in a local part, but
        # header parsers and mail clients decode it even there, and read
        # `=?utf-8?q?victim=40evil.example?=@exemple.fr` in a To header as another
        # address ("splitting the email atom"). No real mailbox needs one.
        raise InvalidEmail("local")
    try:
        info = validate_email(
            email,
            check_deliverability=check_deliverability,
            dns_resolver=_resolver(dns_timeout) if check_deliverability else None,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailUndeliverableError as exc:
        raise InvalidEmail("undeliverable", str(exc)) from None
    except EmailNotValidError as exc:
        raise InvalidEmail(_faulty_part(email), str(exc)) from None
    normalised = info.normalized.lower()
    if len(normalised) > MAX_EMAIL_LENGTH:
        raise InvalidEmail("too_long")
    return normalised


def _faulty_part(email: str) -> str:
    """'local' or 'domain': which side of the @ made validation fail."""
    local = email.rpartition("@")[0]
    try:
        validate_email(f"{local}@example.com", check_deliverability=False, allow_quoted_local=False)
    except EmailNotValidError:
        return "local"
    return "domain"


def _osa_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: typos are mostly one slip or one swap."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def suggest_fix(email: str) -> str | None:
    """`user@gmail.com` for `user@gmial.com`: a likely typo of a major mail domain, or None."""
    local, _, domain = email.rpartition("@")
    fixed = _domain_fix(domain)
    return f"{local}@{fixed}" if fixed else None


@lru_cache(maxsize=8192)
def _domain_fix(domain: str) -> str | None:
    """The major domain `domain` is a typo of. Cached: a site's readers share a few hundred
    domains, and comparing one against every major domain costs ≈ 1.5 ms in Python."""
    if domain in MAJOR_DOMAINS:
        return None
    best = min(MAJOR_DOMAINS, key=lambda d: (_osa_distance(domain, d), d))
    distance = _osa_distance(domain, best)
    return best if 0 < distance <= (1 if len(domain) < 8 else 2) else None
