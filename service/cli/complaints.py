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

import logging
import mailbox
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
from flask.cli import AppGroup
from flask_babel import gettext as _
from sqlalchemy.exc import SQLAlchemyError

from service.extensions import current_settings, db
from service.inbound.complaints import NotAReport, Result, RetryLater, ingest

EX_DATAERR = 65
EX_TEMPFAIL = 75
# The maildir folder (Maildir++, `.hebdo-kept`) where mails for a person go.
KEPT_FOLDER = "hebdo-kept"
# Results after which a maildir's copy of the report has served its purpose.
DONE = (Result.COMPLAINED, Result.DUPLICATE, Result.UNKNOWN)

log = logging.getLogger(__name__)

complaints_group = AppGroup("complaints", help="Feedback-loop (ARF) complaint reports.")


def _handle(name: str, raw: bytes) -> Result | None:
    """Record one report and say what was done; None when it is not a report.
    A database error or RetryLater propagates (the caller stops, leaving the rest)."""
    try:
        outcome = ingest(
            current_settings(), raw, source="cli", actor="system", now=datetime.now(UTC)
        )
    except NotAReport as exc:
        click.echo(
            _("%(name)s: not a feedback report: %(reason)s", name=name, reason=exc), err=True
        )
        return None
    where = ""
    if outcome.subscriber_id is not None and outcome.week:
        where = " " + _(
            "(subscriber %(id)s, issue %(week)s)", id=outcome.subscriber_id, week=outcome.week
        )
    elif outcome.subscriber_id is not None:
        where = " " + _("(subscriber %(id)s)", id=outcome.subscriber_id)
    click.echo(f"{name}: {outcome.result}{where}: {outcome.reason}")
    return outcome.result


def _files(paths: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    for path in paths or ("-",):
        if path == "-":
            yield "stdin", sys.stdin.buffer.read()
        else:
            yield path, Path(path).read_bytes()


def _maildir(folder: Path) -> int:
    """Handle every mail of the maildir's inbox; return how many were not reports (kept, with
    the reports about other mail, for a person)."""
    box = mailbox.Maildir(folder, create=False)
    kept_box: mailbox.Maildir | None = None
    refused = 0
    for key in sorted(box.iterkeys()):
        try:
            raw = box.get_bytes(key)
        except KeyError:
            continue  # taken by another run meanwhile
        try:
            result = _handle(key, raw)
        except (SQLAlchemyError, RetryLater):
            raise  # the database: try again later, this mail and the rest where they are
        except Exception as exc:  # a bug on one mail must not stop every later report
            # The type only: a message or traceback could quote the reader's address.
            log.error("complaint report %s could not be handled: %s", key, type(exc).__name__)
            click.echo(
                _(
                    "%(name)s: could not be handled (%(error)s), kept",
                    name=key,
                    error=type(exc).__name__,
                ),
                err=True,
            )
            db.session.rollback()
            result = None
        if result not in DONE:
            if kept_box is None:
                kept_box = box.add_folder(KEPT_FOLDER)
            kept_box.add(raw)  # an OSError (disk full) stops the run with the mail in place
            refused += result is None
        box.discard(key)
    return refused


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
    if maildir is not None and paths:
        raise click.UsageError(_("give files or --maildir, not both"))
    try:
        if maildir is not None:
            refused = _maildir(maildir)
        else:
            refused = sum(_handle(name, raw) is None for name, raw in _files(paths))
    except SQLAlchemyError as exc:
        db.session.rollback()
        cause = getattr(exc, "orig", None) or type(exc).__name__
        click.echo(
            _("hebdo: database unavailable, try again later: %(cause)s", cause=cause), err=True
        )
        sys.exit(EX_TEMPFAIL)
    except OSError as exc:
        click.echo(_("hebdo: %(error)s; try again later", error=exc), err=True)
        sys.exit(EX_TEMPFAIL)
    except RetryLater as exc:
        db.session.rollback()
        click.echo(_("hebdo: %(error)s; try again later", error=exc), err=True)
        sys.exit(EX_TEMPFAIL)
    if refused:
        sys.exit(EX_DATAERR)


COMMANDS = (complaints_group,)
