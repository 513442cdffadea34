"""`hebdo run`: the newcomer's path through real processes, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from service.extensions import db
from service.models import Delivery
from service.ops.runner import STOP_GRACE_SECONDS, WORKER_STOP_GRACE_SECONDS
from tests.support.data import add_subscribers
from tests.support.processes import (
    Process,
    confirm_from_the_mailbox,
    http,
    processes_with,
    send_now,
    sign_up_on_the_sample_page,
    start_hebdo_run,
    wait_until,
)
from tests.support.smtp import SMTPSink

# Real processes, browsers or many requests: the full suite's, not the fast lane's.
pytestmark = pytest.mark.slow


def test_hebdo_run_serves_subscribes_captures_and_stops_on_ctrl_c(
    env: dict[str, str], spawn: Callable[..., Process]
) -> None:
    process, base, values = start_hebdo_run(env, spawn, ready="hebdo: http://")

    # The newcomer signs up from the box at the end of the sample article page, then
    # confirms from the mail in the local mailbox.
    sign_up_on_the_sample_page(base, "nouveau@exemple.fr")
    assert "Inscription confirmée" in confirm_from_the_mailbox(base, "nouveau@exemple.fr", process)

    # The sample feed was read at start-up; `hebdo digest send --now` mails it to the reader.
    deadline = time.monotonic() + 60
    while "feed sample: ok, 14 new" not in process.output():
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    sent = send_now(values)
    assert sent.returncode == 0, sent.stderr
    assert "sending to 1 subscriber " in sent.stdout
    deadline = time.monotonic() + 60
    while len(re.findall(r'href="/dev/mailbox/[^"]+\.eml"', http(f"{base}/dev/mailbox/")[1])) < 2:
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    names = re.findall(r'href="/dev/mailbox/([^"]+\.eml)"', http(f"{base}/dev/mailbox/")[1])
    digest = "".join(http(f"{base}/dev/mailbox/{n}/raw")[1] for n in names)
    assert "Lire l=E2=80=99article" in digest and "lhebdo.example" in digest
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in digest

    # /metrics adds up every process's counters (gunicorn's for the sign-up, the Celery
    # pool's for the mails) through the folder `hebdo run` shares between them.
    def metric(text: str, sample: str) -> float:
        found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    deadline = time.monotonic() + 30
    while True:
        status, text = http(f"{base}/metrics")
        assert status == 200
        if metric(text, 'hebdo_deliveries_total{outcome="sent"}') == 1:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.3)
    assert metric(text, 'hebdo_signup_attempts_total{outcome="accepted"}') == 1
    assert metric(text, 'hebdo_confirmation_mails_total{result="sent"}') == 1
    assert metric(text, "hebdo_confirmations_total") == 1
    assert metric(text, 'hebdo_subscribers{status="active"}') == 1

    data_dir = Path(values["HEBDO_DATA_DIR"])
    assert (
        len(processes_with(data_dir)) >= 4
    )  # hebdo run, gunicorn, worker, beat (and their children)
    process.popen.send_signal(signal.SIGINT)
    assert process.popen.wait(60) == 0, process.output()[-3000:]
    assert "hebdo: stopped" in process.output()
    assert processes_with(data_dir) == []


def _slow_send(
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    spawn: Callable[..., Process],
    make_app: Callable[[dict[str, str]], Flask],
) -> tuple[Process, Flask, dict[str, str]]:
    """`hebdo run` sending one batch of 40 to a relay taking 0.75 s a message (30 s in all),
    two messages in."""
    values = {**smtp_env, "HEBDO_SEND_BATCH": "40"}
    app = make_app(values)
    add_subscribers(app, 40)
    process, _base, values = start_hebdo_run(values, spawn, ready="hebdo: http://")
    deadline = time.monotonic() + 60
    while "feed sample: ok, 14 new" not in process.output():
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    smtp_server.data_delay = 0.75
    sent = send_now(values)
    assert "sending to 40 subscribers" in sent.stdout, sent.stderr
    smtp_server.wait_for(2, timeout=60)
    return process, app, values


def test_ctrl_c_during_a_send_lets_the_worker_finish_its_batch_and_nothing_goes_twice(
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    spawn: Callable[..., Process],
    make_app: Callable[[dict[str, str]], Flask],
) -> None:
    """The batch takes longer than web and beat get to stop: the worker is given the time to
    finish it (killing it would send some messages twice)."""
    process, app, _values = _slow_send(smtp_env, smtp_server, spawn, make_app)

    stopped_at = time.monotonic()
    process.popen.send_signal(signal.SIGINT)
    assert process.popen.wait(WORKER_STOP_GRACE_SECONDS + 30) == 0, process.output()[-3000:]
    took = time.monotonic() - stopped_at

    output = process.output()
    assert "waiting for the worker to finish its tasks" in output
    assert "killing it" not in output and took > STOP_GRACE_SECONDS, output[-3000:]
    recipients = [m.rcpt_tos[0] for m in smtp_server.messages]
    assert len(recipients) == 40 and len(set(recipients)) == 40
    with app.app_context():
        statuses = db.session.execute(select(Delivery.status)).scalars().all()
    assert statuses == ["sent"] * 40


def test_a_second_ctrl_c_stops_the_worker_at_once_and_leaves_no_process(
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
    spawn: Callable[..., Process],
    make_app: Callable[[dict[str, str]], Flask],
) -> None:
    process, _app, values = _slow_send(smtp_env, smtp_server, spawn, make_app)
    process.popen.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "waiting for the worker to finish its tasks" not in process.output():
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.1)

    stopped_at = time.monotonic()
    process.popen.send_signal(signal.SIGINT)
    assert process.popen.wait(30) == 0, process.output()[-3000:]

    assert time.monotonic() - stopped_at < 10
    assert "worker did not stop; killing it on a second Ctrl-C" in process.output()
    # The pool's child dies with its parent: nothing keeps sending.
    wait_until(lambda: processes_with(Path(values["HEBDO_DATA_DIR"])) == [], 10, "no process")
    count = len(smtp_server.messages)
    time.sleep(2)
    assert len(smtp_server.messages) == count < 40


class Browser:
    """urllib with a cookie jar: what a person's browser does with hebdo's admin pages."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.csrf = ""

    def open(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        data = None
        if form is not None:
            data = urllib.parse.urlencode({"csrf_token": self.csrf, **form}).encode()
        try:
            with self.opener.open(self.base + path, data=data, timeout=10) as response:
                body = response.read().decode()
                status, url = response.status, response.url
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), exc.url
        token = re.search(r'<meta name="csrf-token" content="([^"]+)"', body)
        if token:
            self.csrf = token.group(1)
        return status, body, url


