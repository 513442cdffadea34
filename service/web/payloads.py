"""Reading a JSON or form body into a dict, and into its model (`shapes`), with errors that
name the field: shared by the public, token and admin APIs. Every JSON body a view reads
(`request.get_json`, here and in the rate limits' key functions) is decoded by
`SafeJSONProvider`, installed on the app: the one place a body becomes Python."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest

from service.web.api.shapes import describe

Model = TypeVar("Model", bound=BaseModel)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class PayloadError(Exception):
    def __init__(self, status: int, code: str, detail: str, field: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        # The field at fault, when one is (a shape's validation names it).
        self.field = field


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, where a body nested too deep for Python's decoder (`[` × 20,000 raises
    RecursionError, which is not a ValueError) is malformed JSON like any other: a 400 for
    `get_json()`, None for `get_json(silent=True)`, never a 500 that skips the rate limit
    counted after it."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


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


def parse(model: type[Model], data: Any) -> Model:
    """`data` as `model`, or a 422 `invalid_field` naming the first field that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        loc = exc.errors(include_url=False)[0]["loc"]
        field = str(loc[0]) if loc else ""
        raise PayloadError(422, "invalid_field", describe(exc), field) from None
