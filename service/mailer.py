"""The one mailer: build a standards-clean message, serialise it for the wire, send it.

Every mail hebdo sends goes through `build_message` and `serialise`, and leaves
through a transport: `SMTPTransport` (one connection reused for many messages)
or `CaptureTransport` (an `.eml` file per message, for local development).

Headers carry only what hebdo controls: configuration, our own subjects, the
validated recipient address and signed links. List-Unsubscribe is written as
plain folded ASCII: Python's default policy would turn a long URL into an
RFC 2047 encoded-word that mailbox providers do not decode.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Protocol

from email_validator import EmailNotValidError, validate_email

from .config import Settings

log = logging.getLogger(__name__)

# Raw header values written verbatim (see module docstring): we fold them ourselves.
_WIRE = policy.SMTP.clone(refold_source="none")
_WIRE_UTF8 = policy.SMTPUTF8.clone(refold_source="none")
_SAFE_HEADER_VALUE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_RETRY_AFTER = re.compile(
    r"(?:try again|retry)\D{0,20}?(\d{1,5})\s*(?:s\b|sec|second)", re.IGNORECASE
)


class DeliveryError(Exception):
    """A message was not accepted; `code`/`response` are the server's words when it gave any."""

    def __init__(self, code: int | None, response: str) -> None:
        super().__init__(f"{code or '---'} {response}")
        self.code = code
        self.response = response


class TransientFailure(DeliveryError):
    """Try again later (4xx, dropped connection, timeout). `retry_after` when the server said so."""

    def __init__(self, code: int | None, response: str, retry_after: int | None = None) -> None:
        super().__init__(code, response)
        self.retry_after = retry_after


class PermanentFailure(DeliveryError):
    """Never try this recipient again with this message (5xx)."""


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    smtputf8: bool


@dataclass(frozen=True)
class Outgoing:
    """A serialised message and its envelope: what a transport sends."""

    envelope: Envelope
    data: bytes
    message_id: str


class Transport(Protocol):
    def send(self, mail: Outgoing) -> str:
        """Send one message; return the server's final reply. Raises DeliveryError."""


def wire_address(address: str) -> tuple[str, bool]:
    """The form of a stored address to put on the wire, and whether it needs SMTPUTF8.

    ASCII local parts go out with the domain in punycode; a non-ASCII local part
    can only be delivered over SMTPUTF8.
    """
    try:
        info = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PermanentFailure(None, f"invalid recipient address: {exc}") from None
    if info.ascii_email:
        return info.ascii_email, False
    return info.normalized, True


def _set_raw_header(msg: EmailMessage, name: str, *lines: str) -> None:
    """Add a header exactly as given, folded one item per line (each line ≤ 998 octets)."""
    for line in lines:
        if not _SAFE_HEADER_VALUE.fullmatch(line) or len(line) + len(name) + 2 > 998:
            raise ValueError(f"unsafe value for {name}: {line!r}")
    msg.set_raw(name, "\n ".join(lines))


def build_message(
    settings: Settings,
    *,
    to: str,
    subject: str,
    text: str,
    html: str,
    unsubscribe_url: str,
    now: datetime | None = None,
) -> Outgoing:
    """Build and serialise one mail to one recipient, with RFC 2369/2919/8058 list headers."""
    recipient, smtputf8 = wire_address(to)
    msg = EmailMessage(policy=policy.default)
    msg["From"] = settings.mail_from
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    message_id = make_msgid(idstring=secrets.token_hex(4), domain=settings.mail_domain)
    msg["Message-ID"] = message_id
    _set_raw_header(msg, "List-Id", f"<{settings.list_id}>")
    _set_raw_header(
        msg,
        "List-Unsubscribe",
        f"<{unsubscribe_url}>,",
        f"<mailto:{settings.unsubscribe_mailto}?subject=unsubscribe>",
    )
    _set_raw_header(msg, "List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return Outgoing(
        envelope=Envelope(settings.mail_from_address, recipient, smtputf8),
        data=serialise(msg, smtputf8=smtputf8),
        message_id=message_id,
    )


def serialise(msg: EmailMessage, *, smtputf8: bool = False) -> bytes:
    """The exact bytes that go on the wire (CRLF line ends)."""
    buffer = BytesIO()
    BytesGenerator(buffer, policy=_WIRE_UTF8 if smtputf8 else _WIRE).flatten(msg)
    return buffer.getvalue()


