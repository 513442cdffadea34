"""The whole JSON API, fuzzed from its OpenAPI spec (/openapi.json) by schemathesis.

Every operation, public and admin (with an admin bearer token), gets the spec's examples,
schemathesis' coverage cases (boundary values, missing fields, methods the spec does not
list) and random inputs that fit the spec and that break it. Each response must:

- never be a 5xx;
- have a documented status code, content type and body (its schema);
- answer a method the path does not have with 405 and an `Allow` header;
- refuse what breaks the spec (4xx), and take what fits it — or refuse it with 422, which
  is how the API turns down what JSON Schema cannot say (an address that cannot be mailed,
  a file that is not CSV), never with a 400/415 or a 5xx;
- on an admin route, be refused without the token (schemathesis retries without it).

Each operation runs against an app of its own (a fresh database: the test's throw-away
SQLite file, or the PostgreSQL test database) holding a few subscribers, articles and the
issue of the spec's example week, so erasures, bulk unsubscribes and sends act on real
rows. Mail is captured to the data folder (the test env has no SMTP host), and no Celery
worker runs: a send queues batches that nobody takes. The sign-up rate limits are raised
and each request comes from an address of its own, so that 429s do not hide what lies
behind them; the limits' own answers are checked against the spec by a test of their own.
What the fuzzer found is pinned by plain tests at the end, whatever inputs a run draws.

Profiles:

- CI (the default): 25 random examples per operation besides the examples and coverage
  cases (about 1,200 requests in all), derandomized, so that every run sends the same
  requests; the file takes about 15 s on SQLite and 20 s on PostgreSQL.
- On demand: `FUZZ_EXAMPLES=500 pytest tests/test_fuzz_api.py` raises the random examples
  per operation (500: about 2 minutes), and the time limit with them. `FUZZ_SEED=<n>`
  draws other inputs than the CI profile's. Not `HEBDO_*` names: the app refuses settings
  it does not know, and every app the tests build reads the process environment.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

from service.digest.planning import plan_issue
from service.web.api import shapes
from tests.support.admin import Admin, api_token
from tests.support.data import add_article, add_subscribers
from tests.support.mail import arf
from tests.support.settings import ROOT

CI_EXAMPLES = 25
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", CI_EXAMPLES))
SEED = os.environ.get("FUZZ_SEED") or None

# An operation takes about 15 ms an example: the suite's 120 s holds a few thousand.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(120, EXAMPLES // 20))]

# The week the spec gives as its example: the examples phase acts on a real issue.
EXAMPLE_WEEK = shapes.EXAMPLE_WEEK

# 422 is the API's refusal of well-formed content it cannot use: any other refusal of
# schema-valid data (400, 413, 415) would be a finding.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
# Schema-breaking data must be refused; 413 counts: a field past its maxLength can make the
# body larger than HEBDO_MAX_REQUEST_BYTES (JSON escapes a character in up to 12 bytes).
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


def _spec_app() -> Flask:
    """Serves the document as committed: pytest needs the operations at collection, before
    any fixture (and its database) exists. tests/test_openapi.py checks that it is the one
    the app serves."""
    app = Flask(__name__)
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    app.add_url_rule("/openapi.json", "openapi", lambda: document)
    return app


schema = schemathesis.openapi.from_wsgi(
    "/openapi.json",
    _spec_app(),
    config=schemathesis.Config.from_dict(
        {
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ACCEPTED},
                "negative_data_rejection": {"expected-statuses": REFUSED},
            },
            # The test sends a real token; made-up ones are the ignored_auth check's job.
            "generation": {"with-security-parameters": False},
        }
    ),
)


# Bodies for POST /api/v1/complaints (message/rfc822, which schemathesis cannot make up):
# bytes, and feedback reports about a mail of this list with made-up types, links and
# recipients (an erased, unknown or real subscriber; a forged token).
_HEADER_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
_REPORTED = st.builds(
    lambda token, rcpt: (
        "List-Id: <hebdo.news.example.fr>\r\n"
        f"List-Unsubscribe: <https://hebdo.example/unsubscribe/{token}>\r\n"
        f"Message-ID: <1.ab@news.example.fr>\r\nTo: {rcpt}\r\n\r\nBonjour\r\n"
    ).encode(),
    _HEADER_TEXT,
    st.sampled_from(["reader1@exemple.fr", "inconnu@exemple.fr", ""]) | _HEADER_TEXT,
)
REPORTS = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda original, kind, rcpt, headers_only: arf(
            original, feedback_type=kind, rcpt=rcpt, headers_only=headers_only
        ),
        _REPORTED,
        st.sampled_from(["abuse", "not-spam", "auth-failure", "fraud"]) | _HEADER_TEXT,
        st.none() | _HEADER_TEXT,
        st.booleans(),
    ),
)
schemathesis.openapi.media_type("message/rfc822", REPORTS)


def _add_rows(app: Flask) -> None:
    """Five active subscribers (ids 1 to 5), three articles and the example week's issue."""
    now = datetime.now(UTC)
    add_subscribers(app, 5)
    for n in range(3):
        add_article(app, n, now - timedelta(days=1))
    with app.app_context():
        plan_issue(app.config["SETTINGS"], EXAMPLE_WEEK, now)


