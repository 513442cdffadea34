"""Reading mail for the `ingest` commands: files, standard input, a maildir.

A maildir (a Dovecot mailbox read from cron) is read from `new/` and `cur/` alike (an IMAP
client opening the folder moves mail to `cur/`). A mail that has served its purpose is
removed; every other one (for a person, or not even a mail) is moved to the Maildir++
folder `hebdo-kept`, and removed from the inbox only once that copy is written. On a
database or disk error the run stops and what it has not handled stays where it is.
"""

from __future__ import annotations

import logging
import mailbox
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from flask_babel import gettext as _
from sqlalchemy.exc import SQLAlchemyError

from service.extensions import db

EX_DATAERR = 65
EX_TEMPFAIL = 75
# The maildir folder (Maildir++, `.hebdo-kept`) where mails for a person go.
KEPT_FOLDER = "hebdo-kept"

log = logging.getLogger(__name__)

# What a handler makes of one mail: True served its purpose (remove it), False for a person
# (keep it), None not readable as what the command takes (keep it, exit 65).
Handler = Callable[[str, bytes], bool | None]


def about(subscriber_id: int | None, week: str | None) -> str:
    """` (subscriber 12, issue 2026-W48)`: whom a line of an ingest command's output is about."""
    if subscriber_id is not None and week:
        return " " + _("(subscriber %(id)s, issue %(week)s)", id=subscriber_id, week=week)
    if subscriber_id is not None:
        return " " + _("(subscriber %(id)s)", id=subscriber_id)
    return ""


def files(paths: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    for path in paths or ("-",):
        if path == "-":
            yield "stdin", sys.stdin.buffer.read()
        else:
            yield path, Path(path).read_bytes()


def read_maildir(folder: Path, handle: Handler, *, retry: tuple[type[Exception], ...]) -> int:
    """Handle every mail of the maildir's inbox; return how many were refused (None).
    `retry`: errors that stop the run, leaving this mail and the rest in place."""
    box = mailbox.Maildir(folder, create=False)
    kept_box: mailbox.Maildir | None = None
    refused = 0
    for key in sorted(box.iterkeys()):
        try:
            raw = box.get_bytes(key)
        except KeyError:
            continue  # taken by another run meanwhile
        try:
            done = handle(key, raw)
        except SQLAlchemyError:
            raise
        except retry:
            raise
        except Exception as exc:  # a bug on one mail must not stop every later one
            # The type only: a message or traceback could quote the reader's address.
            log.error("mail %s could not be handled: %s", key, type(exc).__name__)
            click.echo(
                _(
                    "%(name)s: could not be handled (%(error)s), kept",
                    name=key,
                    error=type(exc).__name__,
                ),
                err=True,
            )
            db.session.rollback()
            done = None
        if not done:
            if kept_box is None:
                kept_box = box.add_folder(KEPT_FOLDER)
            kept_box.add(raw)  # an OSError (disk full) stops the run with the mail in place
            refused += done is None
        box.discard(key)
    return refused


def run_ingest(
    paths: tuple[str, ...],
    maildir: Path | None,
    handle: Handler,
    *,
    retry: tuple[type[Exception], ...],
) -> None:
    """The body of an `ingest` command: exit 0 done, 65 some input refused, 75 try again."""
    if maildir is not None and paths:
        raise click.UsageError(_("give files or --maildir, not both"))
    try:
        if maildir is not None:
            refused = read_maildir(maildir, handle, retry=retry)
        else:
            refused = sum(handle(name, raw) is None for name, raw in files(paths))
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
    except retry as exc:
        db.session.rollback()
        click.echo(_("hebdo: %(error)s; try again later", error=exc), err=True)
        sys.exit(EX_TEMPFAIL)
    if refused:
        sys.exit(EX_DATAERR)
