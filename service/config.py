"""Every HEBDO_* setting, declared once: its name, type, default, meaning and parsing.

`Settings` is a pydantic-settings class: each field is one `HEBDO_<FIELD>` environment
variable, and its validators turn the text into what the code uses. The settings
reference (docs/configuration.md, `hebdo config --reference`), the refusal of unknown
names and the checks of docker-compose.yml are all derived from it, so a setting that is
read here is documented there.

Configuration is read when the app is created (`load_settings`), never at import time.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
import secrets
import string
from collections.abc import Mapping
from datetime import time
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self, get_args
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from limits import parse_many
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "HEBDO_"
REFERENCE_FILE = "docs/configuration.md"


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def setting(
    default: str,
    description: str,
    *,
    shown_default: str | None = None,
    expects: str | None = None,
    secret: bool = False,
    verbatim: bool = False,
    **constraints: Any,
) -> Any:
    """One setting's declaration: a pydantic `Field` with hebdo's extras.

    `default` is written as an operator would write it in the environment and is parsed
    like any given value (`validate_default`), so the reference shows what it really is.
    `shown_default` replaces it in the reference when the real default is computed from
    other settings. `expects` is the whole complaint for any bad value of a setting whose
    parser cannot say better (`must look like …`). `secret` values are masked by
    `Settings.public()`. `verbatim` values keep their surrounding spaces (a password).
    `constraints` are pydantic's (`ge=1`, …).
    """
    extra: dict[str, Any] = {}
    if shown_default is not None:
        extra["shown_default"] = shown_default
    if expects is not None:
        extra["expects"] = expects
    if secret:
        extra["secret"] = True
    if verbatim:
        extra["verbatim"] = True
    return Field(default, description=description, json_schema_extra=extra or None, **constraints)


# --- Value types: how a piece of text becomes a value --------------------------------


def _flag(value: object) -> object:
    """`1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`/empty: an empty value is off, which
    pydantic's own bool parsing refuses."""
    if not isinstance(value, str):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"must be 0 or 1, got {value!r}")


def _comma_list(value: object) -> object:
    """`a, b,,c` → ("a", "b", "c"): empty items are dropped."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _rate_limit(value: str) -> str:
    """Flask-Limiter's notation (`20/15 minutes;500/day`), checked here rather than at the
    first request it would have limited."""
    try:
        parsed = parse_many(value)
    except ValueError:
        parsed = []
    if not parsed:
        raise ValueError(f"must be a rate limit such as `20/15 minutes`, got {value!r}")
    return value


# arn:<partition>:sns:<region>:<account>:<topic name> (a FIFO topic's name ends .fifo).
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")

_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class Schedule(NamedTuple):
    """The weekly send: a weekday (0 is Monday) and a local time."""

    weekday: int
    clock: time


def _schedule(value: object) -> Schedule:
    """`mon 08:00` or `friday 17:30` → Schedule(0, 08:00)."""
    if isinstance(value, Schedule):
        return value
    try:
        day, clock = str(value).lower().split()
        weekday = next(n for n, name in enumerate(_FULL_DAYS) if day in (name, name[:3]))
        hour, minute = (int(x) for x in clock.split(":"))
        return Schedule(weekday, time(hour, minute))
    except (ValueError, StopIteration):
        raise ValueError(value) from None  # the setting's `expects` says what is wrong


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


Flag = Annotated[bool, BeforeValidator(_flag)]
CommaList = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]
RateLimit = Annotated[str, AfterValidator(_rate_limit)]
# The digest subject's placeholders (documented with HEBDO_SUBJECT_TEMPLATE).
SUBJECT_PLACEHOLDERS = ("lead", "others", "site", "week")


def _subject_template(value: str) -> str:
    """Unknown or malformed placeholders are refused when the settings load, not when the
    first digest is rendered on Monday morning."""
    try:
        names = [
            name
            for _text, name, _spec, _conv in string.Formatter().parse(value)
            if name is not None
        ]
    except ValueError as exc:
        raise ValueError(
            f"is not a valid template ({exc}); write {{{{ and }}}} for braces"
        ) from None
    unknown = [n for n in names if n not in SUBJECT_PLACEHOLDERS]
    if unknown:
        known = ", ".join("{" + n + "}" for n in SUBJECT_PLACEHOLDERS)
        raise ValueError(f"has unknown placeholder {{{unknown[0]}}}; known: {known}")
    if any(c in value for c in "\r\n"):
        raise ValueError("must be one line")
    return value


def _https_url(value: str) -> str:
    """A mail fetches its images from the reader's client: mixed content and http images
    are blocked or flagged by many clients, so only https (or nothing)."""
    if value and not re.fullmatch(r"https://[^\s\"'<>]+", value):
        raise ValueError(f"must be an https:// URL, got {value!r}")
    return value


def _brand_color(value: str) -> str:
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        raise ValueError(f"must be a colour like #b3122e, got {value!r}")
    return value.lower()


SubjectTemplate = Annotated[str, AfterValidator(_subject_template)]
HttpsUrl = Annotated[str, AfterValidator(_https_url)]
BrandColor = Annotated[str, AfterValidator(_brand_color)]
# gunicorn's --log-level and Celery's --loglevel both take these five.
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
]


def origin_of(url: str) -> str:
    """`https://www.site.fr/a/b?c` → `https://www.site.fr` (lower-case scheme and host);
    an empty string for what is no URL at all (`https://[::1`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}"


