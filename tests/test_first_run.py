"""A newcomer's first run: the command line's own help and guesses, one clear line for what
stops `hebdo run` or a command (a database never migrated, a wrong URL, a port in use, a
data folder in use), links that follow `--port`, an early send that asks first, no noise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select

from service.cli.main import main
from service.config import ConfigError, load_settings
from service.digest import progress
from service.digest.planning import upcoming_week
from service.extensions import db
from service.i18n import set_locale
from service.models import Delivery
from tests.support.data import add_article, add_subscribers
from tests.support.processes import (
    Process,
    confirm_from_the_mailbox,
    sign_up_on_the_sample_page,
    start_hebdo_run,
)
from tests.support.settings import ROOT
from tests.support.smtp import free_port


def _hebdo(
    args: list[str], values: dict[str, str], cwd: Path = ROOT, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`hebdo ARGS` in its own process, with these HEBDO_* settings only."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEBDO_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**environ, **values},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


# --- The command line itself -----------------------------------------------------------


def test_help_shows_hebdos_options_and_a_typo_gets_a_guess(env: dict[str, str]) -> None:
    runner = CliRunner()
    shown = runner.invoke(main, ["--help"], env=env)
    assert shown.exit_code == 0
    assert "digest" in shown.output and "--version" in shown.output
    for flask_option in ("--env-file", "--app", "--debug"):
        assert flask_option not in shown.output

    version = runner.invoke(main, ["--version"], env=env)
    assert version.output.startswith("hebdo ") and "Flask" not in version.output

    # `digest` is the app's command, not the group's: click alone guessed nothing.
    typo = runner.invoke(main, ["dgest"], env=env)
    assert typo.exit_code == 2
    assert "Did you mean 'digest'?" in typo.output
    # A group's own commands: click's guess, kept.
    assert "Did you mean 'send'?" in runner.invoke(main, ["digest", "sned"], env=env).output


# --- One line for what stops a command -------------------------------------------------


@pytest.mark.slow  # a process of its own
def test_a_command_run_from_another_folder_says_how_to_migrate_and_shows_no_hash(
    tmp_path: Path,
) -> None:
    """No HEBDO_DATA_DIR, another folder: a fresh ./var with no tables. The failed INSERT
    carried the new account's scrypt hash; the operator sees one line and no secret."""
    result = _hebdo(
        ["admin", "create-user", "alice", "--email", "alice@exemple.fr", "--password-stdin"],
        {},
        cwd=tmp_path,
        stdin="un mot de passe assez long\n",
    )
    assert result.returncode == 2
    assert "scrypt" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "hebdo db upgrade" in line and "HEBDO_DATA_DIR" in line
    assert str(tmp_path / "var") in line


@pytest.mark.slow  # a process of its own
def test_database_url_mistakes_are_one_line_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as wrong:
        load_settings(
            {
                "HEBDO_DATA_DIR": str(tmp_path),
                "HEBDO_DATABASE_URL": "postgres://hebdo:s3cret@db/hebdo",
            }
        )
    assert "'postgresql+psycopg://hebdo:***@db/hebdo'" in str(wrong.value)
    assert "s3cret" not in str(wrong.value)

    closed = free_port()
    cases = {
        # A server that is not running.
        f"postgresql+psycopg://hebdo@127.0.0.1:{closed}/hebdo": f"port {closed} failed",
        # A database that cannot be opened.
        f"sqlite:///{tmp_path}/no/such/folder/hebdo.sqlite3": "unable to open database file",
        "postgres://hebdo@127.0.0.1/hebdo": "postgresql+psycopg://",
    }
    for url, reason in cases.items():
        values = {"HEBDO_DATA_DIR": str(tmp_path), "HEBDO_DATABASE_URL": url}
        result = _hebdo(["run", "--port", str(free_port())], values)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert reason in line and "HEBDO_DATABASE_URL" in line, line