@pytest.fixture
def fuzz_app(env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]) -> Flask:
    """The app, with rows to act on and sign-up limits out of the way."""
    unlimited = "1000000/minute"
    app = make_app(
        {
            **env,
            "HEBDO_SUBSCRIBE_RATE_LIMIT": unlimited,
            "HEBDO_SUBSCRIBE_NETWORK_RATE_LIMIT": unlimited,
            "HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT": unlimited,
        }
    )
    _add_rows(app)
    return app


@pytest.fixture
def admin_headers(fuzz_app: Flask) -> dict[str, str]:
    return api_token(fuzz_app, "admin", "fuzz")


# A client address per request: the issue test sends' limit (30 an hour per client) is no
# setting, and would answer 429 to all but an operation's first 30 requests.
CLIENTS = (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in itertools.count(1))


# The audit log's filters ignore a value that is not an id, as the browser page does
# (test_admin_subscribers.py::test_odd_query_values_get_an_answer_not_a_server_error).
TOLERANT = {"GET /api/v1/admin/audit": [schemathesis.checks.negative_data_rejection]}


def _seeded(test: Callable[..., None]) -> Callable[..., None]:
    """FUZZ_SEED: that seed's inputs, instead of the CI profile's derandomized ones."""
    return seed(int(SEED))(test) if SEED else test


@schema.parametrize()
@_seeded
@settings(
    max_examples=EXAMPLES,
    derandomize=SEED is None,
    # No example database: a failure saved by one run must not change what the next sends.
    database=None,
    deadline=None,
    # One app per operation (not per example) is the point: state builds up as it would.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_operation_behaves_as_documented(
    case: schemathesis.Case, fuzz_app: Flask, admin_headers: dict[str, str]
) -> None:
    case.call_and_validate(
        app=fuzz_app,
        headers=admin_headers,
        environ_base={"REMOTE_ADDR": next(CLIENTS)},
        excluded_checks=TOLERANT.get(case.operation.label, []),
    )


# What the fuzz does not reach, its limits raised or dodged: the limits' own answers.