def _domain_of(mail_from: str) -> str:
    return parseaddr(mail_from)[1].rsplit("@", 1)[1].lower()


def _database_url(value: str) -> str:
    """A URL SQLAlchemy can open with the drivers hebdo ships, checked now rather than in a
    traceback at the first query. `postgres://` (Heroku's and libpq's spelling) and a bare
    `postgresql://` (SQLAlchemy's psycopg2, not installed) get the spelling that works."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = _without_password(value)
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            f"must be a SQLAlchemy URL such as postgresql+psycopg://hebdo@db/hebdo, got {shown!r}"
        ) from None
    if url.drivername in ("postgres", "postgresql"):
        fixed = _without_password(url.set(drivername="postgresql+psycopg").render_as_string(False))
        raise ValueError(f"must name hebdo's PostgreSQL driver: write {fixed!r}, got {shown!r}")
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(
            "names a database SQLAlchemy does not know; use sqlite:///… or "
            f"postgresql+psycopg://…, got {shown!r}"
        ) from None
    return value


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


# Words that make up the placeholder keys of examples and tutorials ("changeme",
# "dev-secret-key", "your-secret-here"…): a key made of nothing else is no secret.
_PLACEHOLDER_WORDS = (
    "changeme",
    "change",
    "replace",
    "please",
    "secret",
    "password",
    "passwd",
    "default",
    "development",
    "dev",
    "test",
    "example",
    "insecure",
    "your",
    "here",
    "this",
    "key",
    "hebdo",
    "me",
)
MIN_SECRET_KEY = 32


def _refuse_weak_key(key: str) -> None:
    """Refuse, in production, a key short enough to guess or made of placeholder words
    (whoever guesses it forges confirmation and unsubscribe links)."""
    fix = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    if len(key) < MIN_SECRET_KEY:
        raise ValueError(
            f"is too short for HEBDO_ENV=production ({len(key)} characters, at least "
            f"{MIN_SECRET_KEY}); {fix}"
        )
    letters = re.sub(r"[^a-z]", "", key.lower())
    rest = letters
    for word in _PLACEHOLDER_WORDS:
        rest = rest.replace(word, "")
    if letters and not rest:
        raise ValueError(f"is a placeholder, not a secret (HEBDO_ENV=production); {fix}")


# --- The declaration ------------------------------------------------------------------


class Settings(BaseSettings):
    """hebdo's settings, immutable once loaded; build them with `load_settings`.

    Fields are validated in declaration order, so a validator may use the fields above it
    (`info.data`) to fill in a default computed from them; rules that tie several settings
    together are checked once all are valid (`_check_combinations`).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        validate_default=True,
        # Lists are comma-separated text, not JSON.
        enable_decoding=False,
        env_file=None,
        extra="forbid",
    )

    env: Literal["development", "production", "test"] = setting(
        "development",
        "`development`, `production` or `test`. Production refuses to start without a strong `HEBDO_SECRET_KEY` and hides `/dev/mailbox`.",
    )
    data_dir: Path = setting(
        "./var",
        "Folder of the embedded default: SQLite database, broker files, beat schedule, captured mail, generated development secret key.",
    )
    database_url: str = setting(
        "",
        "SQLAlchemy URL, e.g. `postgresql+psycopg://hebdo@db/hebdo`.",
        shown_default="sqlite:///<HEBDO_DATA_DIR>/hebdo.sqlite3",
    )
    broker_url: str = setting(
        "filesystem://",
        "Celery broker, e.g. `redis://127.0.0.1:6379/0`. The default is kombu's file-system transport under `<HEBDO_DATA_DIR>/broker` (single machine only).",
    )
    smtp_host: str = setting(
        "",
        "SMTP relay host. Empty: every outgoing mail is captured as an `.eml` file under `<HEBDO_DATA_DIR>/mail` (`mail-<database>` for another database than the embedded SQLite) and shown at `/dev/mailbox` (while hebdo listens on a loopback address).",
    )
    smtp_port: int = setting(
        "25", "SMTP relay port (587 for STARTTLS submission, 465 for SSL).", ge=1, le=65535
    )
    smtp_user: str = setting("", "SMTP login; empty for no authentication.")
    smtp_password: str = setting("", "SMTP password.", secret=True, verbatim=True)
    smtp_tls: Literal["none", "starttls", "ssl"] = setting("none", "`none`, `starttls` or `ssl`.")
    smtp_timeout: float = setting(
        "30",
        "Seconds to wait on any SMTP connect or reply before treating it as a transient failure.",
        gt=0,
    )
    mail_from: str = setting(
        "L'Hebdo <newsletter@hebdo.localhost>",
        "From address. Its domain is used for Message-ID, List-Id and the unsubscribe mailto.",
    )
    base_url: str = setting(
        "http://127.0.0.1:8000", "Public URL of this service, used in every link of every mail."
    )
    secret_key: str = setting(
        "",
        "Signs tokens. Required in production, at least 32 characters and not a placeholder (`changeme`, `secret`, `dev-key`…); in development a random key is generated once into `<HEBDO_DATA_DIR>/secret_key`.",
        secret=True,
    )
    secret_key_fallbacks: CommaList = setting(
        "",
        "Comma-separated former secret keys: links signed with them keep working after a rotation.",
        secret=True,
    )
    site_name: str = setting("L'Hebdo", "Name of the newsletter shown in mails and pages.")
    list_id: str = setting("", "List-Id identifier; default `hebdo.<domain of HEBDO_MAIL_FROM>`.")
    unsubscribe_mailto: str = setting(
        "",
        "Address of the mailto in List-Unsubscribe; default `unsubscribe@<domain of HEBDO_MAIL_FROM>`.",
    )
    bounce_address: str = setting(
        "",
        "Address that receives bounces (e.g. `bounces@news.example.fr`). Set, every digest and confirmation mail goes out with the envelope sender `bounces+<signed token>@…` (VERP), so a bounce names its delivery; mail to it is read by `hebdo inbound` (docs/inbound.md). Empty: the envelope sender is HEBDO_MAIL_FROM's address and bounces are not read.",
    )
    reply_to: str = setting(
        "",
        "Reply-To of every mail, where readers' replies go; replies that reach hebdo's inbound address are forwarded there. Empty: no Reply-To, and replies that reach hebdo are kept for a person (admin, Inbound).",
    )
    soft_bounce_limit: int = setting(
        "3",
        "Temporary bounces (mailbox full, greylisting that never cleared…) in this many distinct issues, with no delivery in between, make a reader `bounced`.",
        ge=1,
    )
    ses_topic_arns: CommaList = setting(
        "",
        "Comma-separated ARNs of the SNS topics (`arn:aws:sns:eu-west-1:123456789012:hebdo-ses`) that carry Amazon SES's bounce and complaint notifications to `POST /api/v1/webhooks/ses`; hebdo confirms the subscription of these topics only and refuses any other topic's messages, however well signed. Empty: that webhook answers 404 (docs/webhooks.md).",
    )
    sendgrid_webhook_key: str = setting(
        "",
        "The verification key of SendGrid's Signed Event Webhook (base64, as SendGrid's settings page shows it): events posted to `POST /api/v1/webhooks/sendgrid` must carry its ECDSA signature. A public key, so not masked. Empty: that webhook answers 404.",
    )
    mailgun_signing_key: str = setting(
        "",
        "Mailgun's HTTP webhook signing key: events posted to `POST /api/v1/webhooks/mailgun` must carry its HMAC signature. Empty: that webhook answers 404.",
        secret=True,
    )
    postmark_webhook_user: str = setting(
        "",
        "User name of the HTTP basic authentication Postmark's webhook gives for `POST /api/v1/webhooks/postmark`; set with HEBDO_POSTMARK_WEBHOOK_PASSWORD. Empty: that webhook answers 404.",
    )
    postmark_webhook_password: str = setting(
        "",
        "Password of that basic authentication (a long random one: it is all that tells Postmark's posts from anybody's).",
        secret=True,
    )
    check_deliverability: Flag = setting(
        "0",
        "`1` to check that the address's domain has MX/A records at sign-up (DNS answers are cached).",
    )
    dns_timeout: int = setting(
        "1",
        "Whole seconds a deliverability DNS lookup may take; when it times out the address is accepted.",
        ge=1,
    )
    confirm_ttl_hours: int = setting("48", "Hours a confirmation link stays valid.", ge=1)
    confirm_resend_hours: int = setting(
        "24",
        "At most one confirmation mail per address in this many hours, however often it is posted.",
        ge=0,
    )
    consent_version: str = setting(
        "form-2026-11",
        "Version of the consent text shown by the form, recorded with each sign-up; a post naming another version is refused (422: the page predates the change, reload it).",
    )
    sweep_seconds: float = setting(
        "60",
        "Beat interval of the sweep that sends confirmation mails committed but never sent (broker down, worker killed).",
        gt=0,
    )
    claim_timeout_seconds: int = setting(
        "300",
        "After this long a claimed but unfinished mail is considered abandoned and sent again by the sweep. At least 6 × `HEBDO_SMTP_TIMEOUT`.",
        ge=1,
    )
    consent_text: str = setting(
        "",
        "Consent line shown with an unticked box in the sign-up form (French); empty: no box. Sign-ups must tick it; its version is HEBDO_CONSENT_VERSION.",
    )
    consent_text_en: str = setting(
        "", "The same consent line in English (default: the French one)."
    )
    allowed_origins: CommaList = setting(
        "",
        "Comma-separated origins (`https://www.site.fr`) whose pages may embed the form: CORS for them only, and only their page URLs are recorded as sources. This service's own origin is always one.",
    )
    subscribe_rate_limit: RateLimit = setting(
        "30/minute;500/day",
        "Sign-up posts allowed per client IP (Flask-Limiter notation). Stops a bot's burst, not a newsroom behind one address.",
    )
    subscribe_network_rate_limit: RateLimit = setting(
        "300/hour", "Sign-up posts allowed per /24 (IPv4) or /64 (IPv6) network."
    )
    subscribe_address_rate_limit: RateLimit = setting(
        "3/hour;10/day",
        "Sign-up posts allowed per target address, from anywhere (subscription bombing); keyed by an HMAC, never the address.",
    )
    form_min_seconds: float = setting(
        "2",
        "A form posted sooner than this after it was shown is a bot's: answered like any other, nothing stored.",
        expects="must be between 0 and 3600",
        ge=0,
        le=3600,
        allow_inf_nan=False,
    )
    captcha_provider: Literal["none", "turnstile", "hcaptcha", "friendlycaptcha"] = setting(
        "none",
        "`none`, `turnstile`, `hcaptcha` or `friendlycaptcha`: server-side CAPTCHA verification, asked for only above HEBDO_CAPTCHA_THRESHOLD.",
    )
    captcha_site_key: str = setting("", "The CAPTCHA provider's public site key.")
    captcha_secret: str = setting(
        "", "The CAPTCHA provider's secret key (server-side verification).", secret=True
    )
    captcha_threshold: int = setting(
        "60",
        "Sign-ups per minute, site-wide, above which the form asks for a CAPTCHA (with a provider set); 0: always.",
        ge=0,
    )
    trusted_proxies: int = setting(
        "0",
        "Number of reverse proxies in front of the web app whose X-Forwarded-For/-Proto are trusted.",
        ge=0,
    )
    max_request_bytes: int = setting(
        "65536", "Largest request body accepted; larger gets 413.", ge=1024
    )
    admin_max_request_bytes: int = setting(
        "33554432",
        "Largest request body the admin area and admin API accept (CSV imports, pasted lists).",
        ge=1024,
    )
    feeds: CommaList = setting(
        "",
        "Comma-separated RSS/Atom URLs or local file paths to ingest. `sample` is the bundled French sample feed, used when this is empty outside production.",
    )
    feed_interval_minutes: int = setting(
        "60", "Minutes between two automatic fetches of the feeds.", ge=1
    )
    feed_timeout: float = setting(
        "10", "Seconds a feed may take to answer and download in full.", gt=0
    )
    feed_max_bytes: int = setting(
        "5000000", "Largest feed document read; a bigger one is refused.", ge=1024
    )
    send_schedule: Annotated[Schedule, PlainValidator(_schedule)] = setting(
        "mon 08:00",
        "Day (`mon` … `sun`, or in full) and 24 h local time of the weekly send, e.g. `mon 08:00` or `friday 17:30`.",
        expects="must look like 'mon 08:00' (day, then 24 h local time)",
    )
    timezone: ZoneInfo = setting(
        "Europe/Paris",
        "Time zone of `HEBDO_SEND_SCHEDULE` (IANA name); daylight-saving changes are followed.",
        expects="must be an IANA zone like Europe/Paris",
    )
    review: Flag = setting(
        "0",
        "`1`: each issue is planned `HEBDO_REVIEW_LEAD_HOURS` ahead as a draft and goes out only once approved.",
    )
    # At most 6 days: the beat looks one week ahead, so a draft is planned within the
    # 6 days before its send.
    review_lead_hours: int = setting(
        "24",
        "In review mode, how long before the send the draft is planned; at most 144 (6 days).",
        ge=0,
        le=144,
    )
    digest_max_articles: int = setting("20", "Most articles in one issue (the newest win).", ge=1)
    click_counts: Flag = setting(
        "1",
        "`1`: the digest's article links go through `/c/<week>/<n>/<signature>`, which counts clicks per article (no reader is identified) and redirects; `0`: direct links.",
    )
    click_burst_seconds: int = setting(
        "30",
        "Clicks within this many seconds after the issue last handed mail to the relay are not counted (link scanners fetch every link on delivery); `0` counts them.",
        ge=0,
    )
    send_batch: int = setting(
        "500",
        "Deliveries per Celery task, sent over one SMTP connection. Larger batches cost less per message (the claim and the writes are per batch); the send journal keeps what a killed worker sends twice to one message whatever the size.",
        ge=1,
    )
    send_rate: float = setting(
        "0",
        "Most messages per second, across all workers (Redis when the broker is Redis, else a lock file in the data folder); `0` for no limit.",
        expects="must be a number of messages per second ≥ 0",
        ge=0,
        allow_inf_nan=False,
    )
    send_journal: str = setting(
        "auto",
        "Where each worker notes a message the moment its SMTP server accepted it, so a killed worker's sent messages are not sent again (docs/delivery.md): `redis://…`, `file` (`<HEBDO_DATA_DIR>/journal`, one machine only) or `off`; `auto`: the broker when it is Redis, else `file`.",
    )
    retry_base_seconds: int = setting(
        "60",
        "Wait before retrying a mail after a temporary SMTP failure, doubled at each further try (capped at 2 hours); a longer delay asked by the server is honoured.",
        ge=1,
    )
    send_give_up_hours: int = setting(
        "48",
        "A delivery still failing temporarily this long after the send started is marked failed.",
        ge=1,
    )
    sender_identity: str = setting(
        "L'Hebdo, 1 rue de l'Exemple, 75000 Paris, France",
        "Postal/identity line of the sender printed in every digest's footer.",
    )
    subject_template: SubjectTemplate = setting(
        "",
        "Subject of the digest, with the placeholders `{lead}` (the lead article's title, shortened on a word so the subject fits 70 characters), `{others}` (how many other articles), `{site}` and `{week}`; empty: the lead title and the number of other articles, in the reader's language (« Lead » et 4 autres articles).",
    )
    default_intro_fr: str = setting(
        "",
        "Editor's note at the top of every French digest whose issue has none of its own (plain text; a blank line starts a paragraph; https links); empty: no note.",
        max_length=1000,
    )
    default_intro_en: str = setting(
        "",
        "The same for English readers.",
        max_length=1000,
    )
    logo_url: HttpsUrl = setting(
        "",
        "Logo shown in the masthead of every mail instead of the site name's heading (https only; its alt text is `HEBDO_SITE_NAME`); empty: the name in text.",
    )
    logo_width: int = setting("160", "Width of the logo in pixels (at most 536).", ge=1, le=536)
    logo_height: int = setting("40", "Height of the logo in pixels.", ge=1, le=400)
    brand_color: BrandColor = setting(
        "#b3122e",
        "Colour of the masthead band and headings in the mails, `#rrggbb`; text on it is white or black, whichever keeps WCAG AA contrast (4.5:1).",
    )
    dkim_key_file: str = setting(
        "", "PEM private key to DKIM-sign every mail; empty: no DKIM signature."
    )
    dkim_selector: str = setting(
        "", "DKIM selector (the `<selector>._domainkey` DNS record); required with a key."
    )
    admin_idle_minutes: int = setting(
        "30", "An admin browser session ends after this many minutes without a request.", ge=1
    )
    admin_session_hours: int = setting(
        "12", "An admin browser session ends this many hours after login, however active.", ge=1
    )
    login_rate_limit: RateLimit = setting(
        "20/15 minutes",
        "Admin login attempts allowed per client IP (Flask-Limiter notation, `;` between limits).",
    )
    login_account_rate_limit: RateLimit = setting(
        "5/15 minutes",
        "Failed admin logins allowed per account name, from any IP, before it is locked for the window.",
    )
    ratelimit_storage: str = setting(
        "",
        "Rate-limit storage, Flask-Limiter's and the sign-up form's (`redis://...`); default: the broker when it is Redis, else memory (per process).",
    )
    web_workers: int = setting("2", "gunicorn worker processes started by `hebdo run`.", ge=1)
    worker_concurrency: int = setting("2", "Celery worker processes started by `hebdo run`.", ge=1)
    log_level: LogLevel = setting(
        "INFO", "Python logging level: `DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`."
    )
    metrics_port: int = setting(
        "0",
        "Port on which a Celery worker machine serves its Prometheus metrics (needs `PROMETHEUS_MULTIPROC_DIR`); `0`: none (the web's `/metrics` shows them when both share the folder, as under `hebdo run`).",
        ge=0,
        le=65535,
    )
    log_format: Literal["auto", "json", "text"] = setting(
        "auto",
        "`json` (one object per line, with request and task ids, for a log shipper) or `text`; `auto`: JSON when `HEBDO_ENV=production`, else text.",
    )

    # Read from HEBDO_DKIM_KEY_FILE when the settings are loaded, not at each signature.
    _dkim_key: bytes | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what `load_settings` passes: never the process environment behind the
        mapping it was given, nor a `.env` file in whatever folder a process starts in."""
        return (init_settings,)

    # --- One setting at a time (the ones above it are in `info.data`) ---

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Absolute, so a process that changes folder still finds the same files.
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _default_database(cls, value: str, info: ValidationInfo) -> str:
        if value:
            return _database_url(value)
        if "data_dir" not in info.data:
            return value
        return f"sqlite:///{info.data['data_dir'] / 'hebdo.sqlite3'}"

    @field_validator("mail_from")
    @classmethod
    def _address(cls, value: str) -> str:
        _, address = parseaddr(value)
        if "@" not in address or any(c in value for c in "\r\n"):
            raise ValueError(f"must be an address like 'Name <news@example.fr>', got {value!r}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("env") == "production":
            _refuse_weak_key(value)
        if value or "env" not in info.data or "data_dir" not in info.data:
            return value
        if info.data["env"] == "production":
            raise ValueError(
                "is required when HEBDO_ENV=production; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return _dev_secret_key(info.data["data_dir"])

    @field_validator("list_id")
    @classmethod
    def _default_list_id(cls, value: str, info: ValidationInfo) -> str:
        if value or "mail_from" not in info.data:
            return value
        return f"hebdo.{_domain_of(info.data['mail_from'])}"

    @field_validator("bounce_address", "reply_to")
    @classmethod
    def _plain_address(cls, value: str, info: ValidationInfo) -> str:
        # The bounce address takes a `+<token>` of its own: it cannot hold one already.
        local = r"[^\s@<>\"(),;:+]+" if info.field_name == "bounce_address" else r"[^\s@<>\"(),;:]+"
        if value and not re.fullmatch(local + r"@[^\s@<>\"(),;:]+\.[^\s@<>\"(),;:]+", value):
            example = "bounces" if info.field_name == "bounce_address" else "redaction"
            raise ValueError(
                f"must be a plain address like {example}@news.example.fr, got {value!r}"
            )
        return value

    @field_validator("ses_topic_arns")
    @classmethod
    def _topic_arns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arn in value:
            if not _TOPIC_ARN.fullmatch(arn):
                raise ValueError(
                    "takes SNS topic ARNs such as arn:aws:sns:eu-west-1:123456789012:hebdo-ses, "
                    f"got {arn!r}"
                )
        return value

    @field_validator("sendgrid_webhook_key")
    @classmethod
    def _sendgrid_key(cls, value: str) -> str:
        """Checked now rather than refusing every event later: an ECDSA P-256 public key,
        base64 DER (PEM armour and line breaks taken off), kept as the bare base64."""
        if not value:
            return value
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        bare = re.sub(r"-----[A-Z ]+-----|\s", "", value)
        try:
            key = load_der_public_key(base64.b64decode(bare, validate=True))
        except (ValueError, binascii.Error):
            key = None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError(
                "must be the verification key shown by SendGrid's Signed Event Webhook "
                f"settings (base64 of an ECDSA P-256 public key), got {value[:20]!r}…"
            )
        return bare

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _default_unsubscribe_mailto(cls, value: str, info: ValidationInfo) -> str:
        if value or "mail_from" not in info.data:
            return value
        return f"unsubscribe@{_domain_of(info.data['mail_from'])}"

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        found = []
        for item in (o.rstrip("/") for o in value):
            parts = urlsplit(item)
            if (
                parts.scheme not in ("http", "https")
                or not parts.netloc
                or parts.path
                or "@" in item
            ):
                raise ValueError(f"takes origins such as https://www.site.fr, got {item!r}")
            found.append(origin_of(item))
        # This service's own pages (/subscribe, the sample page) are always allowed.
        own = [origin_of(info.data["base_url"])] if "base_url" in info.data else []
        return tuple(dict.fromkeys([*own, *found]))

    @field_validator("feeds")
    @classmethod
    def _sample_feed(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # Demo articles everywhere but in production.
        if not value and info.data.get("env", "production") != "production":
            return ("sample",)
        return value

    @field_validator("ratelimit_storage")
    @classmethod
    def _ratelimit_storage(cls, value: str, info: ValidationInfo) -> str:
        if value:
            if not value.startswith(("redis://", "rediss://", "memory://")):
                raise ValueError(f"must be redis:// or memory://, got {value!r}")
            return value
        broker_url = str(info.data.get("broker_url", ""))
        return broker_url if broker_url.startswith(("redis://", "rediss://")) else "memory://"

    @field_validator("send_journal")
    @classmethod
    def _send_journal(cls, value: str, info: ValidationInfo) -> str:
        if value in ("off", "file") or value.startswith(("redis://", "rediss://")):
            return value
        if value != "auto":
            raise ValueError(f"must be auto, off, file or a redis:// URL, got {value!r}")
        broker_url = str(info.data.get("broker_url", ""))
        return broker_url if broker_url.startswith(("redis://", "rediss://")) else "file"

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str, info: ValidationInfo) -> str:
        if value == "auto":
            return "json" if info.data.get("env") == "production" else "text"
        return value

    # --- Rules across settings: each message names every setting involved ---

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if self.env == "production" and not self.smtp_host:
            raise ValueError(
                "HEBDO_SMTP_HOST is required when HEBDO_ENV=production (mail capture is for development)"
            )
        if self.claim_timeout_seconds < 6 * self.smtp_timeout:
            # One message can take a connect and five replies, each allowed HEBDO_SMTP_TIMEOUT:
            # a shorter claim could expire under a live sender, and the message go out twice.
            raise ValueError(
                f"HEBDO_CLAIM_TIMEOUT_SECONDS ({self.claim_timeout_seconds}) must be at least 6 × "
                f"HEBDO_SMTP_TIMEOUT ({self.smtp_timeout:g}), the longest one message can take"
            )
        if self.captcha_provider != "none" and not (self.captcha_site_key and self.captcha_secret):
            raise ValueError(
                "HEBDO_CAPTCHA_PROVIDER needs HEBDO_CAPTCHA_SITE_KEY and HEBDO_CAPTCHA_SECRET"
            )
        if bool(self.postmark_webhook_user) != bool(self.postmark_webhook_password):
            raise ValueError(
                "HEBDO_POSTMARK_WEBHOOK_USER and HEBDO_POSTMARK_WEBHOOK_PASSWORD go together"
            )
        if self.dkim_key_file:
            if not self.dkim_selector:
                raise ValueError("HEBDO_DKIM_SELECTOR is required with HEBDO_DKIM_KEY_FILE")
            try:
                key = Path(self.dkim_key_file).expanduser().read_bytes()
            except OSError as exc:
                raise ValueError(f"HEBDO_DKIM_KEY_FILE cannot be read: {exc}") from None
            if b"PRIVATE KEY" not in key:
                raise ValueError(
                    f"HEBDO_DKIM_KEY_FILE {self.dkim_key_file!r} holds no PEM private key"
                )
            self._dkim_key = key
        return self

    # --- Derived values ---

    @cached_property
    def mail_from_address(self) -> str:
        """`newsletter@news.example.fr` out of `L'Hebdo <newsletter@news.example.fr>`."""
        return parseaddr(self.mail_from)[1]

    @cached_property
    def mail_domain(self) -> str:
        """The sending domain: Message-IDs, List-Id and DKIM are in its name."""
        return self.mail_from_address.rsplit("@", 1)[1].lower()

    @property
    def send_weekday(self) -> int:
        return self.send_schedule.weekday

    @property
    def send_time(self) -> time:
        return self.send_schedule.clock

    @cached_property
    def dkim_key(self) -> bytes | None:
        """The PEM private key read from HEBDO_DKIM_KEY_FILE; None when mail is not signed.
        Cached as a plain attribute: a private attribute of a pydantic model is looked up
        through its __getattr__ (4 µs), and every message asks for it."""
        return self._dkim_key

    @cached_property
    def broker_transport_options(self) -> dict[str, Any]:
        """kombu's options for the broker in use."""
        if self.broker_url.startswith("filesystem://"):
            folder = self.data_dir / "broker"
            return {
                # One folder in and out: producers and consumers on this machine share it.
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                # Absolute, or kombu uses ./control relative to whatever cwd a process has.
                "control_folder": str(folder / "control"),
                # Consumed messages are deleted, so the folder does not grow.
                "store_processed": False,
                "polling_interval": 0.2,
            }
        if self.broker_url.startswith(("redis://", "rediss://")):
            return {
                # Must exceed the longest task (see worker.celery_app task_time_limit):
                # an unacknowledged message is redelivered after this many seconds.
                "visibility_timeout": 3600,
                "socket_connect_timeout": 2,
            }
        return {}

    @property
    def capture_mail(self) -> bool:
        """True when no SMTP relay is configured: mail is written to the data folder."""
        return not self.smtp_host

    @property
    def mail_capture_dir(self) -> Path:
        """`mail` in the data folder for its own SQLite database; for any other database a
        folder named after it, so runs on SQLite and on PostgreSQL from one data folder do
        not mix their mail in /dev/mailbox."""
        if self.database_url == f"sqlite:///{self.data_dir / 'hebdo.sqlite3'}":
            return self.data_dir / "mail"
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url)
        parts = (url.get_backend_name(), url.host, url.port, Path(url.database or "").name)
        name = "-".join(str(p) for p in parts if p)
        return self.data_dir / f"mail-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}"

    @cached_property
    def broker_folders(self) -> tuple[Path, ...]:
        """The folders of kombu's file-system broker (none for another broker)."""
        options = self.broker_transport_options
        return tuple(Path(options[k]) for k in ("data_folder_in", "control_folder") if k in options)

    @cached_property
    def signing_keys(self) -> tuple[str, ...]:
        """Oldest first, current last: the order itsdangerous expects for rotation."""
        return (*reversed(self.secret_key_fallbacks), self.secret_key)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with `update` applied (tests swap keys this way), its derived values worked
        out again from the copy's own settings rather than carried over from this one's."""
        copied = super().model_copy(update=update, deep=deep)
        for name, member in vars(type(self)).items():
            if isinstance(member, cached_property):
                copied.__dict__.pop(name, None)
        return copied

    def public(self) -> dict[str, Any]:
        """Settings safe to print: secrets masked, and so are the passwords in URLs."""
        shown: dict[str, Any] = {}
        for name in (*type(self).model_fields, *_DERIVED):
            value = getattr(self, name)
            if value and (name in _SECRETS or name == "dkim_key"):
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = _without_password(value)
            shown[name] = value
        return shown


# Derived values `public()` shows beside the settings.
_DERIVED = (
    "mail_from_address",
    "mail_domain",
    "send_weekday",
    "send_time",
    "dkim_key",
    "broker_transport_options",
)


def _without_password(url: str) -> str:
    try:
        parts = urlsplit(url)
        if not parts.password:
            return url
    except ValueError:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# --- What the declaration tells the rest: names, reference, messages -----------------


def env_name(field: str) -> str:
    """`smtp_port` → `HEBDO_SMTP_PORT`."""
    return ENV_PREFIX + field.upper()


def _extra(field: str) -> dict[str, Any]:
    extra = Settings.model_fields[field].json_schema_extra
    return extra if isinstance(extra, dict) else {}


# Every setting's environment name, in the order of the declaration.
SETTING_NAMES: tuple[str, ...] = tuple(env_name(f) for f in Settings.model_fields)
_FIELDS_BY_NAME = {env_name(f): f for f in Settings.model_fields}
_SECRETS = frozenset(f for f in Settings.model_fields if _extra(f).get("secret"))
_VERBATIM = frozenset(f for f in Settings.model_fields if _extra(f).get("verbatim"))
_EXPECTS = {f: str(_extra(f)["expects"]) for f in Settings.model_fields if "expects" in _extra(f)}


def _choices(field: str) -> tuple[str, ...]:
    """The values a Literal setting takes (HEBDO_LOG_LEVEL's are inside an Annotated)."""
    annotation: Any = Settings.model_fields[field].annotation
    args = get_args(annotation)
    return tuple(str(a) for a in args if isinstance(a, str))


def _number(value: object) -> str:
    """`1024`, `0.5`: a constraint as the reference writes it (no `0.0`, no exponent)."""
    number = float(str(value))
    return str(int(number)) if number.is_integer() else str(number)


def _complaint(error: Mapping[str, Any]) -> str:
    """One pydantic error as hebdo says it: the setting, what is expected, what was given."""
    context = error.get("ctx") or {}
    if not error["loc"]:
        # A rule across settings (`_check_combinations`): its message names them.
        return str(context.get("error", error["msg"]))
    field = str(error["loc"][0])
    name, given, kind = env_name(field), error["input"], error["type"]
    if field in _EXPECTS:
        return f"{name} {_EXPECTS[field]}, got {given!r}"
    if kind == "value_error":
        # hebdo's validators say what they expect and what they got, after the name.
        return f"{name} {context['error']}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{name} must be a whole number, got {given!r}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{name} must be a number, got {given!r}"
    if kind == "greater_than_equal":
        return f"{name} must be at least {_number(context['ge'])}, got {given}"
    if kind == "greater_than":
        bound = _number(context["gt"])
        return f"{name} must be {'positive' if bound == '0' else 'above ' + bound}, got {given}"
    if kind == "less_than_equal":
        return f"{name} must be at most {_number(context['le'])}, got {given}"
    if kind == "literal_error":
        return f"{name} must be one of {', '.join(_choices(field))}, got {given!r}"
    return f"{name}: {error['msg'].lower()}, got {given!r}"


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source (prefix, case, one variable per field) over
    the mapping it is given rather than `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The source matches lower-case names; only exact HEBDO_ names get this far.
        return {k.lower(): v for k, v in self._environ.items() if k.startswith(ENV_PREFIX)}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ` (default: the process environment), and nothing else.

    Raises ConfigError with one line naming every bad setting: an unknown HEBDO_* name
    (a typo would otherwise be silently ignored), a malformed value, a broken rule.
    """
    source = os.environ if environ is None else environ
    unknown = sorted(k for k in source if k.startswith(ENV_PREFIX) and k not in _FIELDS_BY_NAME)
    if unknown:
        # A typo is the usual cause: name the setting it was probably meant to be.
        guesses = [
            close[0]
            for name in unknown
            if (close := difflib.get_close_matches(name, SETTING_NAMES, n=1, cutoff=0.8))
        ]
        hint = f"; did you mean {', '.join(guesses)}?" if guesses else ""
        raise ConfigError(
            f"unknown setting(s): {', '.join(unknown)} "
            f"(see {REFERENCE_FILE} or `hebdo config --reference`){hint}"
        )
    given: dict[str, Any] = {
        field: value if field in _VERBATIM or not isinstance(value, str) else value.strip()
        for field, value in _MappingSource(Settings, source)().items()
    }
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError("; ".join(_complaint(e) for e in exc.errors())) from None


# --- The reference --------------------------------------------------------------------

_REFERENCE_INTRO = f"""\
# Configuration

<!-- Generated from service/config.py by `hebdo config --reference > {REFERENCE_FILE}`.
     Edit the declaration there, not this file: a test fails when the two differ. -->

Every setting is an environment variable read when the app starts; `hebdo config` prints
what is in force, secrets masked. Surrounding spaces are ignored (except in
`HEBDO_SMTP_PASSWORD`), on/off settings take `1` or `0`, lists are comma-separated. A
malformed value, a broken rule between settings or an unknown `HEBDO_*` name stops the
start with one line that names the setting; `hebdo doctor` also warns about what loads but
should not be left so in production.

"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """docs/configuration.md: the intro, then one table row per setting, in the
    declaration's order, with its default and its meaning."""
    rows = ["| Setting | Default | Meaning |", "| --- | --- | --- |"]
    for field, info in Settings.model_fields.items():
        default = str(_extra(field).get("shown_default", info.default))
        shown = f"`{_cell(default)}`" if default else "*empty*"
        rows.append(f"| `{env_name(field)}` | {shown} | {_cell(info.description or '')} |")
    return _REFERENCE_INTRO + "\n".join(rows) + "\n"
