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

import binascii
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
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from time import time_ns
from types import TracebackType
from typing import Protocol

import dkim
from email_validator import EmailNotValidError, validate_email

from .config import Settings

log = logging.getLogger(__name__)

# Raw header values written verbatim (see module docstring): we fold them ourselves.
_WIRE = policy.SMTP.clone(refold_source="none")
_WIRE_UTF8 = policy.SMTPUTF8.clone(refold_source="none")
_SAFE_HEADER_VALUE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_ENHANCED = re.compile(r"\s*5\.(\d{1,3})\.(\d{1,3})\b")
_POLICY_WORDS = re.compile(
    r"\b(?:relay\w*|policy|spam\w*|block\w*|blacklist\w*|reputation|authenticat\w*"
    r"|unauthenticated|rate.limit\w*|throttl\w*|sender)\b",
    re.IGNORECASE,
)
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+"
)
_RETRY_AFTER = re.compile(
    r"(?:try again|retry)\D{0,20}?(\d{1,5})\s*(?:s\b|sec|second)", re.IGNORECASE
)


# An address as SMTP replies quote it (`<a@b.fr>`, `a@b.fr:`, `'a@b.fr'`).
_QUOTED_ADDRESS = re.compile(r"""[^\s<>()\[\],;:"@]+@[^\s<>()\[\],;:"'@]+""")


def mask_addresses(text: str) -> str:
    """`text` with every address in it shown as `j***@exemple.fr` (as sign-up logs show
    one): the local part is what identifies a person."""
    return _QUOTED_ADDRESS.sub(lambda m: f"{m.group()[0]}***@{m.group().rpartition('@')[2]}", text)


class DeliveryError(Exception):
    """A message was not accepted; `code`/`response` are the server's words when it gave any.

    Servers quote the recipient in their replies (Postfix: `<a@b.fr>: Recipient address
    rejected`, postgrey, relay refusals). The exception's message, which goes into logs,
    error columns and an issue's pause note (kept after the subscriber is erased), shows
    such addresses masked; `response` keeps the reply as given, to classify it.
    """

    def __init__(self, code: int | None, response: str, stage: str = "") -> None:
        super().__init__(f"{code or '---'} {mask_addresses(response)}")
        self.code = code
        self.response = response
        # connect | mail | rcpt | data | unsupported (the server lacks what this mail needs).
        self.stage = stage


class TransientFailure(DeliveryError):
    """Try again later (4xx, dropped connection, timeout). `retry_after` when the server said so."""

    def __init__(
        self,
        code: int | None,
        response: str,
        retry_after: int | None = None,
        stage: str = "",
        *,
        uncertain: bool = False,
    ) -> None:
        super().__init__(code, response, stage)
        self.retry_after = retry_after
        # The connection broke after the message was handed over: it may have been delivered.
        self.uncertain = uncertain


class PermanentFailure(DeliveryError):
    """A 5xx: the server will not take this message as it stands. `kind` says whose problem:

    - `mailbox`: the reader's address does not exist or is disabled (RCPT refused with 5.1.x,
      5.2.1 or 5.4.1, or a bare 550/551/553/554): suppress it, never mail it again;
    - `sender`: our side is refused (any refusal of MAIL FROM or before it, a 5.7.x at any
      stage, a reply speaking of relay, policy, spam, blocking, reputation, authentication
      or rate limits): every reader would be, so retry later and never blame the reader;
    - `message`: this message was refused after DATA, or needs what the server lacks
      (SMTPUTF8): give it up for this reader.
    """

    @property
    def kind(self) -> str:
        enhanced = _ENHANCED.match(self.response)
        subject, detail = (enhanced.group(1), enhanced.group(2)) if enhanced else ("", "")
        if self.stage == "unsupported":
            return "message"
        if subject == "7" or _POLICY_WORDS.search(self.response):
            # Security or policy (5.7.x: relay denied, DMARC, reputation), at any stage.
            return "sender"
        if self.stage == "data":
            return "message"
        if self.stage != "rcpt":
            return "sender"
        if enhanced:
            # 5.1.x bad destination (but 5.1.7/5.1.8 are about our address), 5.2.1 mailbox
            # disabled, 5.4.1 "recipient address rejected" as Microsoft 365 words it.
            mailbox = (subject == "1" and detail not in ("7", "8")) or (subject, detail) in (
                ("2", "1"),
                ("4", "1"),
            )
            return "mailbox" if mailbox else "sender"
        return "mailbox" if self.code in (550, 551, 553, 554) else "sender"


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
    if _PLAIN_ADDRESS.fullmatch(address):
        # Already normalised at sign-up: plain ASCII needs no second validation.
        return address, False
    try:
        info = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PermanentFailure(None, f"invalid recipient address: {exc}") from None
    if info.ascii_email:
        return info.ascii_email, False
    return info.normalized, True


