"""The OpenAPI document is generated from the app (every /api route, the pydantic models its
views validate and answer with), and docs/openapi.json is that document."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from service.web.api.openapi import build
from tests.support.settings import ROOT


def _routes(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
            found |= {(path, m.lower()) for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    return found


def test_every_api_route_is_in_the_document_and_nothing_else(
    app: Flask, client: FlaskClient
) -> None:
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
                assert "security" not in operation, (path, method)
            elif path.startswith("/api/v1/subscriptions"):
                assert operation["security"] == [], "sign-ups need no token"


def test_a_route_without_a_description_stops_the_document(app: Flask) -> None:
    """Nothing under /api goes undocumented: a view without @operation is an error."""
    extra = Blueprint("extra", __name__)
    extra.add_url_rule("/api/v1/undocumented", view_func=lambda: "", endpoint="undocumented")
    app.register_blueprint(extra)
    with pytest.raises(LookupError, match="/api/v1/undocumented"):
        build(app)


def test_every_reference_in_the_document_resolves(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec is not None
    for name in re.findall(r"#/components/schemas/([A-Za-z]+)", json.dumps(spec)):
        assert name in spec["components"]["schemas"], name


def test_limits_come_from_one_declaration(client: FlaskClient) -> None:
    """A field's limit in the document is the one the code enforces (here, the models')."""
    from service.models import SOURCE_MAX, Subscriber

    spec = client.get("/openapi.json").json
    assert spec is not None
    sign_up = spec["components"]["schemas"]["SignupPost"]["properties"]["source"]
    assert Subscriber.__table__.c.consent_source.type.length == SOURCE_MAX
    assert SOURCE_MAX in [option.get("maxLength") for option in sign_up.get("anyOf", [sign_up])]


@pytest.mark.slow
def test_docs_openapi_json_is_the_document_the_app_serves(client: FlaskClient) -> None:
    """docs/openapi.json is generated: `python -m service.web.api > docs/openapi.json`."""
    served = client.get("/openapi.json").json
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == served, "regenerate: python -m service.web.api > docs/openapi.json"
    generated = subprocess.run(
        [sys.executable, "-m", "service.web.api"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT / "docs",
    ).stdout
    assert json.loads(generated) == committed