def test_the_rate_limits_answers_are_documented(
    env: dict[str, str], make_app: Callable[[dict[str, str]], Flask]
) -> None:
    app = make_app({**env, "HEBDO_SUBSCRIBE_ADDRESS_RATE_LIMIT": "1/hour"})
    _add_rows(app)
    documented = [
        schemathesis.checks.status_code_conformance,
        schemathesis.checks.content_type_conformance,
        schemathesis.checks.response_schema_conformance,
        schemathesis.checks.response_headers_conformance,
    ]
    sign_up = schema["/api/v1/subscriptions"]["POST"]
    # JSON from the embedded box, and a page for the same form without JavaScript.
    for media_type, email in (
        ("application/json", "box@exemple.fr"),
        ("application/x-www-form-urlencoded", "form@exemple.fr"),
    ):
        case = sign_up.Case(body={"email": email}, media_type=media_type)
        assert case.call(app=app).status_code in (202, 303)
        refused = case.call(app=app)
        assert refused.status_code == 429, media_type
        assert int(refused.headers["retry-after"][0]) > 0
        case.validate_response(refused, checks=documented)

    test_send = schema["/api/v1/admin/issues/{week}/test"]["POST"].Case(
        path_parameters={"week": EXAMPLE_WEEK},
        body={"to": "redaction@exemple.fr"},
        media_type="application/json",
    )
    headers = api_token(app)
    answers = [test_send.call(app=app, headers=headers) for _ in range(31)]
    assert [a.status_code for a in answers] == [200] * 30 + [429]
    test_send.validate_response(answers[-1], checks=documented)


# ---------------------------------------------------------------- what the fuzzer found
#
# Pinned here, so that CI checks them whatever inputs the profile draws.


def test_a_subscriber_id_beyond_the_id_column_is_nobody(client: FlaskClient, app: Flask) -> None:
    headers = api_token(app)
    path = f"/api/v1/admin/subscribers/{2**63}"
    assert client.get(path, headers=headers).status_code == 404
    assert client.delete(path, headers=headers).status_code == 404
    patch = client.patch(path, headers=headers, json={"status": "unsubscribed"})
    assert patch.status_code == 404


def test_a_status_that_is_not_a_string_is_refused_by_name(client: FlaskClient, app: Flask) -> None:
    (subscriber_id,) = add_subscribers(app, 1)
    response = client.patch(
        f"/api/v1/admin/subscribers/{subscriber_id}",
        headers=api_token(app),
        json={"status": {"to": "unsubscribed"}},
    )
    assert response.status_code == 422 and "status must be one of" in response.json["message"]


def test_a_week_before_the_year_1000_is_planned_under_the_name_it_was_given(
    client: FlaskClient, app: Flask, admin: Admin
) -> None:
    """`0001-W01` was stored as `1-W01`, which no route could read back: a 500."""
    headers = api_token(app)
    response = client.post("/api/v1/admin/issues/0001-W01/plan", headers=headers)
    assert response.status_code == 200, response.json
    assert client.get("/api/v1/admin/issues/0001-W01", headers=headers).status_code == 200
    assert admin.post("/admin/issues/0999-W10/plan").status_code == 302


def test_a_sign_up_locale_that_is_not_text_is_refused(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/subscriptions", json={"email": "lectrice@exemple.fr", "locale": {"fr": 1}}
    )
    assert response.status_code == 422 and response.json["error"] == "invalid_field"


def test_a_nul_character_in_a_text_filter_is_refused_not_a_server_error(
    client: FlaskClient, app: Flask, admin: Admin
) -> None:
    """PostgreSQL refuses NUL in text: each of these was a 500 there."""
    headers = api_token(app)
    for path in (
        "/api/v1/admin/subscribers?q=%00",
        "/api/v1/admin/subscribers?locale=fr%00",
        "/api/v1/admin/subscribers.csv?source=%00",
        "/api/v1/admin/audit?actor=%00",
        "/api/v1/admin/audit?action=unsubscribe%00",
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 422, path
        assert "NUL" in response.json["message"], path
    # The browser pages say which filter is wrong, and show the whole list or log.
    for path in ("/admin/subscribers?q=%00", "/admin/audit?actor=%00"):
        page = admin.get(path)
        assert page.status_code == 200, path
        assert "n’est pas valide" in page.get_data(as_text=True), path
    for path in ("/admin/subscribers.csv?q=%00", "/admin/audit.csv?actor=%00"):
        assert admin.get(path).status_code == 422, path
