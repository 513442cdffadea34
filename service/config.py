"""Every HEBDO_* setting: its default, its meaning, and how it is parsed.

`SETTINGS` is the one list the README table, docker-compose.yml and the tests
are checked against, so a setting that is read here is documented there.
Configuration is read when the app is created, never at import time.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import time
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from limits import parse_many


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "HEBDO_ENV",
        "development",
        "`development`, `production` or `test`. Production refuses to start without `HEBDO_SECRET_KEY` and hides `/dev/mailbox`.",
    ),
    Setting(
        "HEBDO_DATA_DIR",
        "./var",
        "Folder of the embedded default: SQLite database, broker files, beat schedule, captured mail, generated development secret key.",
    ),
    Setting(
        "HEBDO_DATABASE_URL",
        "sqlite:///<HEBDO_DATA_DIR>/hebdo.sqlite3",
        "SQLAlchemy URL, e.g. `postgresql+psycopg://hebdo@db/hebdo`.",
    ),
    Setting(
        "HEBDO_BROKER_URL",
        "filesystem://",
        "Celery broker, e.g. `redis://127.0.0.1:6379/0`. The default is kombu's file-system transport under `<HEBDO_DATA_DIR>/broker` (single machine only).",
    ),
    Setting(
        "HEBDO_SMTP_HOST",
        "",
        "SMTP relay host. Empty: every outgoing mail is captured as an `.eml` file under `<HEBDO_DATA_DIR>/mail` and shown at `/dev/mailbox`.",
    ),
    Setting("HEBDO_SMTP_PORT", "25", "SMTP relay port (587 for STARTTLS submission, 465 for SSL)."),
    Setting("HEBDO_SMTP_USER", "", "SMTP login; empty for no authentication."),
    Setting("HEBDO_SMTP_PASSWORD", "", "SMTP password."),
    Setting("HEBDO_SMTP_TLS", "none", "`none`, `starttls` or `ssl`."),
    Setting(
        "HEBDO_SMTP_TIMEOUT",
        "30",
        "Seconds to wait on any SMTP connect or reply before treating it as a transient failure.",
    ),
    Setting(
        "HEBDO_MAIL_FROM",
        "L'Hebdo <newsletter@hebdo.localhost>",
        "From address. Its domain is used for Message-ID, List-Id and the unsubscribe mailto.",
    ),
    Setting(
        "HEBDO_BASE_URL",
        "http://127.0.0.1:8000",
        "Public URL of this service, used in every link of every mail.",
    ),
    Setting(
        "HEBDO_SECRET_KEY",
        "",
        "Signs tokens. Required in production; in development a random key is generated once into `<HEBDO_DATA_DIR>/secret_key`.",
    ),
    Setting(
        "HEBDO_SECRET_KEY_FALLBACKS",
        "",
        "Comma-separated former secret keys: links signed with them keep working after a rotation.",
    ),
    Setting("HEBDO_SITE_NAME", "L'Hebdo", "Name of the newsletter shown in mails and pages."),
    Setting(
        "HEBDO_LIST_ID", "", "List-Id identifier; default `hebdo.<domain of HEBDO_MAIL_FROM>`."
    ),
    Setting(
        "HEBDO_UNSUBSCRIBE_MAILTO",
        "",
        "Address of the mailto in List-Unsubscribe; default `unsubscribe@<domain of HEBDO_MAIL_FROM>`.",
    ),
    Setting(
        "HEBDO_CHECK_DELIVERABILITY",
        "0",
        "`1` to check that the address's domain has MX/A records at sign-up (DNS answers are cached).",
    ),
    Setting(
        "HEBDO_DNS_TIMEOUT",
        "1",
        "Whole seconds a deliverability DNS lookup may take; when it times out the address is accepted.",
    ),
    Setting("HEBDO_CONFIRM_TTL_HOURS", "48", "Hours a confirmation link stays valid."),
    Setting(
        "HEBDO_CONFIRM_RESEND_HOURS",
        "24",
        "At most one confirmation mail per address in this many hours, however often it is posted.",
    ),
    Setting(
        "HEBDO_CONSENT_VERSION",
        "form-2026-11",
        "Version of the consent text shown by the form, recorded with each sign-up unless the post names another.",
    ),
    Setting(
        "HEBDO_SWEEP_SECONDS",
        "60",
        "Beat interval of the sweep that sends confirmation mails committed but never sent (broker down, worker killed).",
    ),
    Setting(
        "HEBDO_CLAIM_TIMEOUT_SECONDS",
        "300",
        "After this long a claimed but unfinished mail is considered abandoned and sent again by the sweep. At least 6 × `HEBDO_SMTP_TIMEOUT`.",
    ),
    Setting(
        "HEBDO_CONSENT_TEXT",
        "",
        "Consent line shown with an unticked box in the sign-up form (French); empty: no box. Sign-ups must tick it; its version is HEBDO_CONSENT_VERSION.",
    ),
    Setting(
        "HEBDO_CONSENT_TEXT_EN",
        "",
        "The same consent line in English (default: the French one).",
    ),
    Setting(
        "HEBDO_ALLOWED_ORIGINS",
        "",
        "Comma-separated origins (`https://www.site.fr`) whose pages may embed the form: CORS for them only, and only their page URLs are recorded as sources. This service's own origin is always one.",
    ),
    Setting(
        "HEBDO_SUBSCRIBE_RATE_LIMIT",
        "30/minute;500/day",
        "Sign-up posts allowed per client IP (Flask-Limiter notation). Stops a bot's burst, not a newsroom behind one address.",
    ),
    Setting(
        "HEBDO_SUBSCRIBE_NETWORK_RATE_LIMIT",
        "300/hour",
        "Sign-up posts allowed per /24 (IPv4) or /64 (IPv6) network.",
    ),
    Setting(
        "HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT",
        "3/hour;10/day",
        "Sign-up posts allowed per target address, from anywhere (subscription bombing); keyed by an HMAC, never the address.",
    ),
    Setting(
        "HEBDO_FORM_MIN_SECONDS",
        "2",
        "A form posted sooner than this after it was shown is a bot's: answered like any other, nothing stored.",
    ),
    Setting(
        "HEBDO_CAPTCHA_PROVIDER",
        "none",
        "`none`, `turnstile`, `hcaptcha` or `friendlycaptcha`: server-side CAPTCHA verification, asked for only above HEBDO_CAPTCHA_THRESHOLD.",
    ),
    Setting("HEBDO_CAPTCHA_SITE_KEY", "", "The CAPTCHA provider's public site key."),
    Setting(
        "HEBDO_CAPTCHA_SECRET", "", "The CAPTCHA provider's secret key (server-side verification)."
    ),
    Setting(
        "HEBDO_CAPTCHA_THRESHOLD",
        "60",
        "Sign-ups per minute, site-wide, above which the form asks for a CAPTCHA (with a provider set); 0: always.",
    ),
    Setting(
        "HEBDO_TRUSTED_PROXIES",
        "0",
        "Number of reverse proxies in front of the web app whose X-Forwarded-For/-Proto are trusted.",
    ),
    Setting("HEBDO_MAX_REQUEST_BYTES", "65536", "Largest request body accepted; larger gets 413."),
    Setting(
        "HEBDO_ADMIN_MAX_REQUEST_BYTES",
        "33554432",
        "Largest request body the admin area and admin API accept (CSV imports, pasted lists).",
    ),
    Setting(
        "HEBDO_FEEDS",
        "",
        "Comma-separated RSS/Atom URLs or local file paths to ingest. `sample` is the bundled French sample feed, used when this is empty outside production.",
    ),
    Setting(
        "HEBDO_FEED_INTERVAL_MINUTES", "60", "Minutes between two automatic fetches of the feeds."
    ),
    Setting("HEBDO_FEED_TIMEOUT", "10", "Seconds a feed may take to answer and download in full."),
    Setting(
        "HEBDO_FEED_MAX_BYTES", "5000000", "Largest feed document read; a bigger one is refused."
    ),
    Setting(
        "HEBDO_SEND_SCHEDULE",
        "mon 08:00",
        "Day (`mon` … `sun`, or in full) and 24 h local time of the weekly send, e.g. `mon 08:00` or `friday 17:30`.",
    ),
    Setting(
        "HEBDO_TIMEZONE",
        "Europe/Paris",
        "Time zone of `HEBDO_SEND_SCHEDULE` (IANA name); daylight-saving changes are followed.",
    ),
    Setting(
        "HEBDO_REVIEW",
        "0",
        "`1`: each issue is planned `HEBDO_REVIEW_LEAD_HOURS` ahead as a draft and goes out only once approved.",
    ),
    Setting(
        "HEBDO_REVIEW_LEAD_HOURS",
        "24",
        "In review mode, how long before the send the draft is planned.",
    ),
    Setting("HEBDO_DIGEST_MAX_ARTICLES", "20", "Most articles in one issue (the newest win)."),
    Setting(
        "HEBDO_SEND_BATCH", "100", "Deliveries per Celery task, sent over one SMTP connection."
    ),
    Setting(
        "HEBDO_SEND_RATE",
        "0",
        "Most messages per second, across all workers (Redis when the broker is Redis, else a lock file in the data folder); `0` for no limit.",
    ),
    Setting(
        "HEBDO_RETRY_BASE_SECONDS",
        "60",
        "Wait before retrying a mail after a temporary SMTP failure, doubled at each further try (capped at 2 hours); a longer delay asked by the server is honoured.",
    ),
    Setting(
        "HEBDO_SEND_GIVE_UP_HOURS",
        "48",
        "A delivery still failing temporarily this long after the send started is marked failed.",
    ),
    Setting(
        "HEBDO_SENDER_IDENTITY",
        "L'Hebdo, 1 rue de l'Exemple, 75000 Paris, France",
        "Postal/identity line of the sender printed in every digest's footer.",
    ),
    Setting(
        "HEBDO_DKIM_KEY_FILE",
        "",
        "PEM private key to DKIM-sign every mail; empty: no DKIM signature.",
    ),
    Setting(
        "HEBDO_DKIM_SELECTOR",
        "",
        "DKIM selector (the `<selector>._domainkey` DNS record); required with a key.",
    ),
    Setting(
        "HEBDO_ADMIN_IDLE_MINUTES",
        "30",
        "An admin browser session ends after this many minutes without a request.",
    ),
    Setting(
        "HEBDO_ADMIN_SESSION_HOURS",
        "12",
        "An admin browser session ends this many hours after login, however active.",
    ),
    Setting(
        "HEBDO_LOGIN_RATE_LIMIT",
        "20/15 minutes",
        "Admin login attempts allowed per client IP (Flask-Limiter notation, `;` between limits).",
    ),
    Setting(
        "HEBDO_LOGIN_ACCOUNT_RATE_LIMIT",
        "5/15 minutes",
        "Failed admin logins allowed per account name, from any IP, before it is locked for the window.",
    ),
    Setting(
        "HEBDO_RATELIMIT_STORAGE",
        "",
        "Rate-limit storage, Flask-Limiter's and the sign-up form's (`redis://...`); default: the broker when it is Redis, else memory (per process).",
    ),
    Setting("HEBDO_WEB_WORKERS", "2", "gunicorn worker processes started by `hebdo run`."),
    Setting("HEBDO_WORKER_CONCURRENCY", "2", "Celery worker processes started by `hebdo run`."),
    Setting("HEBDO_LOG_LEVEL", "INFO", "Python logging level."),
    Setting(
        "HEBDO_METRICS_PORT",
        "0",
        "Port on which a Celery worker machine serves its Prometheus metrics (needs `PROMETHEUS_MULTIPROC_DIR`); `0`: none (the web's `/metrics` shows them when both share the folder, as under `hebdo run`).",
    ),
    Setting(
        "HEBDO_LOG_FORMAT",
        "auto",
        "`json` (one object per line, with request and task ids, for a log shipper) or `text`; `auto`: JSON when `HEBDO_ENV=production`, else text.",
    ),
)

_NAMES = {s.name for s in SETTINGS}


def _int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be 0 or 1, got {raw!r}")


def _log_format(raw: str, env: str) -> str:
    chosen = _choice("HEBDO_LOG_FORMAT", raw, ("auto", "json", "text"))
    if chosen == "auto":
        return "json" if env == "production" else "text"
    return chosen


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _schedule(raw: str) -> tuple[int, time]:
    """`mon 08:00` → (0, 08:00)."""
    parts = raw.lower().split()
    try:
        day, clock = parts
        weekday = next(n for n, name in enumerate(_FULL_DAYS) if day in (name, name[:3]))
        hour, minute = (int(x) for x in clock.split(":"))
        return weekday, time(hour, minute)
    except (ValueError, StopIteration):
        raise ConfigError(
            f"HEBDO_SEND_SCHEDULE must look like 'mon 08:00' (day, then 24 h local time), got {raw!r}"
        ) from None


def _timezone(raw: str) -> ZoneInfo:
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            f"HEBDO_TIMEZONE must be an IANA zone like Europe/Paris, got {raw!r}"
        ) from None


def _rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"HEBDO_SEND_RATE must be a number of messages per second ≥ 0, got {raw!r}"
        )
    return value


def _review_lead(raw: str) -> int:
    hours = _int("HEBDO_REVIEW_LEAD_HOURS", raw, 0)
    if hours > 144:
        # The beat looks one week ahead: a draft is planned within the 6 days before its send.
        raise ConfigError(f"HEBDO_REVIEW_LEAD_HOURS must be at most 144 (6 days), got {hours}")
    return hours


def _feeds(raw: str, env: str) -> tuple[str, ...]:
    feeds = tuple(f.strip() for f in raw.split(",") if f.strip())
    if not feeds and env != "production":
        return ("sample",)
    return feeds


def _limit(name: str, raw: str) -> str:
    try:
        parsed = parse_many(raw)
    except ValueError:
        parsed = []
    if not parsed:
        raise ConfigError(f"{name} must be a rate limit such as `20/15 minutes`, got {raw!r}")
    return raw


def _float_or_zero(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not 0 <= value <= 3600 or math.isnan(value):
        raise ConfigError(f"{name} must be between 0 and 3600, got {raw!r}")
    return value


def origin_of(url: str) -> str:
    """`https://www.site.fr/a/b?c` → `https://www.site.fr` (lower-case scheme and host);
    an empty string for what is no URL at all (`https://[::1`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"


def _origins(raw: str, base_url: str) -> tuple[str, ...]:
    found = []
    for item in (o.strip().rstrip("/") for o in raw.split(",")):
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or "@" in item:
            raise ConfigError(
                f"HEBDO_ALLOWED_ORIGINS takes origins such as https://www.site.fr, got {item!r}"
            )
        found.append(origin_of(item))
    # This service's own pages (/subscribe, the sample page) are always allowed.
    return tuple(dict.fromkeys([origin_of(base_url), *found]))


def _ratelimit_storage(raw: str, broker_url: str) -> str:
    if raw:
        if not raw.startswith(("redis://", "rediss://", "memory://")):
            raise ConfigError(f"HEBDO_RATELIMIT_STORAGE must be redis:// or memory://, got {raw!r}")
        return raw
    return broker_url if broker_url.startswith(("redis://", "rediss://")) else "memory://"


def _dkim(key_file: str, selector: str) -> tuple[bytes | None, str]:
    if not key_file:
        return None, ""
    if not selector:
        raise ConfigError("HEBDO_DKIM_SELECTOR is required with HEBDO_DKIM_KEY_FILE")
    try:
        key = Path(key_file).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"HEBDO_DKIM_KEY_FILE cannot be read: {exc}") from None
    if b"PRIVATE KEY" not in key:
        raise ConfigError(f"HEBDO_DKIM_KEY_FILE {key_file!r} holds no PEM private key")
    return key, selector


