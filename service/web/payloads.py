"""Reading a JSON or form body into a dict, with errors that name the field: shared by the
public and token APIs."""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class PayloadError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def read_payload() -> dict[str, Any]:
    if request.mimetype in FORM_TYPES:
        return request.form.to_dict()
    if request.mimetype == "application/json" or request.mimetype.endswith("+json"):
        try:
            data = request.get_json(force=True, silent=False)
        except BadRequest:
            raise PayloadError(400, "malformed_json", "the body is not valid UTF-8 JSON") from None
        if not isinstance(data, dict):
            raise PayloadError(400, "malformed_json", "the body must be a JSON object")
        return data
    raise PayloadError(415, "unsupported_media_type", "send application/json or a form")


def optional_string(data: dict[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(422, "invalid_field", f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(422, "invalid_field", f"{name} is not valid Unicode text") from None
    if len(value) > limit:
        raise PayloadError(422, "invalid_field", f"{name} is longer than {limit} characters")
    return value.strip()
