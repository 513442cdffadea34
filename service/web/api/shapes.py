"""Every shape the JSON API takes or gives, declared once as a pydantic model: the views
validate requests and write answers with these models, and /openapi.json is generated
from them (see `openapi`), so the checks, the answers and the document cannot drift.

Field limits come from where the data lives (the models' columns, the domain's own
limits), never a second literal here.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
)

from service.digest import actions
from service.digest.intro import INTRO_MAX
from service.inbound.complaints import Result as ComplaintResult
from service.models import Article, DeliveryStatus, InboundVerdict, IssueStatus, Status
from service.signup.screening import blank_is_none, unicode_text
from service.subscribers.bulk import MAX_BULK, REASON_MAX, Outcome
from service.subscribers.csv_io import OUTCOMES as IMPORT_OUTCOMES
from service.subscribers.search import MAX_ID, MAX_LIMIT, FilterQuery

# ---------------------------------------------------------------- building blocks

# Aware datetimes written as Python writes them (`2026-11-30T07:00:00+00:00`).
Timestamp = Annotated[
    datetime,
    PlainSerializer(lambda moment: moment.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
WEEK_PATTERN = r"^\d{4}-W\d{2}$"
EXAMPLE_WEEK = "2026-W48"


def _lenient_int(value: Any) -> Any:
    """A query value that is not a whole number in range is ignored, as the browser page's
    links are (ASCII digits only: `"²".isdigit()` is true)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) <= MAX_ID:
        return int(value)
    return None


def Text(limit: int, description: str = "") -> Any:  # a type, read as one
    """An optional text field: null or empty means none; trimmed."""
    return Annotated[
        Annotated[str, Field(max_length=limit)] | None,
        BeforeValidator(blank_is_none),
        BeforeValidator(unicode_text),
        Field(default=None, description=description or None),
    ]


class Shape(BaseModel):
    """Request shapes refuse fields they do not know; answers are written, never read."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


_MESSAGES = {
    "string_type": "{field} must be a string",
    "string_too_long": "{field} is longer than {max_length} characters",
    "string_too_short": "{field} must not be empty",
    "string_pattern_mismatch": "{field} must match {pattern}",
    "extra_forbidden": "unknown field(s): {field}",
    "missing": "{field} is required",
    "literal_error": "{field} must be one of {expected}",
    "enum": "{field} must be one of {expected}",
    "list_type": "{field} must be a list",
    "too_long": "{field} has more than {max_length} items",
}


def describe(error: ValidationError) -> str:
    """The first problem of a validation, as one sentence that names the field (the
    top-level one: a union's member or a list's index is pydantic's detail, not the
    reader's)."""
    first = error.errors(include_url=False)[0]
    loc = first["loc"]
    field = str(loc[0]) if loc else "the body"
    kind = first["type"]
    if kind == "extra_forbidden":
        field = ", ".join(sorted(str(e["loc"][0]) for e in error.errors() if e["type"] == kind))
    if kind == "string_type" and any(isinstance(part, int) for part in loc):
        return f"{field} must be a list of strings"
    if kind == "too_long" and isinstance(first.get("input"), str):
        kind = "string_too_long"
    template = _MESSAGES.get(kind)
    if template is None:
        message = re.sub(r"^Value error, ", "", str(first["msg"]))
        return message if message.startswith(field) else f"{field} {message}"
    return template.format(**{**(first.get("ctx") or {}), "field": field})


class Error(BaseModel):
    """Every refusal of the API: a code for programs, a sentence for people."""

    error: str
    message: str


# ---------------------------------------------------------------- sign-up (public)


class SignupAccepted(BaseModel):
    status: Literal["accepted"]
    message: str
    suggestion: str | None = Field(default=None, description="The address with a likely typo fixed")
    suggestion_message: str | None = None


class SignupFormQuery(BaseModel):
    lang: str | None = Field(
        default=None,
        examples=["en"],
        description="The page's language tag (`fr`, `en`, `en-GB`…): French or English. Any "
        "other value falls back to Accept-Language, then French, as the box's host page "
        "may be in any language.",
    )


class SignupForm(BaseModel):
    """What the embedded box needs on load."""

    ts: str
    min_seconds: float
    consent: dict[str, str] | None
    captcha: dict[str, str] | None
    honeypot: str
    messages: dict[str, str]


# ---------------------------------------------------------------- reader preferences (public)

CATEGORY_MAX = Article.__table__.c.category.type.length


class CategoryCount(BaseModel):
    name: str
    articles: int = Field(description="Articles of this category over the last 4 weeks")


class PreferencesOut(BaseModel):
    """A reader's choices, as the preference link's holder sees them."""

    categories: list[str] = Field(description="The categories wanted; empty: every category")
    locale: Literal["fr", "en"]
    paused_until: date | None = Field(
        description="The digest is skipped until this day (null: not paused)"
    )
    available: list[CategoryCount] = Field(
        description="The categories one may choose, with their recent article counts"
    )


class PreferencesIn(Shape):
    """The choices to change: a field left out stays as it is."""

    categories: list[Annotated[str, Field(max_length=CATEGORY_MAX)]] | None = Field(
        default=None,
        max_length=200,
        description="Categories from `available` (else 422); empty: every category",
    )
    locale: Literal["fr", "en"] | None = None
    paused_until: date | None = Field(
        default=None,
        description="A day after today, at most 8 weeks away (else 422); null: resume now",
    )

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [{"categories": ["Culture"], "locale": "fr", "paused_until": None}]
        },
    )


