"""The OpenAPI spec at /openapi.json describes exactly the JSON API's routes and methods."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from service.web.api.openapi import ISSUE_ACTIONS


def _routes(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        paths = [path]
        if "{action}" in path:
            paths = [path.replace("{action}", action) for action in ISSUE_ACTIONS]
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            found.update((p, method.lower()) for p in paths)
    return found


def test_every_api_route_is_in_the_spec_and_nothing_else(app: Flask, client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    spec = response.json
    assert spec is not None and spec["openapi"].startswith("3.1")
    documented = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented == _routes(app)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (path, method)
            if path.startswith("/api/v1/admin"):
                # Admin routes answer 401 without a token and 403 for a role that may not.
                assert {"401", "403"} <= set(operation["responses"]), (path, method)


def test_every_reference_in_the_spec_resolves(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec is not None
    text = str(spec)
    for name in re.findall(r"#/components/schemas/([A-Za-z]+)", text):
        assert name in spec["components"]["schemas"], name