def _raw_header(name: str, *lines: str) -> str:
    """A header exactly as given, folded one item per line (each line ≤ 998 octets)."""
    for line in lines:
        if not _SAFE_HEADER_VALUE.fullmatch(line) or len(line) + len(name) + 2 > 998:
            raise ValueError(f"unsafe value for {name}: {line!r}")
    return f"{name}: " + "\r\n ".join(lines) + "\r\n"


def _qp(text: str) -> bytes:
    """Quoted-printable, CRLF line ends, lines ≤ 76 (binascii's C encoder)."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


class _Body:
    """A text or HTML part, encoded once; only the lines holding a marker are encoded per mail.

    Quoted-printable restarts at every hard line break, so encoding the body
    line group by line group gives the same bytes as encoding it whole.
    """

    def __init__(self, content: str, markers: tuple[str, ...]) -> None:
        self.pieces: list[bytes | str] = []
        static: list[str] = []
        for line in content.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if any(marker in line for marker in markers):
                if static:
                    self.pieces.append(_qp("\n".join(static) + "\n"))
                    static = []
                self.pieces.append(line + "\n")
            else:
                static.append(line)
        self.pieces.append(_qp("\n".join(static) + "\n"))

    def fill(self, values: dict[str, str]) -> bytes:
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                for marker, value in values.items():
                    piece = piece.replace(marker, value)
                out.append(_qp(piece))
            else:
                out.append(piece)
        return b"".join(out)


class Markers:
    """Placeholders for per-recipient values, unguessable so article text cannot forge one."""

    def __init__(self) -> None:
        self.prefix = f"%%{secrets.token_hex(6)}:"

    def __getitem__(self, name: str) -> str:
        return f"{self.prefix}{name}%%"


class MailTemplate:
    """One message prepared once, then personalised per recipient without a MIME tree.

    The digest renders its HTML and text once per issue and locale, with
    `Markers` where per-subscriber values go; `fill`
    then costs a few string replacements and the encoding of the marked lines.
    Confirmation mails use the same path with no markers: every mail hebdo
    sends is assembled here, with the same headers.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        subject: str,
        text: str,
        html: str,
        markers: Markers | None = None,
    ) -> None:
        self.settings = settings
        self.markers = markers or Markers()
        prefixes = (self.markers.prefix,)
        head = EmailMessage(policy=policy.default)
        head["From"] = settings.mail_from  # configuration, not user text
        self._from = _header_block(serialise(head)) + b"\r\n"
        self._subject = _subject_header(subject)
        check_header_block((self._from + self._subject).rstrip(b"\r\n"))
        self._list = (
            _raw_header("List-Id", f"<{settings.list_id}>")
            + _raw_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        ).encode()
        boundary = f"=_hebdo_{secrets.token_hex(12)}"
        self._mime = (
            f"MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'
        ).encode()
        part = (
            'Content-Type: text/{}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        self._text_head = f"--{boundary}\r\n{part.format('plain')}".encode()
        self._html_head = f"--{boundary}\r\n{part.format('html')}".encode()
        self._end = f"--{boundary}--\r\n".encode()
        self._text = _Body(text, prefixes)
        self._html = _Body(html, prefixes)

    def fill(
        self,
        *,
        to: str,
        unsubscribe_url: str,
        now: datetime | None = None,
        values: dict[str, str] | None = None,
        html_values: dict[str, str] | None = None,
    ) -> Outgoing:
        """The message for one recipient: `values` fill markers in the text part, and in
        the HTML part unless `html_values` (already escaped) says otherwise."""
        s = self.settings
        recipient, smtputf8 = wire_address(to)
        message_id = f"<{time_ns()}.{secrets.token_hex(6)}@{s.mail_domain}>"
        text_values = {self.markers[k]: v for k, v in (values or {}).items()}
        html_subst = {self.markers[k]: v for k, v in (html_values or values or {}).items()}
        head = b"".join(
            (
                self._from,
                b"To: " + recipient.encode() + b"\r\n",
                self._subject,
                f"Date: {format_datetime(now or datetime.now(UTC))}\r\n".encode(),
                f"Message-ID: {message_id}\r\n".encode(),
                self._list,
                _raw_header(
                    "List-Unsubscribe",
                    f"<{unsubscribe_url}>,",
                    f"<mailto:{s.unsubscribe_mailto}?subject=unsubscribe>",
                ).encode(),
                self._mime,
            )
        )
        body = b"".join(
            (
                self._text_head,
                self._text.fill(text_values),
                self._html_head,
                self._html.fill(html_subst),
                self._end,
            )
        )
        data = head + body
        if s.dkim_key:
            data = dkim_sign(s, data)
        return Outgoing(Envelope(s.mail_from_address, recipient, smtputf8), data, message_id)


def _header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


_ENCODED_WORD = re.compile(r"=\?")
_BREAKING_SPACE = re.compile(r"[^\S\u00a0\u202f]+")
_HEADER_LINE = re.compile(rb"[A-Za-z][A-Za-z0-9-]*: |[ \t]")


def _subject_header(subject: str) -> bytes:
    """The Subject line, encoded here rather than by the email package's parser.

    The subject carries an article title, so it is untrusted text: the email
    package would *decode* an encoded-word found in it (`=?utf-8?q?…=0D=0A…?=`)
    and could write a line break into the header block. Plain printable ASCII
    goes out as it is; anything else (non-ASCII, `=?`) as RFC 2047 encoded-words,
    which show the text literally.
    """
    # No CR, LF, tabs, line separators or runs of spaces; no-break spaces (French « : ») stay.
    text = _BREAKING_SPACE.sub(" ", subject).strip()
    if text.isascii() and text.isprintable() and not _ENCODED_WORD.search(text):
        line = "Subject: " + text
        if len(line) <= 998:
            return (_fold(line) + "\r\n").encode()
    encoded = Header(text, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return f"Subject: {encoded}\r\n".encode()


def _fold(line: str, width: int = 78) -> str:
    """Fold at spaces so lines stay under `width` where the words allow."""
    out, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return "\r\n ".join(out)


def check_header_block(block: bytes) -> None:
    """Every line is a `Name: value` header or a continuation: no injected line can hide."""
    for line in block.split(b"\r\n"):
        if not _HEADER_LINE.match(line) or b"\r" in line or b"\n" in line:
            raise ValueError(f"malformed header line: {line[:80]!r}")


DKIM_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-type",
)


def dkim_sign(settings: Settings, data: bytes) -> bytes:
    """Prepend a DKIM-Signature (relaxed/relaxed, rsa-sha256) over the list headers too."""
    assert settings.dkim_key is not None
    signature = dkim.sign(
        data,
        settings.dkim_selector.encode(),
        settings.mail_domain.encode(),
        settings.dkim_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(DKIM_HEADERS),
        linesep=b"\r\n",
    )
    return bytes(signature) + data


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
    template = MailTemplate(settings, subject=subject, text=text, html=html)
    return template.fill(to=to, unsubscribe_url=unsubscribe_url, now=now)


def serialise(msg: EmailMessage, *, smtputf8: bool = False) -> bytes:
    """The exact bytes of a message built with the email package (CRLF line ends)."""
    buffer = BytesIO()
    BytesGenerator(buffer, policy=_WIRE_UTF8 if smtputf8 else _WIRE).flatten(msg)
    return buffer.getvalue()


def _retry_after(response: str) -> int | None:
    match = _RETRY_AFTER.search(response)
    return int(match.group(1)) if match else None


def classify(code: int | None, response: str, stage: str = "") -> DeliveryError:
    """Map an SMTP reply to a transient or permanent failure."""
    if code is not None and 500 <= code < 600:
        return PermanentFailure(code, response, stage)
    return TransientFailure(code, response, _retry_after(response), stage)


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
        self._exchanges = 0

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
        conn: smtplib.SMTP
        try:
            if s.smtp_tls == "ssl":
                conn = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=_tls_context()
                )
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            conn.ehlo()
            if s.smtp_tls == "starttls":
                conn.starttls(context=_tls_context())
                conn.ehlo()
            if s.smtp_user:
                conn.login(s.smtp_user, s.smtp_password)
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientFailure(
                exc.smtp_code, f"SMTP login refused: {exc.smtp_error!r}", stage="connect"
            ) from None
        except smtplib.SMTPResponseException as exc:
            # Refused before any recipient: never the reader's fault, so never permanent.
            raise TransientFailure(
                exc.smtp_code,
                _text(exc.smtp_error),
                _retry_after(_text(exc.smtp_error)),
                stage="connect",
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientFailure(
                None, f"cannot connect to {s.smtp_host}:{s.smtp_port}: {exc}", stage="connect"
            ) from None
        self._exchanges = 0
        return conn

    def send(self, mail: Outgoing) -> str:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            reused = self._exchanges > 0
            try:
                return self._transaction(self._conn, mail)
            except _StaleConnection:
                self._drop()
                if attempt == 1 and reused:
                    continue
                raise TransientFailure(
                    None, "connection closed by server before MAIL FROM", stage="connect"
                ) from None
        raise AssertionError("unreachable")

    def _transaction(self, conn: smtplib.SMTP, mail: Outgoing) -> str:
        """MAIL, RCPT, DATA, then the message.

        Written by hand: smtplib's helpers re-parse the (already validated)
        addresses and regex the whole message for line ends, which costs more
        than the rest of a send (our messages have CRLF line ends by
        construction). When the server offers PIPELINING (RFC 2920) the three
        commands go out in one write and their replies are read together:
        two round trips per message instead of four.
        """
        env = mail.envelope
        options = ""
        if env.smtputf8:
            if not conn.has_extn("smtputf8"):
                raise PermanentFailure(
                    None,
                    "the server does not support SMTPUTF8, needed for this address",
                    "unsupported",
                )
            options = " SMTPUTF8 BODY=8BITMIME"
        conn.command_encoding = "utf-8" if env.smtputf8 else "ascii"
        commands = [f"MAIL FROM:<{env.sender}>{options}", f"RCPT TO:<{env.recipient}>", "DATA"]
        pipelined = conn.has_extn("pipelining")
        stage = "mail"
        handed_over = False
        try:
            try:
                if pipelined:
                    conn.send("".join(c + "\r\n" for c in commands))
                else:
                    conn.send(commands[0] + "\r\n")
                code, resp = conn.getreply()
            except (smtplib.SMTPServerDisconnected, OSError):
                # Nothing of this message was handed over yet: safe to reconnect and retry.
                raise _StaleConnection() from None
            if code == 421 and self._exchanges:
                # A reused connection the server timed out while idle: reconnect once.
                raise _StaleConnection()
            replies = [(code, resp)]
            # Every pipelined command gets its reply, even after a refusal; after a 421
            # the server hangs up, so there is nothing more to read.
            while pipelined and len(replies) < 3 and replies[-1][0] != 421:
                replies.append(conn.getreply())
            # A server that answered 354 to a pipelined DATA despite a refusal now waits
            # for a message: that connection cannot be reset, only dropped.
            waiting = len(replies) == 3 and replies[2][0] == 354
            for index, (stage, accepted) in enumerate(
                (("mail", (250,)), ("rcpt", (250, 251)), ("data", (354,)))
            ):
                if index == len(replies):
                    conn.send(commands[index] + "\r\n")
                    replies.append(conn.getreply())
                code, resp = replies[index]
                if code not in accepted:
                    raise self._refused(conn, code, resp, stage, drop=waiting)
            conn.send(_dot_stuffed(mail.data) + b".\r\n")
            # Written in full: from here a lost connection may hide an accepted message.
            handed_over = True
            code, resp = conn.getreply()
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            # Lost after the message went out: the server may have accepted it.
            raise TransientFailure(
                None,
                f"connection lost during {stage.upper()}: {exc}",
                stage=stage,
                uncertain=handed_over,
            ) from None
        if code != 250:
            raise self._refused(conn, code, resp, stage)
        self._exchanges += 1
        return f"{code} {_text(resp)}"

    def _refused(
        self, conn: smtplib.SMTP, code: int, resp: bytes | str, stage: str, drop: bool = False
    ) -> DeliveryError:
        error = classify(code, _text(resp), stage)
        # The connection works: a later hang-up on it is an idle timeout, worth a reconnect.
        self._exchanges += 1
        if code == 421 or drop:
            # The server is closing the connection: do not reuse it.
            self._drop()
        else:
            try:
                conn.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        return error


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Built once per process: loading the system CA store costs ~45 ms, more than a batch."""
    return ssl.create_default_context()


class _StaleConnection(Exception):
    pass


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 transparency: a line starting with "." gets a second one; ends with CRLF."""
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


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