@dataclass(frozen=True)
class Settings:
    env: str
    data_dir: Path
    database_url: str
    broker_url: str
    broker_transport_options: dict[str, Any]
    smtp_host: str
    smtp_port: int
    smtp_user: str
    smtp_password: str
    smtp_tls: str
    smtp_timeout: float
    mail_from: str
    mail_from_address: str
    mail_domain: str
    base_url: str
    secret_key: str
    secret_key_fallbacks: tuple[str, ...]
    site_name: str
    list_id: str
    unsubscribe_mailto: str
    check_deliverability: bool
    dns_timeout: int
    confirm_ttl_hours: int
    confirm_resend_hours: int
    consent_version: str
    sweep_seconds: float
    claim_timeout_seconds: int
    trusted_proxies: int
    max_request_bytes: int
    admin_max_request_bytes: int
    consent_text: str
    consent_text_en: str
    allowed_origins: tuple[str, ...]
    subscribe_rate_limit: str
    subscribe_network_rate_limit: str
    subscribe_address_rate_limit: str
    form_min_seconds: float
    captcha_provider: str
    captcha_site_key: str
    captcha_secret: str
    captcha_threshold: int
    web_workers: int
    worker_concurrency: int
    log_level: str
    log_format: str
    metrics_port: int
    feeds: tuple[str, ...]
    feed_interval_minutes: int
    feed_timeout: float
    feed_max_bytes: int
    send_weekday: int
    send_time: time
    timezone: ZoneInfo
    review: bool
    review_lead_hours: int
    digest_max_articles: int
    send_batch: int
    send_rate: float
    send_give_up_hours: int
    retry_base_seconds: int
    sender_identity: str
    dkim_key: bytes | None
    dkim_selector: str
    admin_idle_minutes: int
    admin_session_hours: int
    login_rate_limit: str
    login_account_rate_limit: str
    ratelimit_storage: str

    @property
    def capture_mail(self) -> bool:
        """True when no SMTP relay is configured: mail is written to the data folder."""
        return not self.smtp_host

    @property
    def mail_capture_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def broker_folders(self) -> list[Path]:
        """The folders of kombu's file-system broker (none for another broker)."""
        options = self.broker_transport_options
        return [Path(options[k]) for k in ("data_folder_in", "control_folder") if k in options]

    @property
    def signing_keys(self) -> list[str]:
        """Oldest first, current last: the order itsdangerous expects for rotation."""
        return [*reversed(self.secret_key_fallbacks), self.secret_key]

    def public(self) -> dict[str, Any]:
        """Settings safe to print (no passwords or keys)."""
        hidden = {"smtp_password", "secret_key", "secret_key_fallbacks", "dkim_key"}
        return {
            f.name: ("***" if f.name in hidden and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }


def _dev_secret_key(data_dir: Path) -> str:
    """A random key kept in the data folder, so development links survive restarts."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: when several processes start at once, the first one's key wins.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ` (default: the process environment)."""
    source = dict(os.environ if environ is None else environ)
    unknown = sorted(k for k in source if k.startswith("HEBDO_") and k not in _NAMES)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)} (see the README's table)")

    def get(name: str) -> str:
        value = source.get(name)
        if value is None:
            return next(s.default for s in SETTINGS if s.name == name)
        return value.strip()

    env = _choice("HEBDO_ENV", get("HEBDO_ENV"), ("development", "production", "test"))
    data_dir = Path(get("HEBDO_DATA_DIR")).expanduser().resolve()

    database_url = source.get("HEBDO_DATABASE_URL", "").strip()
    if not database_url:
        database_url = f"sqlite:///{data_dir / 'hebdo.sqlite3'}"

    broker_url = get("HEBDO_BROKER_URL")
    transport_options: dict[str, Any] = {}
    if broker_url.startswith("filesystem://"):
        folder = data_dir / "broker"
        transport_options = {
            # One folder in and out: producers and consumers on this machine share it.
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            # Absolute, or kombu uses ./control relative to whatever cwd a process has.
            "control_folder": str(folder / "control"),
            # Consumed messages are deleted, so the folder does not grow.
            "store_processed": False,
            "polling_interval": 0.2,
        }
    elif broker_url.startswith(("redis://", "rediss://")):
        transport_options = {
            # Must exceed the longest task (see worker.celery_app task_time_limit):
            # an unacknowledged message is redelivered after this many seconds.
            "visibility_timeout": 3600,
            "socket_connect_timeout": 2,
        }

    mail_from = get("HEBDO_MAIL_FROM")
    _, mail_from_address = parseaddr(mail_from)
    if "@" not in mail_from_address or any(c in mail_from for c in "\r\n"):
        raise ConfigError(
            f"HEBDO_MAIL_FROM must be an address like 'Name <news@example.fr>', got {mail_from!r}"
        )
    mail_domain = mail_from_address.rsplit("@", 1)[1].lower()

    base_url = get("HEBDO_BASE_URL").rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"HEBDO_BASE_URL must start with http:// or https://, got {base_url!r}")

    secret_key = get("HEBDO_SECRET_KEY")
    if not secret_key:
        if env == "production":
            raise ConfigError(
                "HEBDO_SECRET_KEY is required when HEBDO_ENV=production; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        secret_key = _dev_secret_key(data_dir)
    fallbacks = tuple(k.strip() for k in get("HEBDO_SECRET_KEY_FALLBACKS").split(",") if k.strip())

    smtp_host = get("HEBDO_SMTP_HOST")
    if env == "production" and not smtp_host:
        raise ConfigError(
            "HEBDO_SMTP_HOST is required when HEBDO_ENV=production (mail capture is for development)"
        )

    smtp_timeout = _float("HEBDO_SMTP_TIMEOUT", get("HEBDO_SMTP_TIMEOUT"))
    claim_timeout = _int("HEBDO_CLAIM_TIMEOUT_SECONDS", get("HEBDO_CLAIM_TIMEOUT_SECONDS"), 1)
    if claim_timeout < 6 * smtp_timeout:
        # One message can take a connect and five replies, each allowed HEBDO_SMTP_TIMEOUT:
        # a shorter claim could expire under a live sender, and the message go out twice.
        raise ConfigError(
            f"HEBDO_CLAIM_TIMEOUT_SECONDS ({claim_timeout}) must be at least 6 × "
            f"HEBDO_SMTP_TIMEOUT ({smtp_timeout:g}), the longest one message can take"
        )
    send_weekday, send_time = _schedule(get("HEBDO_SEND_SCHEDULE"))
    captcha_provider = _choice(
        "HEBDO_CAPTCHA_PROVIDER",
        get("HEBDO_CAPTCHA_PROVIDER"),
        ("none", "turnstile", "hcaptcha", "friendlycaptcha"),
    )
    if captcha_provider != "none" and not (
        get("HEBDO_CAPTCHA_SITE_KEY") and get("HEBDO_CAPTCHA_SECRET")
    ):
        raise ConfigError(
            "HEBDO_CAPTCHA_PROVIDER needs HEBDO_CAPTCHA_SITE_KEY and HEBDO_CAPTCHA_SECRET"
        )
    dkim_key, dkim_selector = _dkim(get("HEBDO_DKIM_KEY_FILE"), get("HEBDO_DKIM_SELECTOR"))

    return Settings(
        env=env,
        data_dir=data_dir,
        database_url=database_url,
        broker_url=broker_url,
        broker_transport_options=transport_options,
        smtp_host=smtp_host,
        smtp_port=_int("HEBDO_SMTP_PORT", get("HEBDO_SMTP_PORT"), 1),
        smtp_user=get("HEBDO_SMTP_USER"),
        smtp_password=source.get("HEBDO_SMTP_PASSWORD", ""),
        smtp_tls=_choice("HEBDO_SMTP_TLS", get("HEBDO_SMTP_TLS"), ("none", "starttls", "ssl")),
        smtp_timeout=smtp_timeout,
        mail_from=mail_from,
        mail_from_address=mail_from_address,
        mail_domain=mail_domain,
        base_url=base_url,
        secret_key=secret_key,
        secret_key_fallbacks=fallbacks,
        site_name=get("HEBDO_SITE_NAME"),
        list_id=get("HEBDO_LIST_ID") or f"hebdo.{mail_domain}",
        unsubscribe_mailto=get("HEBDO_UNSUBSCRIBE_MAILTO") or f"unsubscribe@{mail_domain}",
        check_deliverability=_bool("HEBDO_CHECK_DELIVERABILITY", get("HEBDO_CHECK_DELIVERABILITY")),
        dns_timeout=_int("HEBDO_DNS_TIMEOUT", get("HEBDO_DNS_TIMEOUT"), 1),
        confirm_ttl_hours=_int("HEBDO_CONFIRM_TTL_HOURS", get("HEBDO_CONFIRM_TTL_HOURS"), 1),
        confirm_resend_hours=_int(
            "HEBDO_CONFIRM_RESEND_HOURS", get("HEBDO_CONFIRM_RESEND_HOURS"), 0
        ),
        consent_version=get("HEBDO_CONSENT_VERSION"),
        sweep_seconds=_float("HEBDO_SWEEP_SECONDS", get("HEBDO_SWEEP_SECONDS")),
        claim_timeout_seconds=claim_timeout,
        trusted_proxies=_int("HEBDO_TRUSTED_PROXIES", get("HEBDO_TRUSTED_PROXIES")),
        max_request_bytes=_int("HEBDO_MAX_REQUEST_BYTES", get("HEBDO_MAX_REQUEST_BYTES"), 1024),
        admin_max_request_bytes=_int(
            "HEBDO_ADMIN_MAX_REQUEST_BYTES", get("HEBDO_ADMIN_MAX_REQUEST_BYTES"), 1024
        ),
        consent_text=get("HEBDO_CONSENT_TEXT"),
        consent_text_en=get("HEBDO_CONSENT_TEXT_EN"),
        allowed_origins=_origins(get("HEBDO_ALLOWED_ORIGINS"), base_url),
        subscribe_rate_limit=_limit(
            "HEBDO_SUBSCRIBE_RATE_LIMIT", get("HEBDO_SUBSCRIBE_RATE_LIMIT")
        ),
        subscribe_network_rate_limit=_limit(
            "HEBDO_SUBSCRIBE_NETWORK_RATE_LIMIT", get("HEBDO_SUBSCRIBE_NETWORK_RATE_LIMIT")
        ),
        subscribe_address_rate_limit=_limit(
            "HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT", get("HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT")
        ),
        form_min_seconds=_float_or_zero("HEBDO_FORM_MIN_SECONDS", get("HEBDO_FORM_MIN_SECONDS")),
        captcha_provider=captcha_provider,
        captcha_site_key=get("HEBDO_CAPTCHA_SITE_KEY"),
        captcha_secret=get("HEBDO_CAPTCHA_SECRET"),
        captcha_threshold=_int("HEBDO_CAPTCHA_THRESHOLD", get("HEBDO_CAPTCHA_THRESHOLD"), 0),
        web_workers=_int("HEBDO_WEB_WORKERS", get("HEBDO_WEB_WORKERS"), 1),
        worker_concurrency=_int("HEBDO_WORKER_CONCURRENCY", get("HEBDO_WORKER_CONCURRENCY"), 1),
        log_level=get("HEBDO_LOG_LEVEL").upper(),
        log_format=_log_format(get("HEBDO_LOG_FORMAT"), env),
        metrics_port=_int("HEBDO_METRICS_PORT", get("HEBDO_METRICS_PORT")),
        feeds=_feeds(get("HEBDO_FEEDS"), env),
        feed_interval_minutes=_int(
            "HEBDO_FEED_INTERVAL_MINUTES", get("HEBDO_FEED_INTERVAL_MINUTES"), 1
        ),
        feed_timeout=_float("HEBDO_FEED_TIMEOUT", get("HEBDO_FEED_TIMEOUT")),
        feed_max_bytes=_int("HEBDO_FEED_MAX_BYTES", get("HEBDO_FEED_MAX_BYTES"), 1024),
        send_weekday=send_weekday,
        send_time=send_time,
        timezone=_timezone(get("HEBDO_TIMEZONE")),
        review=_bool("HEBDO_REVIEW", get("HEBDO_REVIEW")),
        review_lead_hours=_review_lead(get("HEBDO_REVIEW_LEAD_HOURS")),
        digest_max_articles=_int("HEBDO_DIGEST_MAX_ARTICLES", get("HEBDO_DIGEST_MAX_ARTICLES"), 1),
        send_batch=_int("HEBDO_SEND_BATCH", get("HEBDO_SEND_BATCH"), 1),
        send_rate=_rate(get("HEBDO_SEND_RATE")),
        send_give_up_hours=_int("HEBDO_SEND_GIVE_UP_HOURS", get("HEBDO_SEND_GIVE_UP_HOURS"), 1),
        retry_base_seconds=_int("HEBDO_RETRY_BASE_SECONDS", get("HEBDO_RETRY_BASE_SECONDS"), 1),
        sender_identity=get("HEBDO_SENDER_IDENTITY"),
        dkim_key=dkim_key,
        dkim_selector=dkim_selector,
        admin_idle_minutes=_int("HEBDO_ADMIN_IDLE_MINUTES", get("HEBDO_ADMIN_IDLE_MINUTES"), 1),
        admin_session_hours=_int("HEBDO_ADMIN_SESSION_HOURS", get("HEBDO_ADMIN_SESSION_HOURS"), 1),
        login_rate_limit=_limit("HEBDO_LOGIN_RATE_LIMIT", get("HEBDO_LOGIN_RATE_LIMIT")),
        login_account_rate_limit=_limit(
            "HEBDO_LOGIN_ACCOUNT_RATE_LIMIT", get("HEBDO_LOGIN_ACCOUNT_RATE_LIMIT")
        ),
        ratelimit_storage=_ratelimit_storage(get("HEBDO_RATELIMIT_STORAGE"), broker_url),
    )