# ---------------------------------------------------------------- token API


def _timestamp_or_none(value: Any) -> Any:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError("must be ISO 8601")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be ISO 8601") from None
    if moment.tzinfo is None:
        raise ValueError("needs a time zone, e.g. 2026-11-23T08:00:00+01:00")
    if not 1970 <= moment.year <= 2100:
        raise ValueError("must be between 1970 and 2100")
    return moment


class ArticleIn(Shape):
    """An article pushed by the CMS."""

    id: Text(512, "The CMS's id for the article")  # type: ignore[valid-type]
    url: Annotated[
        str,
        BeforeValidator(unicode_text),
        Field(
            max_length=2000,
            # The scheme in any case, as the domain reads it (`HTTPS://` is a web URL too).
            pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]",
            description="Absolute http(s) URL (else 422)",
        ),
    ]
    title: Annotated[
        str,
        BeforeValidator(unicode_text),
        Field(
            min_length=1,
            max_length=2000,
            description="Plain text once any HTML is removed; an empty one is refused (422)",
        ),
    ]
    summary: Text(20000, "HTML is reduced to text")  # type: ignore[valid-type]
    category: Text(200)  # type: ignore[valid-type]
    author: Text(500)  # type: ignore[valid-type]
    image_url: Text(2000, "Left out unless an absolute http(s) URL")  # type: ignore[valid-type]
    published_at: Annotated[
        datetime | None,
        BeforeValidator(_timestamp_or_none),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "format": "date-time", "maxLength": 64},
                    {"enum": ["", None]},
                ],
                "description": "With a time zone, 1970 to 2100 (else 422); none: when first "
                "received",
            }
        ),
    ] = None
    language: Text(16, "`fr`, `en`, `pt-BR`…; unreadable: French")  # type: ignore[valid-type]

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "cms-48213",
                    "url": "https://news.example.fr/monde/2026/11/26/cop31",
                    "title": "COP31 : ce qui a été décidé",
                    "category": "International",
                    "published_at": "2026-11-26T08:00:00+01:00",
                }
            ]
        },
    )


class StoredArticle(BaseModel):
    id: int
    created: bool


class ComplaintOutcome(BaseModel):
    result: Annotated[
        ComplaintResult,
        Field(
            description="complained: the subscriber was marked complained and suppressed; "
            "duplicate: they had already complained; unknown: about this list, but no "
            "subscriber matches (erased, address redacted); ignored: not a complaint "
            "(not-spam, auth-failure) or about another mail stream"
        ),
    ]
    reason: str
    subscriber_id: int | None
    issue: str | None = Field(
        description="The week of the issue reported (null: a confirmation mail)"
    )


class InboundQuery(BaseModel):
    """The envelope, when the relay posting the mail knows it."""

    sender: str | None = Field(
        default=None,
        max_length=320,
        pattern=r"^[^\x00-\x1f\s]*$",
        description="The envelope sender (MAIL FROM); empty: the null sender of a bounce.",
    )
    recipient: str | None = Field(
        default=None,
        max_length=320,
        pattern=r"^[^\x00-\x1f\s]+$",
        description="The envelope recipient (RCPT TO): the VERP or unsubscribe address.",
    )


