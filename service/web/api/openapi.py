"""The OpenAPI 3.1 description of hebdo's JSON API, served at /openapi.json.

Written by hand beside the views rather than generated: the views validate their
input themselves (with messages that name the field), and a test checks that every
/api route and method is described here and that nothing here is missing a route.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from service.models import DeliveryStatus, IssueStatus, Status
from service.subscribers.bulk import Outcome
from service.subscribers.csv_io import OUTCOMES
from service.subscribers.search import MAX_ID

bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _nullable_string(limit: int, description: str = "") -> dict[str, Any]:
    """An optional text field of a pushed article: null or empty means none."""
    schema: dict[str, Any] = {"type": ["string", "null"], "maxLength": limit}
    if description:
        schema["description"] = description
    return schema


def _error_or_page(description: str) -> dict[str, Any]:
    """A sign-up refusal: JSON for the embedded box, an HTML page for a form post (the same
    markup without JavaScript, whose visitor must see a page, not a JSON body)."""
    return {
        "description": description + " (form posts: an HTML page saying so)",
        "content": {
            "application/json": {"schema": _ref("Error")},
            "text/html": {"schema": {"type": "string"}},
        },
    }


def _with_header(response: dict[str, Any], name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`response`, always sent with the header `name`."""
    return {**response, "headers": {name: {"required": True, "schema": schema}}}


