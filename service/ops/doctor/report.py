"""What a doctor check says: its status, the message, the fix; and how results are
printed and kept free of secrets.
"""

from __future__ import annotations

import base64
import contextlib
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from service.config import Settings

# Seconds any single network operation (connect, one reply, one DNS query) may take.
TIMEOUT = 3.0
# Hard deadline of one whole check: a check still running after this is reported as FAIL.
CHECK_BUDGET = 10.0


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class CheckResult:
    """One verdict: `message` says what was found, `fix` what to do (empty when nothing)."""

    name: str
    status: Status
    message: str
    fix: str = ""


def failed(results: Iterable[CheckResult]) -> bool:
    """True when any check failed: `hebdo doctor` then exits 1 (warnings and skips do not)."""
    return any(r.status is Status.FAIL for r in results)


# --- Secrets ------------------------------------------------------------------------


_SECRET_SETTINGS = ("HEBDO_SMTP_PASSWORD", "HEBDO_SECRET_KEY", "HEBDO_CAPTCHA_SECRET")
_URL_SETTINGS = ("HEBDO_DATABASE_URL", "HEBDO_BROKER_URL", "HEBDO_RATELIMIT_STORAGE")


def _secrets(environ: Mapping[str, str], settings: Settings | None) -> list[str]:
    """Every secret value the output must never show, and its base64 form (AUTH LOGIN
    sends the password base64-encoded, and a server may quote what it received)."""
    found = [environ.get(name, "").strip() for name in _SECRET_SETTINGS]
    found += environ.get("HEBDO_SECRET_KEY_FALLBACKS", "").split(",")
    for name in _URL_SETTINGS:
        with contextlib.suppress(ValueError):
            found.append(urlsplit(environ.get(name, "")).password or "")
    if settings is not None:
        # In development the key may come from the data folder rather than the environment.
        found += [settings.secret_key, settings.smtp_password, settings.captcha_secret]
    found = [s.strip() for s in found if len(s.strip()) >= 4]
    found += [base64.b64encode(s.encode()).decode() for s in found]
    # Longest first, so a secret that contains another is hidden whole.
    return sorted(set(found), key=len, reverse=True)


def redact(result: CheckResult, secrets: Iterable[str]) -> CheckResult:
    """`result` with every occurrence of a secret replaced by `***`."""
    message, fix = result.message, result.fix
    for secret in secrets:
        message = message.replace(secret, "***")
        fix = fix.replace(secret, "***")
    return replace(result, message=message, fix=fix)


def safe_url(url: str) -> str:
    """`url` with its password shown as `***` (database and broker URLs carry one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _first_line(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's background links and SQL echo."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def format_results(results: Iterable[CheckResult]) -> str:
    """The report `hebdo doctor` prints: one line per verdict, its fix indented below."""
    lines = []
    for r in results:
        lines.append(f"{r.status.value:<8}{r.name:<15}{r.message}")
        if r.fix and r.status is not Status.OK:
            lines.append(f"{'':<23}fix: {r.fix}")
    return "\n".join(lines)