@pytest.mark.slow  # a process of its own
def test_a_port_in_use_is_said_before_anything_starts(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _hebdo(["run", "--port", str(port)], env)
    assert result.returncode == 2
    assert "migrating" not in result.stdout and "hebdo: http://" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert f"port {port} " in line and "hebdo run --port " in line


# --- `hebdo run` as a newcomer starts it ---------------------------------------------


@pytest.mark.slow
def test_run_on_another_port_links_there_holds_its_data_folder_and_is_quiet(
    env: dict[str, str], spawn: Callable[..., Process]
) -> None:
    """No HEBDO_BASE_URL: the box and the mails follow --port. A second run on the same data
    folder refuses, naming the first one's PID. kombu's and Celery's warnings stay out."""
    process, base, values = start_hebdo_run(env, spawn, ready="hebdo: http://", base_url=False)
    assert "HEBDO_BASE_URL" not in values

    sign_up_on_the_sample_page(base, "nouveau@exemple.fr")
    assert "Inscription confirmée" in confirm_from_the_mailbox(base, "nouveau@exemple.fr", process)

    second = _hebdo(["run", "--port", str(free_port())], values)
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert f"PID {process.popen.pid}" in line and values["HEBDO_DATA_DIR"] in line
    assert "[worker]" not in second.stdout

    output = process.output()
    assert "No hostname was supplied" not in output
    assert "superuser privileges" not in output


def test_local_mail_is_kept_apart_per_database(tmp_path: Path) -> None:
    folder = {"HEBDO_DATA_DIR": str(tmp_path)}
    sqlite = load_settings(folder).mail_capture_dir
    postgres = load_settings(
        {**folder, "HEBDO_DATABASE_URL": "postgresql+psycopg://u:pw@127.0.0.1:5432/hebdo"}
    ).mail_capture_dir
    other = load_settings(
        {**folder, "HEBDO_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:5432/essai"}
    ).mail_capture_dir
    assert sqlite == tmp_path / "mail"
    assert len({sqlite, postgres, other}) == 3
    assert "pw" not in postgres.name and postgres.parent == tmp_path


# --- Sending ahead of the week ---------------------------------------------------------


def test_sending_ahead_of_the_schedule_says_which_week_and_asks(
    make_app: Callable[[dict[str, str]], Flask], env: dict[str, str]
) -> None:
    """A schedule two days behind us: "this week's" issue is the next one, days ahead, as
    on a Saturday with the Monday send. Sending it now uses up that send: asked first."""
    local = datetime.now(UTC).astimezone(load_settings(env).timezone) - timedelta(days=2)
    schedule = f"{local:%a} {local:%H:%M}".lower()
    app = make_app({**env, "HEBDO_SEND_SCHEDULE": schedule})
    now = datetime.now(UTC)
    add_article(app, 1, now - timedelta(hours=5))
    add_subscribers(app, 2)
    week = upcoming_week(app.config["SETTINGS"], now)
    runner = app.test_cli_runner()

    refused = runner.invoke(args=["digest", "send", "--now"], input="n\n")
    assert refused.exit_code == 1
    assert week in refused.output and "nothing more goes out then" in refused.output
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Delivery)).scalar_one() == 0

    sent = runner.invoke(args=["digest", "send", "--now", "--yes"])
    assert sent.exit_code == 0 and sent.output.startswith(f"{week}: sending to 2 subscribers")


def test_progress_gives_no_pace_it_does_not_know(app: Flask) -> None:
    """After a send of one mail, "0.0 msg/s over the last minute" was untrue."""
    from service.cli.digest import _progress_line

    counts = {"sent": 1, "queued": 0, "sending": 0, "failed": 0, "bounced": 0, "skipped": 0}
    now = datetime.now(UTC)
    done = progress.Progress("2026-W49", "sent", 1, counts, now, now, 1 / 60, None)
    with app.test_request_context():
        set_locale("en")
        assert "msg/s" not in _progress_line(done)
        going = progress.Progress(
            "2026-W49", "sending", 3, {**counts, "queued": 2}, now, None, 1 / 60, None
        )
        line = _progress_line(going)
    assert "0.0" not in line and "1 message sent over the last minute" in line