UNAUTHORIZED = _with_header(
    _error("No valid bearer token"), "WWW-Authenticate", {"type": "string", "pattern": "^Bearer "}
)
AUTH_ERRORS = {
    "401": UNAUTHORIZED,
    "403": _error("The token's role may not do this"),
}
WEEK = {
    "name": "week",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^\d{4}-W\d{2}$"},
    "example": "2026-W48",
}
# Ids are PostgreSQL `integer`s (MAX_ID): anything beyond is nobody (404), never an error.
SUBSCRIBER_ID = {
    "name": "subscriber_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}
# Text filters hold no NUL character (none is stored: PostgreSQL text cannot): else 422.
TEXT = {"type": "string", "pattern": "^[^\\x00]*$"}
# An empty value is no filter: the list page's form sends its empty fields.
DATE_FILTER = {"anyOf": [{"type": "string", "format": "date"}, {"const": ""}]}
FILTERS = [
    {"name": "q", "in": "query", "schema": {**TEXT, "maxLength": 320},
     "description": "Substring of the address, case- and accent-insensitive."},
    {"name": "status", "in": "query", "schema": {"type": "string"},
     "description": "One status, or several separated by commas."},
    {"name": "locale", "in": "query", "schema": {**TEXT, "maxLength": 8}},
    {"name": "source", "in": "query", "schema": {**TEXT, "maxLength": 2048},
     "description": "Prefix of the consent source (page URL, `import:<file>`, `admin:<name>`)."},
    {"name": "since", "in": "query", "schema": DATE_FILTER,
     "description": "Signed up on or after this day (UTC); empty: no filter."},
    {"name": "until", "in": "query", "schema": DATE_FILTER,
     "description": "Signed up on or before this day (UTC); empty: no filter."},
    {"name": "sort", "in": "query",
     "schema": {"type": "string", "enum": ["newest", "oldest", "email", "-email", ""]},
     "description": "Empty: `newest`, the default."},
]  # fmt: skip
ISSUE_ACTIONS = ("plan", "approve", "send", "pause", "resume", "cancel", "test")
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
SUBSCRIBER_STATUSES = [s.value for s in Status]
ISSUE_STATUSES = [s.value for s in IssueStatus]
DELIVERY_STATUSES = [s.value for s in DeliveryStatus]
BULK_RESULTS = [o.value for o in Outcome]
IMPORT_OUTCOMES = list(OUTCOMES)
# An issue's deliveries by outcome, and the feedback-loop complaints about it, as the list
# and one issue give them.
DELIVERY_FIGURES = ("sent", "failed", "bounced", "skipped", "pending", "complaints")

# An issue in the list; one issue (GET /api/v1/admin/issues/{week}) adds its progress.
ISSUE_SUMMARY_REQUIRED = ["week", "subject", "status", "send_at", "recipients", *DELIVERY_FIGURES]
ISSUE_SUMMARY_PROPERTIES: dict[str, Any] = {
    "week": {"type": "string"},
    "subject": {"type": "string"},
    "status": {"type": "string", "enum": ISSUE_STATUSES},
    "note": {"type": ["string", "null"]},
    "send_at": TIME,
    "started_at": NULLABLE_TIME,
    "finished_at": NULLABLE_TIME,
    "recipients": {"type": "integer"},
    **{name: {"type": "integer"} for name in DELIVERY_FIGURES},
}

SCHEMAS: dict[str, Any] = {
    "StoredArticle": {
        "type": "object",
        "required": ["id", "created"],
        "properties": {"id": {"type": "integer"}, "created": {"type": "boolean"}},
        "additionalProperties": False,
    },
    "ComplaintOutcome": {
        "type": "object",
        "required": ["result", "reason", "subscriber_id", "issue"],
        "properties": {
            "result": {
                "enum": ["complained", "duplicate", "unknown", "ignored"],
                "description": "complained: the subscriber was marked complained and "
                "suppressed; duplicate: they had already complained; unknown: about this "
                "list, but no subscriber matches (erased, address redacted); ignored: not a "
                "complaint (not-spam, auth-failure) or about another mail stream",
            },
            "reason": {"type": "string"},
            "subscriber_id": {"type": ["integer", "null"]},
            "issue": {
                "type": ["string", "null"],
                "description": "The week of the issue reported (null: a confirmation mail)",
            },
        },
        "additionalProperties": False,
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "Subscriber": {
        "type": "object",
        "required": ["id", "email", "status", "locale", "created_at", "confirmed_at", "source"],
        "properties": {
            "id": {"type": "integer"},
            "email": {"type": "string"},
            "status": {"type": "string", "enum": SUBSCRIBER_STATUSES},
            "locale": {"type": "string"},
            "created_at": TIME,
            "confirmed_at": NULLABLE_TIME,
            "source": {"type": ["string", "null"]},
        },
    },
    "SubscriberRecord": {
        "description": "A subscriber with the proof of consent, history and deliveries",
        "allOf": [
            _ref("Subscriber"),
            {
                "type": "object",
                "required": [
                    "unsubscribed_at",
                    "unsubscribe_channel",
                    "consent",
                    "history",
                    "deliveries",
                ],
                "properties": {
                    "unsubscribed_at": NULLABLE_TIME,
                    "unsubscribe_channel": {"type": ["string", "null"]},
                    "consent": {
                        "type": "object",
                        "required": ["at", "source", "text_version"],
                        "properties": {
                            "at": TIME,
                            "source": {"type": ["string", "null"]},
                            "text_version": {"type": ["string", "null"]},
                            "ip": {
                                "type": ["string", "null"],
                                "description": "Admin tokens only, as user_agent",
                            },
                            "user_agent": {"type": ["string", "null"]},
                        },
                    },
                    "history": {"type": "array", "items": _ref("AuditEvent")},
                    "deliveries": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["week", "status", "attempts", "sent_at", "error"],
                            "properties": {
                                "week": {"type": "string"},
                                "status": {"type": "string", "enum": DELIVERY_STATUSES},
                                "attempts": {"type": "integer"},
                                "sent_at": NULLABLE_TIME,
                                "error": {"type": ["string", "null"]},
                            },
                        },
                    },
                },
            },
        ],
    },
    "AuditEvent": {
        "type": "object",
        "required": ["id", "created_at", "actor", "action"],
        "properties": {
            "id": {"type": "integer"},
            "created_at": TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "subject": {"type": ["string", "null"]},
            "subscriber_id": {"type": ["integer", "null"]},
            "before_status": {"type": ["string", "null"]},
            "after_status": {"type": ["string", "null"]},
            "ip": {"type": ["string", "null"]},
            "detail": {"type": ["object", "null"]},
        },
    },
    "BulkResult": {
        "type": "object",
        "required": ["email", "result", "reason"],
        "properties": {
            "email": {"type": "string", "description": "As given"},
            "result": {"type": "string", "enum": BULK_RESULTS},
            "reason": {"type": ["string", "null"]},
        },
    },
    "IssueSummary": {
        "type": "object",
        "required": ISSUE_SUMMARY_REQUIRED,
        "properties": ISSUE_SUMMARY_PROPERTIES,
    },
    "Issue": {
        "type": "object",
        "required": [
            *ISSUE_SUMMARY_REQUIRED,
            "done",
            "percent",
            "rate",
            "eta_seconds",
            "articles",
        ],
        "properties": {
            **ISSUE_SUMMARY_PROPERTIES,
            "done": {"type": "integer"},
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "rate": {"type": "number", "description": "Messages a second, the last minute"},
            "eta_seconds": {"type": ["integer", "null"]},
            "articles": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["position", "title", "url", "category"],
                    "properties": {
                        "position": {"type": "integer"},
                        "title": {"type": "string"},
                        "url": {"type": "string"},
                        "category": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
    "IssueActionResult": {
        "type": "object",
        "required": ["week", "status"],
        "properties": {
            "week": {"type": "string"},
            "status": {"type": "string", "enum": ISSUE_STATUSES},
            "articles": {"type": "integer", "description": "plan: articles in the issue"},
            "recipients": {"type": "integer", "description": "send: deliveries planned"},
            "queued": {"type": "integer", "description": "send: batches queued"},
            "to": {"type": "string", "description": "test: the address it went to"},
            "reply": {"type": "string", "description": "test: the mail server's answer"},
        },
    },
    "ImportReport": {
        "type": "object",
        "required": ["dry_run", "filename", "counts", "ignored_columns", "lines", "truncated"],
        "properties": {
            "dry_run": {"type": "boolean"},
            "filename": {"type": "string"},
            "counts": {
                "type": "object",
                "required": [*IMPORT_OUTCOMES, "total"],
                "additionalProperties": {"type": "integer"},
            },
            "ignored_columns": {"type": "array", "items": {"type": "string"}},
            "lines": {
                "description": "The lines that add nobody, in order (at most 1,000)",
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["line", "email", "outcome", "code", "reason"],
                    "properties": {
                        "line": {"type": "integer"},
                        "email": {"type": "string"},
                        "outcome": {"type": "string", "enum": IMPORT_OUTCOMES},
                        "code": {"type": "string"},
                        "reason": {"type": "string"},
                    },
                },
            },
            "truncated": {"type": "boolean"},
        },
    },
}

# The sign-up's fields, as JSON from the embedded box or as the form's fields. The optional
# ones take null as if absent.
SIGNUP = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {
            "type": "string",
            "format": "email",
            "maxLength": 320,
            "description": "Checked for syntax (and, with HEBDO_CHECK_DELIVERABILITY, for "
            "its domain's DNS records): else 422.",
        },
        "locale": {
            "type": ["string", "null"],
            "maxLength": 35,
            "example": "fr",
            "description": "`fr` or `en` (a tag such as `en-GB` counts); any other value: "
            "Accept-Language's, then French.",
        },
        "source": {
            "type": ["string", "null"],
            "maxLength": 2048,
            "description": "The page the box was on, recorded as the consent's source when "
            "it is on an allowed origin.",
        },
        "consent": {
            "anyOf": [{"type": "string", "maxLength": 64}, {"enum": [True, None]}],
            "description": "The version of the consent text shown; absent, empty or `true`: "
            "HEBDO_CONSENT_VERSION.",
        },
        "consent_given": {
            "description": "The consent box: ticked is `true`, `1` or one of the strings "
            '`"1"`, `"on"`, `"true"`, `"yes"`; anything else is not. Required (else 422) '
            "when HEBDO_CONSENT_TEXT is set.",
        },
        # No type for these three: a post caught by them gets the answer any post gets (a
        # bot must not learn what gave it away), so every value is answered alike.
        "ts": {
            "description": "The form token (a string) from /subscriptions/form. A post with "
            "anything but a valid one, old enough, gets the same answer as any other, and "
            "nothing is stored.",
        },
        "website": {
            "description": "The honeypot: left out or empty by people. A post with anything "
            "in it gets the same answer as any other, and nothing is stored.",
        },
        "captcha_token": {
            "description": "The CAPTCHA's answer (a string) when the last answer asked for "
            "one (400 `captcha_required`); ignored otherwise.",
        },
    },
}

