"""The `hebdo` command: run everything, database migrations, sweeps, settings."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, routes_command, shell_command
from flask_babel import gettext as _
from flask_babel import ngettext

from service import create_app
from service.cli.doctor import doctor_command
from service.config import ConfigError
from service.extensions import current_settings
from service.mail.transport import open_transport
from service.subscribers.confirmations import send_due_confirmations


@click.command("run")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the web app listens on."
)
@click.option("--port", default=8000, show_default=True, type=int, help="Port of the web app.")
def run_command(host: str, port: int) -> None:
    """Migrate the database, then run web, worker and beat in the foreground (Ctrl-C stops all)."""
    from service.ops.runner import run_all

    sys.exit(run_all(current_app, host=host, port=port))


@click.command("sweep")
def sweep_command() -> None:
    """Send every confirmation mail that is owed but was never sent."""
    settings = current_settings()
    with open_transport(settings) as transport:
        sent = send_due_confirmations(transport=transport, settings=settings, now=datetime.now(UTC))
    click.echo(ngettext("%(num)s confirmation mail sent", "%(num)s confirmation mails sent", sent))


@click.command("config")
def config_command() -> None:
    """Print the settings in force (secrets masked)."""
    click.echo(json.dumps(current_settings().public(), indent=2, default=str))


def init_app(app: Flask) -> None:
    from service.cli import admin as admin_cli
    from service.cli import complaints as complaints_cli
    from service.cli import digest as digest_cli

    for command in (
        run_command,
        sweep_command,
        config_command,
        *digest_cli.COMMANDS,
        *admin_cli.COMMANDS,
        *complaints_cli.COMMANDS,
    ):
        app.cli.add_command(command)


class HebdoGroup(FlaskGroup):
    """Flask's CLI on hebdo's app, with configuration errors shown as one clear line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except ConfigError as exc:
            click.echo(_("hebdo: configuration error: %(error)s", error=exc), err=True)
            sys.exit(2)


main = HebdoGroup(
    name="hebdo",
    create_app=create_app,
    add_default_commands=False,
    set_debug_flag=False,
    load_dotenv=False,
    help="hebdo: newsletter subscriptions and weekly digest.",
)
main.add_command(shell_command)
main.add_command(routes_command)
# On the group, not the app: it must run (and say what is wrong) when the app cannot load.
main.add_command(doctor_command)


if __name__ == "__main__":
    main()
