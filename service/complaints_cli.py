"""`hebdo complaints ingest`: feedback-loop reports from files, standard input or a maildir.

Made for the two ways reports reach a self-hosted sender besides the webhook:
- an MTA that pipes each mail to a command (a Postfix alias `fbl: "|hebdo complaints
  ingest"`): the exit status tells it what to do with the mail (sysexits: 0 done, 65 not a
  report, so it bounces back, 75 try again later, so it stays queued);
- a mailbox delivered as a maildir (Dovecot), read from cron: a handled report is removed
  (it holds a reader's address, and the audit log keeps what was done), one that is not a
  report is kept and flagged for a person, and on a database error everything not yet
  handled stays where it is.
"""

from __future__ import annotations

import mailbox
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import DBAPIError

from .complaints import NotAReport, ingest
from .config import Settings
from .extensions import db

EX_DATAERR = 65
EX_TEMPFAIL = 75

complaints_group = AppGroup("complaints", help="Feedback-loop (ARF) complaint reports.")


def _settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


def _handle(name: str, raw: bytes) -> bool:
    """Record one report and say what was done; False when it is not a report.
    A database error propagates (the caller stops and leaves the rest untouched)."""
    try:
        outcome = ingest(_settings(), raw, source="cli", actor="system", now=datetime.now(UTC))
    except NotAReport as exc:
        click.echo(f"{name}: not a feedback report: {exc}", err=True)
        return False
    where = ""
    if outcome.subscriber_id is not None:
        where = f" (subscriber {outcome.subscriber_id}"
        where += f", issue {outcome.week})" if outcome.week else ")"
    click.echo(f"{name}: {outcome.result}{where}: {outcome.reason}")
    return True


def _files(paths: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    for path in paths or ("-",):
        if path == "-":
            yield "stdin", sys.stdin.buffer.read()
        else:
            yield path, Path(path).read_bytes()


def _maildir(folder: Path) -> int:
    box = mailbox.Maildir(folder, create=False)
    refused = 0
    for key in sorted(box.iterkeys()):
        message = box.get_message(key)
        if message.get_subdir() != "new":
            continue  # handled or flagged by an earlier run
        if _handle(key, box.get_bytes(key)):
            box.remove(key)
        else:
            refused += 1
            message.set_subdir("cur")
            message.add_flag("F")
            box[key] = message
    return refused


@complaints_group.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--maildir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Read the new mails of this maildir instead (handled ones are removed).",
)
def ingest_command(paths: tuple[str, ...], maildir: Path | None) -> None:
    """Record ARF reports: from PATHS (`-` or none: standard input) or a maildir."""
    if maildir is not None and paths:
        raise click.UsageError("give files or --maildir, not both")
    try:
        if maildir is not None:
            refused = _maildir(maildir)
        else:
            refused = sum(not _handle(name, raw) for name, raw in _files(paths))
    except DBAPIError as exc:
        db.session.rollback()
        click.echo(f"hebdo: database unavailable, try again later: {exc.orig}", err=True)
        sys.exit(EX_TEMPFAIL)
    if refused:
        sys.exit(EX_DATAERR)


COMMANDS = (complaints_group,)