# The issue's test send: to any address (not a suppressed one), marked [TEST].
TEST_SEND = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["to"],
                "properties": {
                    "to": {"type": "string", "format": "email"},
                    "locale": {
                        "enum": ["fr", "en", None],
                        "description": "Default: the subscriber's, else French",
                    },
                },
            },
            "example": {"to": "redaction@exemple.fr", "locale": "fr"},
        }
    },
}


PATHS: dict[str, Any] = {
    "/api/v1/subscriptions": {
        "post": {
            "summary": "Sign up an address (double opt-in: a confirmation mail follows)",
            "description": "The answer never says whether the address was already known.",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": SIGNUP,
                        "example": {
                            "email": "lectrice@exemple.fr",
                            "locale": "fr",
                            "consent_given": True,
                        },
                    },
                    # The same markup without JavaScript.
                    "application/x-www-form-urlencoded": {
                        "schema": SIGNUP,
                        "example": {"email": "lectrice@exemple.fr", "locale": "fr"},
                    },
                },
            },
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "required": ["status", "message"],
                        "properties": {
                            "status": {"const": "accepted"},
                            "message": {"type": "string"},
                            "suggestion": {
                                "type": "string",
                                "description": "The address with a likely typo fixed",
                            },
                            "suggestion_message": {"type": "string"},
                        },
                    },
                    "Accepted (JSON posts)",
                ),
                "303": {"description": "Form posts: redirect to the thank-you page"},
                "400": _error_or_page(
                    "Malformed body; or captcha_required/captcha_failed, with the widget"
                ),
                "403": _error_or_page(
                    "Posted from a page whose Origin is not in HEBDO_ALLOWED_ORIGINS"
                ),
                "413": _error("Body too large"),
                "415": _error("Unsupported media type"),
                "422": _error_or_page(
                    "Invalid address (the message says why), or consent not given"
                ),
                "429": _with_header(
                    _error_or_page("Too many attempts (per IP, network or address)"),
                    "Retry-After",
                    {"type": "integer", "minimum": 0, "description": "Seconds to wait"},
                ),
            },
        }
    },
    "/api/v1/subscriptions/form": {
        "get": {
            "summary": "What the embedded box needs: a form token, the consent line, a CAPTCHA",
            "security": [],
            "parameters": [
                {
                    "name": "lang",
                    "in": "query",
                    "schema": {"type": "string"},
                    "example": "en",
                    "description": (
                        "The page's language tag (`fr`, `en`, `en-GB`…): French or English. "
                        "Any other value falls back to Accept-Language, then French, as the "
                        "box's host page may be in any language."
                    ),
                }
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["ts", "min_seconds", "consent", "captcha", "honeypot"],
                        "properties": {
                            "ts": {"type": "string"},
                            "min_seconds": {"type": "number"},
                            "consent": {"type": ["object", "null"]},
                            "captcha": {"type": ["object", "null"]},
                            "honeypot": {"type": "string"},
                            "messages": {"type": "object"},
                        },
                    },
                    "The box's settings",
                )
            },
        }
    },
    "/api/v1/articles": {
        "post": {
            "summary": "Create or update an article (idempotent on `id`, else `url`)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["url", "title"],
                            "additionalProperties": False,
                            "properties": {
                                "id": _nullable_string(512, "The CMS's id for the article"),
                                "url": {
                                    "type": "string",
                                    "pattern": "^https?://[^/?#\\s]",
                                    "maxLength": 2000,
                                    "description": "Absolute http(s) URL (else 422)",
                                },
                                "title": {
                                    "type": "string",
                                    "minLength": 1,
                                    "maxLength": 2000,
                                    "description": "Plain text once any HTML is removed; "
                                    "an empty one is refused (422)",
                                },
                                "summary": _nullable_string(20000, "HTML is reduced to text"),
                                "category": _nullable_string(200),
                                "author": _nullable_string(500),
                                "image_url": _nullable_string(
                                    2000, "Left out unless an absolute http(s) URL"
                                ),
                                "published_at": {
                                    "anyOf": [
                                        {"type": "string", "format": "date-time", "maxLength": 64},
                                        {"enum": ["", None]},
                                    ],
                                    "description": "With a time zone, 1970 to 2100 (else "
                                    "422); none: when first received",
                                },
                                "language": _nullable_string(
                                    16, "`fr`, `en`, `pt-BR`…; unreadable: French"
                                ),
                            },
                        },
                        "example": {
                            "id": "cms-48213",
                            "url": "https://news.example.fr/monde/2026/11/26/cop31",
                            "title": "COP31 : ce qui a été décidé",
                            "category": "International",
                            "published_at": "2026-11-26T08:00:00+01:00",
                        },
                    }
                },
            },
            "responses": {
                "200": _json(_ref("StoredArticle"), "Updated"),
                "201": _json(_ref("StoredArticle"), "Created"),
                "400": _error("Malformed JSON"),
                **AUTH_ERRORS,
                "413": _error("Body too large"),
                "415": _error("Not JSON"),
                "422": _error("Invalid field"),
            },
        }
    },
    "/api/v1/complaints": {
        "post": {
            "summary": "Record a feedback-loop complaint (an ARF report, RFC 5965)",
            "description": "The report as received, a `multipart/report; "
            "report-type=feedback-report` mail, up to 2 MiB. The subscriber is found from the "
            "signed unsubscribe link in the reported mail's List-Unsubscribe (else from its "
            "recipient, when the mail carries this list's List-Id), marked `complained` and "
            "suppressed, once. Token role: feedback or admin.",
            "requestBody": {
                "required": True,
                "content": {
                    "message/rfc822": {
                        "schema": {"type": "string", "format": "binary"},
                    }
                },
            },
            "responses": {
                "200": _json(_ref("ComplaintOutcome"), "Handled (whatever the result)"),
                **AUTH_ERRORS,
                "413": _error("Larger than 2 MiB"),
                "415": _error("Not message/rfc822"),
                "422": _error("Not a feedback report (the reason says why): keep it"),
                "503": _with_header(
                    _error("The subscriber kept changing: post it again"),
                    "Retry-After",
                    {"type": "string", "pattern": "^[0-9]+$"},
                ),
            },
        }
    },
    "/api/v1/admin/subscribers": {
        "get": {
            "summary": "A keyset page of subscribers, filtered",
            "parameters": [
                *FILTERS,
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                },
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["items", "next_cursor"],
                        "properties": {
                            "items": {"type": "array", "items": _ref("Subscriber")},
                            "next_cursor": {"type": ["string", "null"]},
                            "counts": {
                                "type": "object",
                                "required": SUBSCRIBER_STATUSES,
                                "additionalProperties": {"type": "integer"},
                            },
                        },
                    },
                    "A page; `counts` per status on the first page",
                ),
                "422": _error("Bad filter or cursor"),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/v1/admin/subscribers/{subscriber_id}": {
        "parameters": [SUBSCRIBER_ID],
        "get": {
            "summary": "One subscriber with consent record, history and recent deliveries",
            "responses": {
                "200": _json(_ref("SubscriberRecord"), "The subscriber"),
                "404": _error("No such subscriber"),
                **AUTH_ERRORS,
            },
        },
        "patch": {
            "summary": "Unsubscribe, resubscribe (pending, a new confirmation) or mark bounced",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["status"],
                            "additionalProperties": False,
                            "properties": {
                                "status": {
                                    "type": "string",
                                    "enum": ["unsubscribed", "pending", "bounced"],
                                },
                                "reason": {"type": "string", "maxLength": 200},
                            },
                        },
                        "example": {"status": "unsubscribed", "reason": "asked by phone"},
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["result", "subscriber"],
                        "properties": {
                            "result": {"type": "string", "enum": ["done", "already"]},
                            "subscriber": _ref("Subscriber"),
                        },
                    },
                    "Done, or already so",
                ),
                "400": _error("Malformed JSON"),
                "404": _error("No such subscriber"),
                "409": _error("That status cannot be reached from the current one"),
                "422": _error("Invalid field"),
                **AUTH_ERRORS,
            },
        },
        "delete": {
            "summary": "Erase (GDPR): personal data removed, the address stays suppressed",
            "responses": {
                "204": {"description": "Erased"},
                "404": _error("No such subscriber"),
                **AUTH_ERRORS,
            },
        },
    },
    "/api/v1/admin/unsubscribes": {
        "post": {
            "summary": "Unsubscribe a list of addresses (at most 10,000)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["emails"],
                            "additionalProperties": False,
                            "properties": {
                                "emails": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "maxItems": 10000,
                                },
                                "reason": {"type": "string", "maxLength": 200},
                            },
                        },
                        "example": {
                            "emails": ["reader1@exemple.fr", "reader2@exemple.fr"],
                            "reason": "asked by mail",
                        },
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["results", "counts"],
                        "properties": {
                            "results": {"type": "array", "items": _ref("BulkResult")},
                            "counts": {
                                "type": "object",
                                "required": BULK_RESULTS,
                                "additionalProperties": {"type": "integer"},
                            },
                        },
                    },
                    "A result per address, in order",
                ),
                "400": _error("Malformed JSON"),
                "413": _error("Body larger than HEBDO_ADMIN_MAX_REQUEST_BYTES"),
                "422": _error("Invalid field or too many addresses"),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/v1/admin/subscribers.csv": {
        "get": {
            "summary": "Export a filtered view as CSV (streamed)",
            "parameters": FILTERS,
            "responses": {
                "200": {
                    "description": "CSV",
                    "content": {"text/csv": {"schema": {"type": "string"}}},
                },
                "422": _error("Bad filter"),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/v1/admin/imports": {
        "post": {
            "summary": "Import a CSV (email, locale, source, consent_date, consent_text)",
            "description": "A dry run unless `dry_run=0`.",
            "parameters": [
                {
                    "name": "dry_run",
                    "in": "query",
                    "schema": {
                        "type": "string",
                        "enum": ["1", "true", "yes", "", "0", "false", "no"],
                    },
                    "description": "`0`, `false` or `no` imports; absent or else a dry run.",
                },
                {
                    "name": "filename",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": (
                        "The file's name for the report and the consent source "
                        "(`import:<name>`) when the body has none (text/csv)."
                    ),
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    # text/plain and application/csv are taken as text/csv.
                    "text/csv": {
                        "schema": {"type": "string"},
                        "example": "email,locale,consent_date,consent_text\r\n"
                        "lectrice@exemple.fr,fr,2026-11-02,form-2026-11\r\n",
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                },
            },
            "responses": {
                "200": _json(_ref("ImportReport"), "The per-line report"),
                "413": _error("Body larger than HEBDO_ADMIN_MAX_REQUEST_BYTES"),
                "415": _error("Not CSV"),
                "422": _error("Unreadable file"),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/v1/admin/issues": {
        "get": {
            "summary": "Issues with their status and delivery counts",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": _ref("IssueSummary")}},
                    },
                    "Issues, newest first",
                ),
                **AUTH_ERRORS,
            },
        }
    },
    "/api/v1/admin/issues/{week}": {
        "parameters": [WEEK],
        "get": {
            "summary": "One issue with its progress",
            "responses": {
                "200": _json(_ref("Issue"), "The issue"),
                "404": _error("No issue that week"),
                **AUTH_ERRORS,
            },
        },
    },
    **{
        f"/api/v1/admin/issues/{{week}}/{action}": {
            "parameters": [WEEK],
            "post": {
                "summary": f"{action.capitalize()} the issue"
                + (' (body: `{"to": address}`)' if action == "test" else ""),
                **({"requestBody": TEST_SEND} if action == "test" else {}),
                "responses": {
                    "200": _json(_ref("IssueActionResult"), "Done"),
                    "404": _error("No issue that week"),
                    "409": _error("Not possible in the issue's current status"),
                    "422": _error("Invalid input"),
                    **AUTH_ERRORS,
                    **(
                        {
                            "429": _error("More than 30 test sends in an hour from this client"),
                            "502": _error("The mail server refused the test"),
                        }
                        if action == "test"
                        else {}
                    ),
                },
            },
        }
        for action in ISSUE_ACTIONS
    },
    "/api/v1/admin/audit": {
        "get": {
            "summary": "Audit events, newest first",
            "parameters": [
                {"name": "action", "in": "query", "schema": TEXT, "example": "unsubscribe"},
                {"name": "actor", "in": "query", "schema": TEXT, "example": "admin:alice"},
                # As the browser page's links: a value that is not such a number is ignored.
                *(
                    {
                        "name": name,
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": maximum},
                        "description": description + "; anything else: ignored.",
                    }
                    for name, maximum, description in (
                        ("subscriber_id", MAX_ID, "Events about this subscriber"),
                        ("before", MAX_ID, "Events older than this id (`next_before`)"),
                        ("limit", 1000, "Events a page (default 100)"),
                    )
                ),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["items", "next_before"],
                        "properties": {
                            "items": {"type": "array", "items": _ref("AuditEvent")},
                            "next_before": {"type": ["integer", "null"]},
                        },
                    },
                    "A page of events",
                ),
                "422": _error("A NUL character in `action` or `actor`"),
                **AUTH_ERRORS,
            },
        }
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "hebdo API",
        "version": "1",
        "description": (
            "Sign-ups (public), articles (publisher token) and administration (editor or "
            "admin token: `hebdo admin token create NAME --role admin`). Admin routes send "
            "no CORS headers."
        ),
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": PATHS,
}


@bp.get("/openapi.json")
def spec() -> Response:
    return jsonify(SPEC)