class InboundOutcome(BaseModel):
    id: int = Field(description="The record's id (the admin page /admin/inbound/<id>)")
    kind: Literal["bounce", "complaint", "unsubscribe", "auto_reply", "reply", "notice"]
    verdict: InboundVerdict
    rule: str = Field(description="What decided the verdict (`dsn 5.1.1`, `Auto-Submitted…`)")
    subscriber_id: int | None
    issue: str | None = Field(description="The week of the issue it was about, when known")
    replay: bool = Field(description="These bytes came this way before: the first verdict")


# ---------------------------------------------------------------- admin API: subscribers


class Subscriber(BaseModel):
    id: int
    email: str
    status: Status
    locale: str
    created_at: Timestamp
    confirmed_at: Timestamp | None
    source: str | None


class Consent(BaseModel):
    at: Timestamp
    source: str | None
    text_version: str | None
    ip: str | None = Field(default=None, description="Admin tokens only, as user_agent")
    user_agent: str | None = None


class AuditEvent(BaseModel):
    id: int
    created_at: Timestamp
    actor: str
    action: str
    subject: str | None
    subscriber_id: int | None
    before_status: str | None
    after_status: str | None
    ip: str | None = Field(default=None, description="Admin tokens only")
    detail: dict[str, Any] | None = Field(
        description="What else the event records; an editor's view has no IP or browser in it"
    )


class DeliveryLine(BaseModel):
    week: str
    status: DeliveryStatus
    attempts: int
    sent_at: Timestamp | None
    error: str | None


class SubscriberRecord(Subscriber):
    """A subscriber with the proof of consent, history and deliveries."""

    unsubscribed_at: Timestamp | None
    unsubscribe_channel: str | None
    consent: Consent
    history: list[AuditEvent]
    deliveries: list[DeliveryLine]


class SubscriberQuery(FilterQuery):
    cursor: str | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class SubscriberPage(BaseModel):
    items: list[Subscriber]
    next_cursor: str | None
    counts: dict[Status, int] | None = Field(
        default=None, description="Subscribers per status, on the first page only"
    )


class SubscriberPatch(Shape):
    status: Literal["unsubscribed", "pending", "bounced"]
    reason: Annotated[str, BeforeValidator(unicode_text), Field(max_length=REASON_MAX)] = ""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "unsubscribed", "reason": "asked by phone"}]},
    )


class PatchResult(BaseModel):
    result: Literal[Outcome.DONE, Outcome.ALREADY]
    subscriber: Subscriber


class Unsubscribes(Shape):
    # At most MAX_BULK, refused by the bulk action itself (`too_many`), as a pasted list is.
    emails: Annotated[list[str], Field(json_schema_extra={"maxItems": MAX_BULK})]
    reason: Annotated[str, BeforeValidator(unicode_text), Field(max_length=REASON_MAX)] = ""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "emails": ["reader1@exemple.fr", "reader2@exemple.fr"],
                    "reason": "asked by mail",
                }
            ]
        },
    )


class BulkResult(BaseModel):
    email: str = Field(description="As given")
    result: Outcome
    reason: str | None


class BulkReport(BaseModel):
    results: list[BulkResult]
    counts: dict[Outcome, int]


class ImportLine(BaseModel):
    line: int
    email: str
    outcome: Literal[IMPORT_OUTCOMES]  # type: ignore[valid-type]
    code: str
    reason: str


class ImportReport(BaseModel):
    dry_run: bool
    filename: str
    counts: dict[Literal[(*IMPORT_OUTCOMES, "total")], int]  # type: ignore[valid-type]
    ignored_columns: list[str]
    lines: list[ImportLine] = Field(
        description="The lines that add nobody, in order (at most 1,000)"
    )
    truncated: bool


class ImportQuery(BaseModel):
    dry_run: Literal["1", "true", "yes", "", "0", "false", "no"] | None = Field(
        default=None, description="`0`, `false` or `no` imports; absent or else a dry run."
    )
    filename: str | None = Field(
        default=None,
        description="The file's name for the report and the consent source "
        "(`import:<name>`) when the body has none (text/csv).",
    )


