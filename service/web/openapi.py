"""The OpenAPI 3.1 description of hebdo's JSON API, served at /openapi.json.

Written by hand beside the views rather than generated: the views validate their
input themselves (with messages that name the field), and a test checks that every
/api route and method is described here and that nothing here is missing a route.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


AUTH_ERRORS = {
    "401": _error("No valid bearer token"),
    "403": _error("The token's role may not do this"),
}
WEEK = {
    "name": "week",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^\d{4}-W\d{2}$"},
    "example": "2026-W48",
}
SUBSCRIBER_ID = {
    "name": "subscriber_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer"},
}
FILTERS = [
    {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 320},
     "description": "Substring of the address, case- and accent-insensitive."},
    {"name": "status", "in": "query", "schema": {"type": "string"},
     "description": "One status, or several separated by commas."},
    {"name": "locale", "in": "query", "schema": {"type": "string", "maxLength": 8}},
    {"name": "source", "in": "query", "schema": {"type": "string", "maxLength": 2048},
     "description": "Prefix of the consent source (page URL, `import:<file>`, `admin:<name>`)."},
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"}},
    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"}},
    {"name": "sort", "in": "query",
     "schema": {"type": "string", "enum": ["newest", "oldest", "email", "-email"]}},
]  # fmt: skip
ISSUE_ACTIONS = ("plan", "approve", "send", "pause", "resume", "cancel", "test")
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "Subscriber": {
        "type": "object",
        "required": ["id", "email", "status"],
        "properties": {
            "id": {"type": "integer"},
            "email": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "active", "unsubscribed", "bounced", "complained"],
            },
            "locale": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "confirmed_at": NULLABLE_TIME,
            "source": {"type": ["string", "null"]},
        },
    },
    "AuditEvent": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
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
        "properties": {
            "email": {"type": "string"},
            "result": {
                "type": "string",
                "enum": ["done", "already", "unknown", "invalid", "refused"],
            },
            "reason": {"type": ["string", "null"]},
        },
    },
    "Issue": {
        "type": "object",
        "properties": {
            "week": {"type": "string"},
            "subject": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["draft", "scheduled", "sending", "sent", "paused", "cancelled"],
            },
        },
        "additionalProperties": True,
    },
    "ImportReport": {
        "type": "object",
        "properties": {
            "dry_run": {"type": "boolean"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "line": {"type": "integer"},
                        "outcome": {"type": "string"},
                        "reason": {"type": ["string", "null"]},
                    },
                },
            },
            "truncated": {"type": "boolean"},
        },
        "additionalProperties": True,
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
                    media: {
                        "schema": {
                            "type": "object",
                            "required": ["email"],
                            "properties": {
                                "email": {"type": "string"},
                                "locale": {"type": "string", "enum": ["fr", "en"]},
                                "source": {"type": "string", "maxLength": 2048},
                                "consent": {"type": "string", "maxLength": 64},
                                "consent_given": {"type": "string"},
                                "ts": {"type": "string"},
                                "website": {
                                    "type": "string",
                                    "description": "The honeypot: stays empty for people.",
                                },
                                "captcha_token": {"type": "string"},
                            },
                        }
                    }
                    for media in ("application/json", "application/x-www-form-urlencoded")
                },
            },
            "responses": {
                "202": _json(
                    {"type": "object", "properties": {"status": {"type": "string"}}}, "Accepted"
                ),
                "303": {"description": "Form posts: redirect to the thank-you page"},
                "400": _error(
                    "Malformed body; or captcha_required/captcha_failed, with the widget"
                ),
                "413": _error("Body too large"),
                "415": _error("Unsupported media type"),
                "422": _error("Invalid address (the message says why), or consent not given"),
                "429": _error("Too many attempts (per IP, network or address); see Retry-After"),
            },
        }
    },
    "/api/v1/subscriptions/form": {
        "get": {
            "summary": "What the embedded box needs: a form token, the consent line, a CAPTCHA",
            "security": [],
            "parameters": [
                {"name": "lang", "in": "query", "schema": {"type": "string", "enum": ["fr", "en"]}}
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
                                name: {"type": "string"}
                                for name in (
                                    "id",
                                    "url",
                                    "title",
                                    "summary",
                                    "category",
                                    "author",
                                    "image_url",
                                    "published_at",
                                    "language",
                                )
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json({"type": "object"}, "Updated"),
                "201": _json({"type": "object"}, "Created"),
                "400": _error("Malformed JSON"),
                "401": _error("No valid bearer token"),
                "415": _error("Not JSON"),
                "422": _error("Invalid field"),
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
                "200": _json(_ref("Subscriber"), "The subscriber"),
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
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
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
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "results": {"type": "array", "items": _ref("BulkResult")},
                            "counts": {
                                "type": "object",
                                "additionalProperties": {"type": "integer"},
                            },
                        },
                    },
                    "A result per address, in order",
                ),
                "400": _error("Malformed JSON"),
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
                {"name": "dry_run", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}}
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                },
            },
            "responses": {
                "200": _json(_ref("ImportReport"), "The per-line report"),
                "413": _error("File too large"),
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
                        "properties": {"items": {"type": "array", "items": _ref("Issue")}},
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
                **(
                    {
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["to"],
                                        "properties": {"to": {"type": "string"}},
                                    }
                                }
                            },
                        }
                    }
                    if action == "test"
                    else {}
                ),
                "responses": {
                    "200": _json(_ref("Issue"), "Done"),
                    "404": _error("No issue that week"),
                    "409": _error("Not possible in the issue's current status"),
                    "422": _error("Invalid input"),
                    **AUTH_ERRORS,
                },
            },
        }
        for action in ISSUE_ACTIONS
    },
    "/api/v1/admin/audit": {
        "get": {
            "summary": "Audit events, newest first",
            "parameters": [
                {"name": "action", "in": "query", "schema": {"type": "string"}},
                {"name": "actor", "in": "query", "schema": {"type": "string"}},
                {"name": "subscriber_id", "in": "query", "schema": {"type": "integer"}},
                {"name": "before", "in": "query", "schema": {"type": "integer"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "items": {"type": "array", "items": _ref("AuditEvent")},
                            "next_before": {"type": ["integer", "null"]},
                        },
                    },
                    "A page of events",
                ),
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
