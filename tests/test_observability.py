"""What an operator watches: liveness and readiness, and logs a shipper can read (JSON lines
with request and task ids, an access log that never holds a link's token)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from flask import Flask
from flask_migrate import upgrade

from tests.support.data import add_article, add_subscribers, metric_value
from tests.support.mail import link, sweep
from tests.support.processes import Process, wait_until
from tests.support.settings import ROOT
from tests.support.smtp import SMTPSink, free_port


def test_healthz_says_alive_without_asking_anything_else(app: Flask) -> None:
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 200 and answer.json == {"status": "ok"}


def test_readyz_is_ready_when_database_broker_and_smtp_answer(smtp_app: Flask) -> None:
    answer = smtp_app.test_client().get("/readyz")
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "ready"
    assert set(answer.json["checks"]) == {"database", "broker", "smtp"}
    assert all(c["ok"] and c["ms"] >= 0 for c in answer.json["checks"].values())
    assert answer.headers["Cache-Control"] == "no-store"


def test_readyz_names_what_is_down_with_a_503(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    closed = free_port()
    app = make_app(
        {
            **env,
            "HEBDO_SMTP_HOST": "127.0.0.1",
            "HEBDO_SMTP_PORT": str(closed),
            "HEBDO_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        }
    )
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 503 and answer.json["status"] == "not ready"
    checks = answer.json["checks"]
    assert checks["database"]["ok"] is True
    assert checks["broker"]["ok"] is False and "Connection" in checks["broker"]["detail"]
    assert checks["smtp"]["ok"] is False and str(closed) in checks["smtp"]["detail"]


def test_readyz_is_not_ready_until_the_migrations_are_applied(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str], tmp_path: Path
) -> None:
    if env["HEBDO_DATABASE_URL"].startswith("postgresql"):
        pytest.skip("the shared PostgreSQL test database stays migrated (SQLite builds its own)")
    behind = make_app({**env, "HEBDO_DATABASE_URL": f"sqlite:///{tmp_path / 'old.sqlite3'}"})
    with behind.app_context():
        upgrade(directory=str(ROOT / "migrations"), revision="0003")
    answer = behind.test_client().get("/readyz")
    assert answer.status_code == 503
    detail = answer.json["checks"]["database"]["detail"]
    assert "schema at 0003" in detail and "hebdo db upgrade" in detail
    with behind.app_context():
        upgrade(directory=str(ROOT / "migrations"))
    assert behind.test_client().get("/readyz").status_code == 200


# The app in its own process, logging as production does (JSON on stderr).
REQUESTS = textwrap.dedent(
    """
    from service import create_app
    from service.subscribers.tokens import confirm_token
    from service.extensions import db
    from service.models import Subscriber
    from datetime import UTC, datetime
    app = create_app()
    client = app.test_client()
    client.post("/api/v1/subscriptions", json={"email": "lea.martin@exemple.fr"})
    with app.app_context():
        sub = db.session.query(Subscriber).one()
        token = confirm_token(app.config["SETTINGS"], sub)
    print(token)
    answer = client.post("/confirm/" + token, headers={"X-Request-ID": "proxy-7f3a"})
    print(answer.headers["X-Request-ID"])
    answer = client.get("/healthz", headers={"X-Request-ID": "bad id <forged>"})
    print(answer.headers["X-Request-ID"])
    """
)


def run_logging(
    script: str, env: dict[str, str], log_format: str
) -> subprocess.CompletedProcess[str]:
    """`script` in a process of its own, logging at INFO in `log_format` to its stderr."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env={
            "PATH": "/usr/bin:/bin",
            **env,
            "HEBDO_LOG_FORMAT": log_format,
            "HEBDO_LOG_LEVEL": "INFO",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_logs_are_json_lines_with_request_ids_and_no_token_or_address(env: dict[str, str]) -> None:
    run = run_logging(REQUESTS, env, "json")
    assert run.returncode == 0, run.stderr
    token, kept, replaced = run.stdout.split()
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "hebdo.access"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [
        ("POST", "/api/v1/subscriptions", 202),
        ("POST", "/confirm/<token>", 200),
        ("GET", "/healthz", 200),
    ]
    # The proxy's request id is kept and logged; a malformed one is replaced, not echoed.
    assert kept == "proxy-7f3a" and access[1]["request_id"] == "proxy-7f3a"
    assert replaced != "bad id <forged>" and access[2]["request_id"] == replaced
    assert all(isinstance(a["ms"], float) for a in access)
    everything = run.stderr
    assert token not in everything and "lea.martin@exemple.fr" not in everything
    assert any(line.get("request_id") == access[0]["request_id"] for line in lines[:-3])


# A submitted address that carries a forged log line, and an error with one in its text.
FORGED = textwrap.dedent(
    """
    import logging
    from service import create_app
    app = create_app()
    forged = "2020-01-01 01:00:00,000 INFO hebdo.admin: admin alice signed in"
    app.test_client().post(
        "/api/v1/subscriptions", json={"email": "x@exemple.fr\\r\\n" + forged}
    )
    try:
        raise ValueError("bad input\\n" + forged)
    except ValueError:
        logging.getLogger("hebdo.test").exception("failed on %s", "value\\r\\n" + forged)
    """
)


@pytest.mark.slow  # a process of its own
def test_a_text_log_line_holds_no_line_a_submitted_value_forged(env: dict[str, str]) -> None:
    run = run_logging(FORGED, env, "text")
    assert run.returncode == 0, run.stderr
    # Every line of the log is a record of its own, or an indented line of a traceback.
    lines = run.stderr.splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert not [line for line in records if line.startswith("2020-01-01")], run.stderr
    signup = [line for line in records if "sign-up invalid" in line]
    assert len(signup) == 1
    assert signup[0].endswith(
        "for x***@exemple.fr\\r\\n2020-01-01 01:00:00,000 INFO hebdo.admin: admin alice signed in"
    )
    failed = [line for line in records if "failed on value" in line]
    assert len(failed) == 1 and failed[0].endswith(
        "value\\r\\n2020-01-01 01:00:00,000 INFO hebdo.admin: admin alice signed in"
    )
    assert "    ValueError: bad input" in lines


