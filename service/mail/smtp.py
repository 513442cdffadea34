"""Sending over SMTP: one connection reused for many messages (with PIPELINING), and
the failures it meets, classified as transient (retry later) or permanent (the address).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from functools import lru_cache
from types import TracebackType

from service.config import Settings
from service.mail.errors import (
    DeliveryError,
    PermanentFailure,
    TransientFailure,
    _retry_after,
    classify,
)
from service.mail.message import Envelope, Outgoing


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
        # The envelope of the next message, whose MAIL, RCPT and DATA went out behind the
        # previous message's final dot (see send): their replies are still to be read.
        self._announced: Envelope | None = None

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
        if self._announced is not None:
            # The server may be waiting for a message after its 354: a QUIT would be read as
            # message text. Hanging up mid-DATA delivers nothing.
            self._drop()
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
        self._announced = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        conn: smtplib.SMTP
        try:
            conn = connect(s.smtp_host, s.smtp_port, s.smtp_tls, s.smtp_timeout)
            conn.ehlo()
            if s.smtp_tls == "starttls":
                conn.starttls(context=tls_context())
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

    def send(
        self,
        mail: Outgoing,
        *,
        following: Envelope | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> str:
        """Send `mail`; `meanwhile` runs once the message is written, before its reply is
        read (the caller's work then overlaps the server's: see delivery.send_batch).

        With `following` (the next message's envelope) and a server that offers
        PIPELINING, that message's MAIL, RCPT and DATA go right behind this one's final
        dot (RFC 2920 lets message content start a group): its own send then finds their
        replies waiting, and a message costs one round trip instead of two. Its text goes
        only when its own send is called, after this one's reply was read and returned.
        A send of another message, a failure or close() first hangs up on an announced
        one (after a 354, only hanging up leaves it undelivered)."""
        if self._announced is not None and self._announced != mail.envelope:
            self._drop()
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            reused = self._exchanges > 0
            try:
                return self._transaction(self._conn, mail, following, meanwhile)
            except _StaleConnection:
                self._drop()
                if attempt == 1 and reused:
                    continue
                raise TransientFailure(
                    None, "connection closed by server before MAIL FROM", stage="connect"
                ) from None
        raise AssertionError("unreachable")

    def _transaction(
        self,
        conn: smtplib.SMTP,
        mail: Outgoing,
        following: Envelope | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> str:
        """MAIL, RCPT, DATA, then the message.

        Written by hand: smtplib's helpers re-parse the (already validated)
        addresses and regex the whole message for line ends, which costs more
        than the rest of a send (our messages have CRLF line ends by
        construction). When the server offers PIPELINING (RFC 2920) the three
        commands go out in one write and their replies are read together,
        behind the previous message when it announced this one (see send).
        """
        commands = _commands(conn, mail.envelope)
        pipelined = conn.has_extn("pipelining")
        announced, self._announced = self._announced == mail.envelope, None
        stage = "mail"
        handed_over = False
        try:
            try:
                if not announced:
                    _write(conn, b"".join(commands) if pipelined else commands[0])
                code, resp = _reply(conn)
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
                replies.append(_reply(conn))
            # A server that answered 354 to a pipelined DATA despite a refusal now waits
            # for a message: that connection cannot be reset, only dropped.
            waiting = len(replies) == 3 and replies[2][0] == 354
            for index, (stage, accepted) in enumerate(
                (("mail", (250,)), ("rcpt", (250, 251)), ("data", (354,)))
            ):
                if index == len(replies):
                    _write(conn, commands[index])
                    replies.append(_reply(conn))
                code, resp = replies[index]
                if code not in accepted:
                    raise self._refused(conn, code, resp, stage, drop=waiting)
            _write(conn, mail.data_payload())
            # Written in full: from here a lost connection may hide an accepted message.
            handed_over = True
            if following is not None and pipelined:
                self._announce(conn, following)
            if meanwhile is not None:
                # The server reads the message (and the next envelope) meanwhile: the
                # replies are usually there when asked for.
                meanwhile()
            code, resp = _reply(conn)
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

    def _announce(self, conn: smtplib.SMTP, following: Envelope) -> None:
        try:
            commands = _commands(conn, following)
        except PermanentFailure:
            return  # its own send says why
        _write(conn, b"".join(commands))
        self._announced = following

    def _refused(
        self, conn: smtplib.SMTP, code: int, resp: bytes | str, stage: str, drop: bool = False
    ) -> DeliveryError:
        error = classify(code, _text(resp), stage)
        # The connection works: a later hang-up on it is an idle timeout, worth a reconnect.
        self._exchanges += 1
        if code == 421 or drop or self._announced is not None:
            # The server is closing the connection, or waits for a message: do not reuse it
            # (an RSET behind an announced DATA would be read as message text).
            self._drop()
        else:
            try:
                conn.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        return error


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """Built once per process: loading the system CA store costs ~45 ms, more than a batch."""
    return ssl.create_default_context()


def connect(
    host: str, port: int, tls: str, timeout: float, context: ssl.SSLContext | None = None
) -> smtplib.SMTP:
    """A connection to the relay, its greeting read: TLS from the first byte with
    `tls="ssl"` (port 465), else in clear (STARTTLS, when configured, is the caller's next
    step, after EHLO). The one way hebdo opens SMTP: the mailer, `/readyz` and `hebdo
    doctor` all connect here; `context` defaults to the process's cached one. Raises
    OSError, ssl.SSLError or smtplib.SMTPException."""
    if tls == "ssl":
        return smtplib.SMTP_SSL(host, port, timeout=timeout, context=context or tls_context())
    return smtplib.SMTP(host, port, timeout=timeout)


class _StaleConnection(Exception):
    pass


def _commands(conn: smtplib.SMTP, env: Envelope) -> list[bytes]:
    """MAIL FROM, RCPT TO and DATA for a message, encoded; PermanentFailure when its
    address needs an extension the server lacks."""
    options = ""
    if env.smtputf8:
        if not conn.has_extn("smtputf8"):
            raise PermanentFailure(
                None,
                "the server does not support SMTPUTF8, needed for this address",
                "unsupported",
            )
        options = " SMTPUTF8 BODY=8BITMIME"
    encoding = "utf-8" if env.smtputf8 else "ascii"
    return [
        f"MAIL FROM:<{env.sender}>{options}\r\n".encode(encoding),
        f"RCPT TO:<{env.recipient}>\r\n".encode(encoding),
        b"DATA\r\n",
    ]


# smtplib's limit on a reply line (its _MAXLINE).
_MAXLINE = 8192


def _write(conn: smtplib.SMTP, data: bytes) -> None:
    """What smtplib's send does for bytes, minus its per-call checks (a transaction sends
    pre-encoded commands and a message whose line ends are CRLF by construction)."""
    if conn.sock is None:
        raise smtplib.SMTPServerDisconnected("not connected")
    conn.sock.sendall(data)


def _reply(conn: smtplib.SMTP) -> tuple[int, bytes]:
    """One (possibly multi-line) reply, read as smtplib's getreply reads it, without its
    debug output: four of them per message."""
    if conn.file is None:
        if conn.sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        conn.file = conn.sock.makefile("rb")
    lines = []
    while True:
        line = conn.file.readline(_MAXLINE + 1)
        if not line:
            conn.close()
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        if len(line) > _MAXLINE:
            conn.close()
            raise smtplib.SMTPResponseException(500, "Line too long.")
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            break
    try:
        code = int(line[:3])
    except ValueError:
        code = -1
    return code, b"\n".join(lines)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
