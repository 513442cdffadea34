"""`hebdo inbound`: every mail that comes back (bounces, complaints, mailto unsubscribes,
auto-replies, replies), from an MTA's pipe, a maildir or an SMTP/LMTP connection.

- `hebdo inbound ingest [FILE…|-]`: an MTA that pipes each mail to a command (a Postfix
  pipe transport, an alias); `--sender` and `--recipient` pass the envelope it knows
  (`${sender}`, `${original_recipient}`). The exit status tells the MTA what to do with
  the mail (sysexits: 0 recorded, 65 no mail at all, so it bounces back, 75 try again
  later, so it stays queued).
- `hebdo inbound ingest --maildir DIR`: a mailbox read from cron. A mail acted on is
  removed; one for a person (a reply kept, a bounce nothing ties to a delivery) is moved
  to the `hebdo-kept` folder. Every mail is in the admin page's record either way.
- `hebdo inbound serve`: an SMTP (or LMTP) listener for MTAs and containers that forward
  rather than pipe. It answers 250 only once the mail is recorded, 451 when it cannot be
  now (database away: the MTA keeps it and retries), 550 for bytes that are no mail.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from flask import Flask, current_app
from flask.cli import AppGroup
from flask_babel import gettext as _
from sqlalchemy.exc import SQLAlchemyError

from service.cli.mailboxes import KEPT_FOLDER, about, run_ingest
from service.config import Settings
from service.extensions import current_settings, db
from service.inbound.reading import MAX_BYTES, NotMail
from service.inbound.receive import Received, RetryLater, receive
from service.mail.transport import send_one

log = logging.getLogger(__name__)

inbound_group = AppGroup("inbound", help="Mail that comes back: bounces, replies, unsubscribes.")


def _describe(name: str, got: Received) -> str:
    where = about(got.subscriber_id, got.issue)
    replay = " " + _("(received before)") if got.replay else ""
    return f"{name}: {got.kind} {got.verdict}{where}: {got.rule}{replay}"


def _take(
    settings: Settings, raw: bytes, *, source: str, sender: str | None, recipients: list[str]
) -> Received:
    return receive(
        settings,
        raw,
        source=source,
        now=datetime.now(UTC),
        envelope_from=sender,
        recipients=recipients,
        forward=functools.partial(send_one, settings),
    )


@inbound_group.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--maildir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Read every mail of this maildir instead (handled ones are removed, those for a "
    f"person moved to its {KEPT_FOLDER} folder).",
)
@click.option("--sender", default=None, help="The envelope sender (empty: the null sender).")
@click.option(
    "--recipient", "recipients", multiple=True, help="An envelope recipient (repeatable)."
)
def ingest_command(
    paths: tuple[str, ...], maildir: Path | None, sender: str | None, recipients: tuple[str, ...]
) -> None:
    """Record mails that came back: from PATHS (`-` or none: standard input) or a maildir."""
    settings = current_settings()
    source = "maildir" if maildir is not None else "cli"

    def handle(name: str, raw: bytes) -> bool | None:
        try:
            got = _take(settings, raw, source=source, sender=sender, recipients=list(recipients))
        except NotMail as exc:
            click.echo(_("%(name)s: not a mail: %(reason)s", name=name, reason=exc), err=True)
            return None
        click.echo(_describe(name, got))
        return got.acted

    run_ingest(paths, maildir, handle, retry=(RetryLater,))


class InboundHandler:
    """aiosmtpd's handler: each mail recorded (in a thread, in an app context) before the
    answer. Recipients outside hebdo's own domains are refused at RCPT."""

    def __init__(self, app: Flask, source: str) -> None:
        self.app = app
        self.source = source
        settings: Settings = app.config["SETTINGS"]
        self.settings = settings
        self.domains = {
            address.rpartition("@")[2].lower()
            for address in (
                settings.bounce_address,
                settings.unsubscribe_mailto,
                settings.mail_from_address,
            )
            if address
        }

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.rpartition("@")[2].lower() not in self.domains:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(
            None,
            self._record,
            envelope.original_content or b"",
            envelope.mail_from,
            list(envelope.rcpt_tos),
        )
        # LMTP answers once per recipient; it is one mail, so one answer for each.
        count = len(envelope.rcpt_tos) if isinstance(server, LMTP) else 1
        return "\r\n".join([reply] * max(count, 1))

    def _record(self, raw: bytes, sender: str | None, recipients: list[str]) -> str:
        with self.app.app_context():
            try:
                got = _take(
                    self.settings, raw, source=self.source, sender=sender, recipients=recipients
                )
            except NotMail as exc:
                return f"550 5.6.0 Not a mail: {exc}"
            except (SQLAlchemyError, RetryLater, OSError) as exc:
                db.session.rollback()
                log.warning("inbound mail not recorded, retry asked: %s", type(exc).__name__)
                return "451 4.3.0 Cannot record the mail now, try again later"
            except Exception:
                db.session.rollback()
                log.exception("inbound mail could not be handled")
                return "451 4.3.0 Cannot record the mail now, try again later"
            finally:
                db.session.remove()
            return f"250 2.0.0 Recorded #{got.id}: {got.kind} {got.verdict}"


async def _serve(app: Flask, host: str, port: int, lmtp: bool) -> None:
    loop = asyncio.get_running_loop()
    handler = InboundHandler(app, "lmtp" if lmtp else "smtp")
    protocol = LMTP if lmtp else SMTP

    def factory() -> SMTP:
        return protocol(
            handler,
            data_size_limit=MAX_BYTES,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=app.config["SETTINGS"].mail_domain,
            ident="hebdo inbound",
        )

    server = await loop.create_server(factory, host=host, port=port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    click.echo(
        _(
            "hebdo inbound: listening on %(host)s:%(port)s (%(protocol)s)",
            host=host,
            port=port,
            protocol="LMTP" if lmtp else "SMTP",
        ),
    )
    await stop.wait()
    server.close()
    await server.wait_closed()


@inbound_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=2525, show_default=True, type=click.IntRange(1, 65535))
@click.option("--lmtp", is_flag=True, help="Speak LMTP (for an MTA's lmtp transport).")
def serve_command(host: str, port: int, lmtp: bool) -> None:
    """Listen for mail that comes back, over SMTP or LMTP, until stopped (SIGTERM)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    asyncio.run(_serve(app, host, port, lmtp))


COMMANDS = (inbound_group,)
