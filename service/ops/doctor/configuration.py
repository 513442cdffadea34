"""Doctor check 1: the settings load, and what in them works but should not be
left so in production.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from service.config import ConfigError, Settings, load_settings
from service.ops.doctor.report import CheckResult, Status

# The example identity shipped as HEBDO_SENDER_IDENTITY's default: no one's real address.
_EXAMPLE_IDENTITY = "L'Hebdo, 1 rue de l'Exemple, 75000 Paris, France"
# Secret keys seen in examples and tests; a key containing one of these is not a secret.
_PLACEHOLDER_KEY_WORDS = ("change", "not-for-production", "example", "secret-key", "dev-key")
# RFC 2606 / 6761 names: no public DNS, no receiving server accepts mail from them.
_RESERVED_SUFFIXES = (".localhost", ".test", ".example", ".invalid", ".local")
_RESERVED_DOMAINS = ("localhost", "example.com", "example.net", "example.org")


# --- 1. Configuration -----------------------------------------------------------------


def check_configuration(environ: Mapping[str, str]) -> tuple[Settings | None, list[CheckResult]]:
    """Load the HEBDO_* settings, then look for what loads but will hurt in production.

    config.py already refuses what can never work (a production without a secret key
    or an SMTP host, malformed values, unknown names); this only adds the pitfalls
    that are legal but wrong, so nothing here repeats a refusal.
    """
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        fix = "correct the setting named above (`hebdo config --reference` lists every one)"
        return None, [CheckResult("configuration", Status.FAIL, str(exc), fix)]
    warnings = configuration_warnings(settings)
    if warnings:
        return settings, warnings
    message = f"settings load (HEBDO_ENV={settings.env})"
    if settings.env == "production":
        message += "; no known production pitfall"
    return settings, [CheckResult("configuration", Status.OK, message)]


def configuration_warnings(settings: Settings) -> list[CheckResult]:
    """Settings that load but are wrong for a deployment (mostly: for production)."""
    production = settings.env == "production"
    found: list[tuple[str, str]] = []
    if production and settings.base_url.startswith("http://"):
        found.append(
            (
                f"HEBDO_BASE_URL is {settings.base_url}: every confirmation and unsubscribe "
                "link travels unencrypted, and the admin session cookie is not marked Secure",
                "serve hebdo over HTTPS and set HEBDO_BASE_URL=https://…",
            )
        )
    if production and _placeholder_key(settings.secret_key):
        found.append(
            (
                "HEBDO_SECRET_KEY looks like a development or example key (it says "
                "so): whoever guesses it can forge confirmation and unsubscribe links",
                "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
                " and move the old one to HEBDO_SECRET_KEY_FALLBACKS, so links already sent "
                "keep working",
            )
        )
    host = settings.smtp_host
    if host and settings.smtp_tls == "none" and not _loopback(host):
        if settings.smtp_user:
            found.append(
                (
                    f"HEBDO_SMTP_TLS=none towards {host}: the SMTP password and every mail "
                    "cross the network unencrypted",
                    "set HEBDO_SMTP_TLS=starttls (usually port 587) or ssl (port 465)",
                )
            )
        elif production:
            found.append(
                (
                    f"HEBDO_SMTP_TLS=none towards {host}: every mail (and its readers' "
                    "addresses) crosses the network unencrypted",
                    "set HEBDO_SMTP_TLS=starttls (usually port 587) or ssl (port 465) if the "
                    "relay offers it",
                )
            )
    if host and settings.smtp_port == 465 and settings.smtp_tls != "ssl":
        found.append(
            (
                f"HEBDO_SMTP_PORT=465 with HEBDO_SMTP_TLS={settings.smtp_tls}: port 465 expects "
                "TLS from the first byte, so the connection waits for a greeting until it "
                "times out",
                "set HEBDO_SMTP_TLS=ssl (or use port 587 with starttls)",
            )
        )
    if host and settings.smtp_port in (25, 587) and settings.smtp_tls == "ssl":
        found.append(
            (
                f"HEBDO_SMTP_TLS=ssl on port {settings.smtp_port}, which starts in plain text: "
                "the TLS handshake fails",
                "set HEBDO_SMTP_TLS=starttls (or use port 465 with ssl)",
            )
        )
    if production and settings.sender_identity.strip() in ("", _EXAMPLE_IDENTITY):
        found.append(
            (
                "HEBDO_SENDER_IDENTITY is "
                + ("empty" if not settings.sender_identity.strip() else "the shipped example")
                + ": anti-spam rules (CAN-SPAM, EU law) ask every newsletter to name its "
                "sender with a real postal address, printed in each digest's footer",
                "set HEBDO_SENDER_IDENTITY to your organisation's name and postal address",
            )
        )
    if production and _reserved(settings.mail_domain):
        found.append(
            (
                f"HEBDO_MAIL_FROM uses {settings.mail_domain}, a reserved name that no "
                "receiving server accepts mail from",
                "set HEBDO_MAIL_FROM to an address at a domain you own, e.g. "
                "'L'Hebdo <newsletter@news.your-domain.fr>'",
            )
        )
    if production and settings.ratelimit_storage == "memory://" and settings.web_workers > 1:
        found.append(
            (
                f"rate limits are kept in memory by each of the {settings.web_workers} web "
                f"workers: every sign-up and login limit is {settings.web_workers} times looser",
                "set HEBDO_RATELIMIT_STORAGE=redis://… (a Redis broker is used by default)",
            )
        )
    found += _journal_warnings(settings)
    return [CheckResult("configuration", Status.WARN, m, f) for m, f in found]


def _journal_warnings(settings: Settings) -> list[tuple[str, str]]:
    """The send journal set so that it cannot keep its promise (docs/delivery.md)."""
    batch = settings.send_batch
    if settings.send_journal == "file" and not settings.broker_url.startswith("filesystem://"):
        # A worker on one machine never reads another machine's files: the sweep that takes
        # back a dead worker's rows on machine B sends again what it had sent on machine A.
        return [
            (
                f"HEBDO_SEND_JOURNAL=file with a network broker: each machine's workers note "
                f"what they sent in their own data folder, so rows taken back from a worker "
                f"that died on another machine are sent again (up to {batch} per process)",
                "set HEBDO_SEND_JOURNAL=auto (the broker's Redis) or a redis://… URL that "
                "every worker reaches",
            )
        ]
    if settings.send_journal == "off" and settings.env == "production":
        return [
            (
                f"HEBDO_SEND_JOURNAL=off: a worker killed mid-send takes with it which of its "
                f"messages had gone, and they are sent again (up to {batch} per process)",
                "set HEBDO_SEND_JOURNAL=auto",
            )
        ]
    return []


def _placeholder_key(key: str) -> bool:
    # Shorter than 32 characters, or made only of placeholder words, config.py refuses in
    # production; this catches the longer keys that still say what they are.
    lowered = key.lower()
    return any(word in lowered for word in _PLACEHOLDER_KEY_WORDS)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reserved(domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return (
        domain in _RESERVED_DOMAINS
        or domain.endswith(_RESERVED_SUFFIXES)
        or any(domain.endswith("." + d) for d in _RESERVED_DOMAINS)
    )
