"""`hebdo run` and `hebdo sweep`: run the service, catch up on confirmation mails."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from flask import current_app
from flask_babel import ngettext

from service.extensions import current_settings
from service.mail.transport import open_transport
from service.ops.runner import run_all
from service.subscribers.confirmations import send_due_confirmations


@click.command("run")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the web app listens on."
)
@click.option("--port", default=8000, show_default=True, type=int, help="Port of the web app.")
def run_command(host: str, port: int) -> None:
    """Migrate the database, then run web, worker and beat in the foreground (Ctrl-C stops all)."""
    sys.exit(run_all(current_app, host=host, port=port))


@click.command("sweep")
def sweep_command() -> None:
    """Send every confirmation mail that is owed but was never sent."""
    settings = current_settings()
    with open_transport(settings) as transport:
        sent = send_due_confirmations(transport=transport, settings=settings, now=datetime.now(UTC))
    click.echo(ngettext("%(num)s confirmation mail sent", "%(num)s confirmation mails sent", sent))


COMMANDS = (run_command, sweep_command)
