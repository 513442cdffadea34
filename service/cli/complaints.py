"""`hebdo complaints ingest`: feedback-loop reports from files, standard input or a maildir.

Made for the two ways reports reach a self-hosted sender besides the webhook:
- an MTA that pipes each mail to a command (a Postfix alias `fbl: "|hebdo complaints
  ingest"`): the exit status tells it what to do with the mail (sysexits: 0 done, 65 not a
  report, so it bounces back, 75 try again later, so it stays queued);
- a mailbox delivered as a maildir (Dovecot), read from cron. Every mail of the maildir's
  inbox is read, `new/` and `cur/` alike (an IMAP client opening the folder moves mail to
  `cur/`). A report acted on (`complained`, `duplicate`) or about nobody hebdo knows
  (`unknown`: it may name an erased reader) is removed: it holds a reader's address, and
  the audit log keeps what was done. Everything else (not a report, a report about
  another mail stream, one that could not be read) is moved to the `hebdo-kept` folder for
  a person. On a database or disk error the run stops (exit 75), and what it has not handled
  stays. Exit 65 when some mail was not a report at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click
from flask.cli import AppGroup
from flask_babel import gettext as _

from service.cli.mailboxes import KEPT_FOLDER, about, run_ingest
from service.extensions import current_settings
from service.inbound.complaints import NotAReport, Result, RetryLater
from service.inbound.receive import receive_report

# Results after which a maildir's copy of the report has served its purpose.
DONE = (Result.COMPLAINED, Result.DUPLICATE, Result.UNKNOWN)

complaints_group = AppGroup("complaints", help="Feedback-loop (ARF) complaint reports.")


def _handle(name: str, raw: bytes) -> bool | None:
    """Record one report and say what was done: True when it served its purpose, False for
    a person, None when it is not a report. A database error or RetryLater propagates."""
    try:
        outcome = receive_report(
            current_settings(), raw, source="cli", actor="system", now=datetime.now(UTC)
        )
    except NotAReport as exc:
        click.echo(
            _("%(name)s: not a feedback report: %(reason)s", name=name, reason=exc), err=True
        )
        return None
    where = about(outcome.subscriber_id, outcome.week)
    click.echo(f"{name}: {outcome.result}{where}: {outcome.reason}")
    return outcome.result in DONE


@complaints_group.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--maildir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Read every mail of this maildir instead (handled ones are removed, the rest moved "
    f"to its {KEPT_FOLDER} folder).",
)
def ingest_command(paths: tuple[str, ...], maildir: Path | None) -> None:
    """Record ARF reports: from PATHS (`-` or none: standard input) or a maildir."""
    run_ingest(paths, maildir, _handle, retry=(RetryLater,))


COMMANDS = (complaints_group,)
