"""A real SMTP server on loopback (aiosmtpd) that records every message it accepts and
can be told to refuse, stall or hang up; the message as received; the headers hebdo writes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from flask import Flask

from service.mail.message import Outgoing, build_message
from tests.support.settings import BASE_URL


def free_port() -> int:
    """A free loopback port (aiosmtpd's Controller cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- SMTP -------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    # time.monotonic() when the message was accepted
    at: float = 0.0

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None and body.get_content_subtype() == subtype
        content = body.get_content()
        assert isinstance(content, str)
        return content.replace("\r\n", "\n")


@dataclass
class SMTPSink:
    """aiosmtpd handler that records every accepted message, with optional fault injection."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    sessions: int = 0
    # address -> "4xx/5xx reply" to give at RCPT (fault injection)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # address -> replies for its first attempts, in order; accepted once they run out
    rcpt_sequences: dict[str, list[str]] = field(default_factory=dict)
    # seconds to sleep before accepting each message (a slow server)
    data_delay: float = 0.0
    # reply to give to every MAIL FROM (a relay refusing us), instead of accepting it
    mail_reply: str | None = None
    # replies for the next MAIL FROMs, in order (then back to normal)
    mail_sequence: list[str] = field(default_factory=list)
    # offer RFC 2920 PIPELINING, as most real servers do
    pipelining: bool = True
    # address -> how many times to hang up right after its message's final dot, unanswered
    drop_after_data: dict[str, int] = field(default_factory=dict)
    # address -> how many times to stall at its RCPT for `stall_seconds` before answering
    stall_rcpt: dict[str, int] = field(default_factory=dict)
    stall_seconds: float = 0.0
    # address -> replies to give after its message's final dot, in order (the message is
    # then not accepted); accepted once they run out
    data_replies: dict[str, list[str]] = field(default_factory=dict)
    # per message answered, in order: whether the client's next MAIL FROM had already
    # arrived when the server answered it (the client pipelined it behind the final dot)
    next_waiting: list[bool] = field(default_factory=list)
    # every RCPT seen: address -> how many times, and each refusal given (address, reply, when)
    rcpt_attempts: Counter[str] = field(default_factory=Counter)
    refusals: list[tuple[str, str, float]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        if self.pipelining:
            # aiosmtpd reads commands line by line, so it copes with pipelined ones.
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        if self.mail_sequence:
            return self.mail_sequence.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        self.rcpt_attempts[address] += 1
        if self.stall_rcpt.get(address):
            self.stall_rcpt[address] -= 1
            await asyncio.sleep(self.stall_seconds)
        reply = self.rcpt_replies.get(address)
        if not reply and self.rcpt_sequences.get(address):
            reply = self.rcpt_sequences[address].pop(0)
        if reply:
            self.refusals.append((address, reply, time.monotonic()))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        # What the client sent after the final dot, not yet read (aiosmtpd's stream buffer).
        self.next_waiting.append(bytes(server._reader._buffer).startswith(b"MAIL FROM:"))
        refusals = [self.data_replies[a] for a in envelope.rcpt_tos if self.data_replies.get(a)]
        if refusals:
            return refusals[0].pop(0)
        drop = [a for a in envelope.rcpt_tos if self.drop_after_data.get(a)]
        with self._cond:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    list(envelope.mail_options),
                    time.monotonic(),
                )
            )
            self._cond.notify_all()
        if drop:
            # The message got through, but the client never hears so.
            self.drop_after_data[drop[0]] -= 1
            server.transport.close()
        return "250 2.0.0 Message accepted"

    def per_recipient(self) -> Counter[str]:
        """How many messages each recipient got (a snapshot: the server may still receive)."""
        return Counter(m.rcpt_tos[0] for m in list(self.messages))

    def duplicates(self) -> int:
        """Messages beyond the first to the same recipient."""
        return sum(n - 1 for n in self.per_recipient().values())

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} message(s), got {len(self.messages)} after {timeout}s"
                    )
                self._cond.wait(remaining)
            return list(self.messages)


# --- Data -------------------------------------------------------------------------

# Every header hebdo writes on a mail, and nothing else (user text never adds one).
MAIL_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "MIME-Version",
    "Content-Type",
]
# What a digest adds (vacation responders stay quiet), and what a confirmation mail adds
# (RFC 3834: no automatic reply to it).
DIGEST_HEADERS = [*MAIL_HEADERS, "Precedence"]
CONFIRMATION_HEADERS = [*MAIL_HEADERS, "Auto-Submitted"]

LONG_TOKEN = "WzEyMzQ1Njc4OSwxNzk1Njg3MDUyLDFd.awgCjA." + "A" * 90


def mail_to(
    app: Flask, address: str, *, subject: str = "Confirmez votre inscription à L'Hebdo"
) -> Outgoing:
    with app.app_context():
        return build_message(
            app.config["SETTINGS"],
            to=address,
            subject=subject,
            text="Bonjour, voilà.\n",
            html="<p>Bonjour, voilà.</p>",
            unsubscribe_url=f"{BASE_URL}/unsubscribe/{LONG_TOKEN}",
            now=datetime(2026, 11, 30, 7, 0, tzinfo=UTC),
        )
