"""The transport every sender uses: SMTP when a relay is configured, else local capture."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from service.config import Settings
from service.mail.capture import CaptureTransport
from service.mail.message import Envelope, Outgoing
from service.mail.smtp import SMTPTransport


class Transport(Protocol):
    def send(
        self,
        mail: Outgoing,
        *,
        following: Envelope | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> str:
        """Send one message; return the server's final reply. Raises DeliveryError.

        `following` is the next message's envelope, which SMTP may announce behind this
        one (see SMTPTransport.send); `meanwhile` is called once the message is handed
        over, before its reply is read: a send builds the next reader's copy there while
        the server reads this one."""


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


def send_one(settings: Settings, mail: Outgoing) -> str:
    """Send one message over its own connection (a forward now and then, not a send)."""
    with open_transport(settings) as transport:
        return transport.send(mail)