class AuditQuery(BaseModel):
    """As the browser page's links: a number that is not one in range is ignored."""

    action: str | None = Field(default=None, pattern=r"^[^\x00]*$", examples=["unsubscribe"])
    actor: str | None = Field(default=None, pattern=r"^[^\x00]*$", examples=["admin:alice"])
    subscriber_id: Annotated[
        int | None,
        BeforeValidator(_lenient_int),
        Field(ge=1, le=MAX_ID, description="Events about this subscriber; anything else: ignored."),
    ] = None
    before: Annotated[
        int | None,
        BeforeValidator(_lenient_int),
        Field(
            ge=1,
            le=MAX_ID,
            description="Events older than this id (`next_before`); anything else: ignored.",
        ),
    ] = None
    limit: Annotated[
        int | None,
        BeforeValidator(_lenient_int),
        Field(ge=1, le=1000, description="Events a page (default 100); anything else: ignored."),
    ] = None


class AuditPage(BaseModel):
    items: list[AuditEvent]
    next_before: int | None


# ---------------------------------------------------------------- admin API: issues


class IssueFigures(BaseModel):
    """An issue's deliveries per outcome, and the feedback-loop complaints about it."""

    week: str
    status: IssueStatus
    note: str | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    recipients: int
    sent: int
    failed: int
    bounced: int
    skipped: int
    pending: int = Field(description="Still to go: queued, or being sent")
    complaints: int
    hard_bounces: int = Field(
        description="Bounced at the relay (`bounced`) and by a DSN or provider event later"
    )
    soft_bounces: int = Field(description="Deliveries a DSN said failed for now")
    mailto_unsubscribes: int = Field(description="Readers who unsubscribed by mail after it")


class IssueSummary(IssueFigures):
    """An issue in the list."""

    subject: str
    send_at: Timestamp


class IssueProgress(IssueFigures):
    """How far the send has gone, at the last minute's pace (the admin's live panel)."""

    done: int
    percent: float = Field(ge=0, le=100)
    rate: float = Field(description="Messages a second, the last minute")
    eta_seconds: int | None


class IssueArticle(BaseModel):
    position: int
    title: str
    url: str
    category: str | None
    clicks: int = Field(
        ge=0,
        description="Readers' clicks on this article's link in the mail (no reader is "
        "identified; scanners, HEAD and the burst right after the send are not counted)",
    )


class Issue(IssueProgress):
    """One issue with its progress and articles."""

    subject: str
    send_at: Timestamp
    intro: str | None = Field(
        default=None, description="The editor's note; null: the locale's default intro"
    )
    articles: list[IssueArticle]


class IssuePatch(Shape):
    """The editor's steering of an issue before it goes out: its note, its lead story."""

    intro: str | None = Field(
        default=None,
        max_length=INTRO_MAX,
        description=(
            "The editor's note at the top of the mail, its text part and the archive: plain "
            "text, a blank line between paragraphs, links as `https://…` or "
            "`[words](https://…)`; HTML is removed. Empty or null: the locale's default intro"
        ),
    )
    lead: int | None = Field(
        default=None,
        ge=1,
        description="Id of the article that leads the issue (the coming issue only)",
    )

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [{"intro": "Bonjour !\n\nCette semaine : https://exemple.fr/dossier"}]
        },
    )


class IssuePatchResult(BaseModel):
    week: str
    status: IssueStatus
    intro: str | None
    needs_approval: bool = Field(
        description="Review mode: the change took an approved issue back to draft"
    )


class IssueList(BaseModel):
    items: list[IssueSummary]


class TestSend(Shape):
    """The issue's test send: to any address (not a suppressed one), marked [TEST]."""

    to: Annotated[str, Field(json_schema_extra={"format": "email"})]
    locale: Literal["fr", "en"] | None = Field(
        default=None, description="Default: the subscriber's, else French"
    )

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"to": "redaction@exemple.fr", "locale": "fr"}]},
    )


class IssueActionResult(BaseModel):
    week: str
    status: IssueStatus
    articles: int | None = Field(default=None, description="plan: articles in the issue")
    recipients: int | None = Field(default=None, description="send: deliveries planned")
    queued: int | None = Field(default=None, description="send: batches queued")
    to: str | None = Field(default=None, description="test: the address it went to")
    reply: str | None = Field(
        default=None, description="test: the mail server's answer (admin tokens only)"
    )


# The actions a POST /issues/{week}/{action} takes (test has its own route: it takes a body).
ISSUE_ACTIONS = tuple(a for a in actions.ACTIONS if a != "test")