def test_a_newcomer_runs_the_newsletter_from_the_admin_area(
    env: dict[str, str], spawn: Callable[..., Process]
) -> None:
    """README's first command, then: create an admin, log in, see the form's sign-ups,
    unsubscribe one, preview and send the week's digest, and watch it progress."""
    process, base, values = start_hebdo_run(env, spawn, ready="hebdo: admin area at")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}
    created = subprocess.run(
        [sys.executable, "-m", "service.cli", "admin", "create-user", "alice", "--password-stdin",
         "--email", "alice@exemple.fr"],
        input="a long enough password\n",
        env={**environ, **values},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr

    for email in ("lea@exemple.fr", "tom@exemple.fr"):
        status, _ = http(
            f"{base}/api/v1/subscriptions",
            urllib.parse.urlencode({"email": email}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 200  # the thank-you page, after the 303

    browser = Browser(base)
    assert browser.open("/admin/subscribers")[2].startswith(f"{base}/admin/login")
    status, body, url = browser.open(
        "/admin/login", {"name": "alice", "password": "a long enough password"}
    )
    assert status == 200 and url == f"{base}/admin/", body[-2000:]
    # Both sign-ups are listed (pending until they confirm from their mailbox).
    status, body, _ = browser.open("/admin/subscribers?q=exemple.fr")
    assert "lea@exemple.fr" in body and "tom@exemple.fr" in body
    ids = dict(re.findall(r'href="/admin/subscribers/(\d+)">([^<]+)</a>', body))
    tom = next(i for i, email in ids.items() if email == "tom@exemple.fr")
    status, body, _ = browser.open(f"/admin/subscribers/{tom}/unsubscribe", {"reason": "asked"})
    assert "Désinscrire : fait." in body and "désinscrit" in body

    # Léa confirms from the captured mail.
    deadline = time.monotonic() + 60
    while "lea@exemple.fr" not in http(f"{base}/dev/mailbox/")[1]:
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    mailbox = http(f"{base}/dev/mailbox/")[1]
    names = re.findall(r'href="/dev/mailbox/([^"]+\.eml)"', mailbox)
    mails = [http(f"{base}/dev/mailbox/{n}/raw")[1].replace("=\r\n", "") for n in names]
    lea = next(m for m in mails if "To: lea@exemple.fr" in m)
    confirm = re.search(rf"{re.escape(base)}(/confirm/[A-Za-z0-9._-]+)", lea)
    assert confirm
    assert "Inscription confirmée" in http(base + confirm.group(1), data=b"")[1]

    # The week's issue: planned from the issues page once the sample feed is in, previewed, sent.
    deadline = time.monotonic() + 60
    while "feed sample: ok, 14 new" not in process.output():
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.3)
    status, body, _ = browser.open("/admin/issues")
    week = re.search(r'action="/admin/issues/(\d{4}-W\d{2})/plan"', body)
    assert week, body[-3000:]
    status, body, url = browser.open(f"/admin/issues/{week.group(1)}/plan", {})
    assert url.endswith(f"/admin/issues/{week.group(1)}") and "préparé" in body
    assert 'sandbox=""' in body or "sandbox " in body or "sandbox>" in body
    status, preview, _ = browser.open(f"/admin/issues/{week.group(1)}/preview.html")
    assert status == 200 and "lhebdo.example" in preview
    status, body, _ = browser.open(f"/admin/issues/{week.group(1)}/send", {})
    assert "lancé vers 1 abonné." in body, body[-3000:]
    deadline = time.monotonic() + 60
    while True:
        progress = json.loads(browser.open(f"/admin/issues/{week.group(1)}/progress.json")[1])
        if progress["status"] == "sent":
            break
        assert time.monotonic() < deadline, (progress, process.output()[-3000:])
        time.sleep(0.3)
    assert progress["sent"] == 1 and progress["percent"] == 100
    mailbox = http(f"{base}/dev/mailbox/")[1]
    names = re.findall(r'href="/dev/mailbox/([^"]+\.eml)"', mailbox)
    digests = [
        mail
        for mail in (http(f"{base}/dev/mailbox/{n}/raw")[1] for n in names)
        if "List-Unsubscribe-Post" in mail and "lhebdo.example" in mail
    ]
    # Léa (confirmed) got the digest; Tom (unsubscribed by the admin) did not.
    assert len(digests) == 1 and "To: lea@exemple.fr" in digests[0]
    process.popen.send_signal(signal.SIGINT)
    assert process.popen.wait(60) == 0, process.output()[-3000:]