def _retry_after(response: str) -> int | None:
    match = _RETRY_AFTER.search(response)
    return int(match.group(1)) if match else None


def classify(code: int | None, response: str) -> DeliveryError:
    """Map an SMTP reply to a transient or permanent failure."""
    if code is not None and 500 <= code < 600:
        return PermanentFailure(code, response)
    return TransientFailure(code, response, _retry_after(response))


class SMTPTransport:
    """One SMTP connection, opened on first use and reused for every message.

    A server that hung up while the connection sat idle is reconnected to once,
    but only when the failure came before the message was handed over: after
    DATA the message may have been accepted, and sending it again could
    deliver it twice, so that case is reported as a transient failure.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: smtplib.SMTP | None = None
        self._sent_on_conn = 0

    def __enter__(self) -> SMTPTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (smtplib.SMTPException, OSError):
                self._conn.close()
            self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        conn: smtplib.SMTP
        try:
            if s.smtp_tls == "ssl":
                conn = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=context
                )
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            conn.ehlo()
            if s.smtp_tls == "starttls":
                conn.starttls(context=context)
                conn.ehlo()
            if s.smtp_user:
                conn.login(s.smtp_user, s.smtp_password)
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientFailure(
                exc.smtp_code, f"SMTP login refused: {exc.smtp_error!r}"
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise classify(exc.smtp_code, _text(exc.smtp_error)) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientFailure(
                None, f"cannot connect to {s.smtp_host}:{s.smtp_port}: {exc}"
            ) from None
        self._sent_on_conn = 0
        return conn

    def send(self, mail: Outgoing) -> str:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            reused = self._sent_on_conn > 0
            try:
                return self._transaction(self._conn, mail)
            except _StaleConnection:
                self._drop()
                if attempt == 1 and reused:
                    continue
                raise TransientFailure(
                    None, "connection closed by server before MAIL FROM"
                ) from None
        raise AssertionError("unreachable")

    def _transaction(self, conn: smtplib.SMTP, mail: Outgoing) -> str:
        env = mail.envelope
        options: list[str] = []
        if env.smtputf8:
            if not conn.has_extn("smtputf8"):
                raise PermanentFailure(
                    None, "the server does not support SMTPUTF8, needed for this address"
                )
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        try:
            code, resp = conn.mail(env.sender, options)
        except (smtplib.SMTPServerDisconnected, OSError):
            # Nothing of this message was handed over yet: safe to reconnect and retry.
            raise _StaleConnection() from None
        try:
            if code != 250:
                raise self._refused(conn, code, resp)
            code, resp = conn.rcpt(env.recipient)
            if code not in (250, 251):
                raise self._refused(conn, code, resp)
            code, resp = conn.data(mail.data)
        except smtplib.SMTPResponseException as exc:
            raise self._refused(conn, exc.smtp_code, exc.smtp_error) from None
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            raise TransientFailure(None, f"connection lost during the transaction: {exc}") from None
        if code != 250:
            raise self._refused(conn, code, resp)
        self._sent_on_conn += 1
        return f"{code} {_text(resp)}"

    def _refused(self, conn: smtplib.SMTP, code: int, resp: bytes | str) -> DeliveryError:
        error = classify(code, _text(resp))
        if code == 421:
            # The server is closing the connection: do not reuse it.
            self._drop()
        else:
            try:
                conn.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        return error


class _StaleConnection(Exception):
    pass


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class CaptureTransport:
    """Writes each message as `<data_dir>/mail/<time>-<random>.eml`, byte for byte."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> CaptureTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send(self, mail: Outgoing) -> str:
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}.eml"
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(mail.data)
        # Atomic rename: the mailbox view never shows a half-written file.
        os.replace(temporary, self.folder / name)
        return f"250 captured as {name}"


@contextmanager
def open_transport(settings: Settings) -> Iterator[Transport]:
    """The configured transport, closed on exit."""
    transport: SMTPTransport | CaptureTransport
    if settings.capture_mail:
        transport = CaptureTransport(settings.mail_capture_dir)
    else:
        transport = SMTPTransport(settings)
    with transport:
        yield transport