@pytest.mark.slow
def test_a_task_logs_with_its_task_id(
    smtp_env: dict[str, str],
    smtp_app: Flask,
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
) -> None:
    worker = celery_worker({**smtp_env, "HEBDO_LOG_FORMAT": "json"})
    client = smtp_app.test_client()
    assert client.post("/api/v1/subscriptions", json={"email": "a@exemple.fr"}).status_code == 202
    smtp_server.wait_for(1, timeout=60)

    def sweep_logged() -> bool:
        return "sweep sent 1 confirmation" in worker.output()

    wait_until(sweep_logged, 30, "the sweep's log line")
    records = []
    for line in worker.output().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    sweep = next(r for r in records if "sweep sent 1 confirmation" in r["message"])
    assert sweep["logger"] == "worker.tasks" and len(sweep["task_id"]) >= 32


# ---------------------------------------------------------------- metrics


def test_metrics_count_sign_ups_confirmations_and_unsubscribes_and_read_the_state(
    smtp_app: Flask, smtp_server: SMTPSink
) -> None:
    client = smtp_app.test_client()
    before = client.get("/metrics").get_data(as_text=True)
    client.post("/api/v1/subscriptions", json={"email": "lea@exemple.fr"})
    client.post("/api/v1/subscriptions", json={"email": "not-an-address"})
    sweep(smtp_app)
    confirm_link = link(smtp_server.messages[0], "confirm")
    client.post(confirm_link)
    client.post(
        link(smtp_server.messages[0], "unsubscribe"), data={"List-Unsubscribe": "One-Click"}
    )
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    after = answer.get_data(as_text=True)

    def grew(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert grew("hebdo_signup_attempts_total", outcome="accepted") == 1
    assert grew("hebdo_signup_attempts_total", outcome="invalid") == 1
    assert grew("hebdo_confirmation_mails_total", result="sent") == 1
    assert grew("hebdo_confirmations_total") == 1
    assert grew("hebdo_unsubscribes_total", channel="one-click") == 1
    assert metric_value(after, "hebdo_subscribers", status="unsubscribed") == 1
    assert metric_value(after, "hebdo_send_queue_depth") == 0


def test_metrics_are_not_served_to_the_public(app: Flask) -> None:
    client = app.test_client()
    outside = client.get("/metrics", environ_base={"REMOTE_ADDR": "8.8.8.8"})
    assert outside.status_code == 404
    inside = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert inside.status_code == 200


@pytest.mark.slow
def test_a_worker_machine_serves_its_processes_metrics(
    smtp_env: dict[str, str],
    make_app: Callable[[dict[str, str]], Flask],
    smtp_server: SMTPSink,
    celery_worker: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """Two pool processes send a digest; the worker's main process serves their counters
    added up (prometheus_client's multiprocess mode) on HEBDO_METRICS_PORT."""
    port = free_port()
    folder = tmp_path / "prometheus"
    folder.mkdir()
    values = {**smtp_env, "HEBDO_SEND_BATCH": "10", "HEBDO_METRICS_PORT": str(port)}
    app = make_app(values)
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1))
    add_subscribers(app, 40)
    celery_worker({**values, "PROMETHEUS_MULTIPROC_DIR": str(folder)}, concurrency=2)
    result = app.test_cli_runner().invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    smtp_server.wait_for(40, timeout=60)

    def scraped() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    wait_until(
        lambda: metric_value(scraped(), "hebdo_deliveries_total", outcome="sent") == 40,
        30,
        "40 sent deliveries in the worker's metrics",
    )


def test_the_alert_rules_and_the_dashboard_use_metrics_hebdo_exports(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    """deploy/prometheus-alerts.yml and deploy/grafana-dashboard.json name only series that
    /metrics has (a renamed metric must not leave an alert that can never fire)."""
    # A Redis URL (down is fine) so the broker gauges are exported too.
    app = make_app({**env, "HEBDO_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    text = app.test_client().get("/metrics").get_data(as_text=True)
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        exported.add(name)
        if kind == "counter":  # the family, or its samples' name (the text format varies)
            exported.add(name.removesuffix("_total") + "_total")
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert {rule["alert"] for group in rules["groups"] for rule in group["rules"]} >= {
        "HebdoBounceRateHigh",
        "HebdoSendStuck",
        "HebdoFeedFailing",
        "HebdoComplaintRateHigh",
    }
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bhebdo_[a-z_]+", expr)}
    assert used and used <= exported, used - exported


@pytest.mark.slow
def test_metrics_show_the_send_queue_and_how_long_it_has_waited(app: Flask) -> None:
    """Deliveries due and not yet claimed (no worker runs here): their count and the age of
    the oldest, which the stuck-send alert watches."""
    add_article(app, 1, datetime.now(UTC) - timedelta(days=1))
    add_subscribers(app, 3)
    result = app.test_cli_runner().invoke(args=["digest", "send", "--now", "--yes"])
    assert result.exit_code == 0, result.output
    week = result.output.split(":", 1)[0]
    time.sleep(1.1)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert metric_value(text, "hebdo_send_queue_depth") == 3
    assert 1.0 <= metric_value(text, "hebdo_send_queue_age_seconds") < 60
    assert metric_value(text, "hebdo_issue_deliveries", week=week, status="queued") == 3
