"""`hebdo doctor`: the command over the doctor's checks."""

from __future__ import annotations

import os
import sys

import click
from flask_babel import ngettext

from service.ops.doctor.report import Status, format_results
from service.ops.doctor.run import run_checks
from service.ops.doctor.sending_domain import parse_nameserver

# --- The command ------------------------------------------------------------------------


def _nameserver_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_nameserver(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("doctor")
@click.option(
    "--nameserver",
    metavar="HOST[:PORT]",
    callback=_nameserver_option,
    help="DNS server to ask for SPF, DKIM and DMARC (default: the system's resolvers).",
)
def doctor_command(nameserver: tuple[str, int] | None) -> None:
    """Check configuration, database, broker, SMTP relay and the sending domain's DNS."""
    results = run_checks(os.environ, nameserver=nameserver)
    click.echo(format_results(results))
    failures = sum(r.status is Status.FAIL for r in results)
    warnings = sum(r.status is Status.WARN for r in results)
    # Outside the app (the doctor runs when it cannot load): the English texts.
    summary = ", ".join(
        (
            ngettext("%(num)s failed", "%(num)s failed", failures),
            ngettext("%(num)s warning", "%(num)s warnings", warnings),
        )
    )
    click.echo(f"\n{summary}")
    sys.exit(1 if failures else 0)
