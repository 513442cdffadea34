"""Reading a mail that came back: bounded, and never trusting what it says about itself.

Whatever reaches the bounce, unsubscribe or reply address is anybody's: a DSN, a reader's
reply, spam, or bytes that are no mail at all. `read_mail` parses it once with limits
(size, MIME parts, nesting) so that the classifiers after it read a bounded tree, and
gathers the addresses it was delivered to: the envelope the MTA gave (a pipe's
`${original_recipient}`, the SMTP listener's RCPT TO) and the headers MTAs add on
delivery (Delivered-To, X-Original-To, Envelope-To), then To and Cc. Those addresses only
say where to look: a VERP token in one of them counts once its signature holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email import policy
from email.feedparser import BytesFeedParser
from email.message import EmailMessage, Message
from email.utils import getaddresses

# A DSN or ARF report returns the original mail, often whole: a digest with its HTML is
# ~100 KB. Four times that would already be odd; 2 MiB is the limit of every way in.
MAX_BYTES = 2 * 1024 * 1024
# More MIME parts or deeper nesting than any bounce or reply has: a crafted mail.
MAX_PARTS = 200
MAX_DEPTH = 10
# Headers that name the address a mail was delivered to, most specific first.
DELIVERY_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")


class NotMail(ValueError):
    """The bytes are not a mail hebdo can read; the message says why."""


def text(value: object, limit: int) -> str:
    """A header value as one bounded line (folding, CR/LF and NUL gone)."""
    return " ".join(str(value or "").replace("\x00", " ").split())[:limit]


@dataclass(frozen=True)
class Mail:
    raw: bytes
    message: EmailMessage
    # The envelope sender: "" for the null sender (`MAIL FROM:<>`, every DSN), None unknown.
    envelope_from: str | None
    # Envelope recipients first, then the delivery headers, then To and Cc; lower-cased.
    recipients: tuple[str, ...]

    @property
    def digest(self) -> str:
        """The SHA-256 of the bytes: the same mail delivered twice is recorded once."""
        return hashlib.sha256(self.raw).hexdigest()

    def headers(self, name: str) -> list[str]:
        """Every value of a header, as one bounded line each, as written (no decoding of
        structured fields, which raises on the broken ones spam carries)."""
        wanted = name.lower()
        return [
            text(value, 2000) for key, value in self.message.raw_items() if key.lower() == wanted
        ]

    def header(self, name: str) -> str:
        values = self.headers(name)
        return values[0] if values else ""

    @property
    def subject(self) -> str:
        """The subject, decoded (RFC 2047), one bounded line."""
        try:
            return text(self.message.get("Subject", ""), 200)
        except Exception:  # a broken encoded-word: the raw text
            return self.header("Subject")[:200]

    @property
    def from_address(self) -> str | None:
        """The From header's address (lower-cased), or None when it has none."""
        found = _addresses(self.headers("From"))
        return found[0] if found else None


def _addresses(values: list[str]) -> list[str]:
    out = []
    for _name, address in getaddresses(values):
        address = address.strip().strip("<>").lower()
        if "@" in address and address not in out:
            out.append(address)
    return out


class _TooManyParts(Exception):
    """Raised from inside the parser at the part past MAX_PARTS: the rest is never read."""


def parse(raw: bytes) -> EmailMessage:
    """The bytes as a message, at most MAX_BYTES, MAX_PARTS parts, MAX_DEPTH deep.

    Every way in that parses a mail from outside goes through here: Python's parser costs
    ~0.2 ms a part, so a 2 MiB report of 50,000 empty parts held a web worker for 10 s
    when the parts were counted after parsing. Here the parser's own factory counts each
    part (and message/rfc822 part) as it makes it, and the part after MAX_PARTS stops the
    parsing there. Raises NotMail with the reason; the email package's own exceptions on
    broken input become NotMail too."""
    if len(raw) > MAX_BYTES:
        raise NotMail(f"larger than {MAX_BYTES} bytes")
    made = 0

    def counted(*args: object, **kwargs: object) -> EmailMessage:
        nonlocal made
        made += 1
        if made > MAX_PARTS:
            raise _TooManyParts
        return EmailMessage(*args, **kwargs)  # type: ignore[arg-type]

    try:
        parser = BytesFeedParser(_factory=counted, policy=policy.default)
        parser.feed(raw)
        message = parser.close()
        assert isinstance(message, EmailMessage)
        _check_shape(message)
    except _TooManyParts:
        raise NotMail(f"more than {MAX_PARTS} MIME parts") from None
    except NotMail:
        raise
    except Exception as exc:
        # The email package raises all sorts on broken input (IndexError, TypeError,
        # binascii.Error…): what it cannot read is refused like any non-mail.
        raise NotMail(f"unreadable ({type(exc).__name__})") from None
    return message


def read_mail(
    raw: bytes,
    *,
    envelope_from: str | None = None,
    envelope_recipients: tuple[str, ...] | list[str] = (),
) -> Mail:
    """Parse one mail. Raises NotMail (with the reason) for what is no mail at all."""
    if len(raw) > MAX_BYTES:
        raise NotMail(f"larger than {MAX_BYTES} bytes")
    if not raw.strip():
        raise NotMail("empty")
    message = parse(raw)
    if len(message.keys()) == 0:
        raise NotMail("no header fields")
    if not any(message.get(name) for name in ("From", "Subject", "Date", "Message-ID")):
        raise NotMail("none of From, Subject, Date or Message-ID")
    sender = envelope_from.strip().strip("<>").lower() if envelope_from is not None else None
    found: list[str] = []
    for address in [
        *(a.strip().strip("<>").lower() for a in envelope_recipients),
        *_addresses([v for h in DELIVERY_HEADERS for v in _raw(message, h)]),
        *_addresses(_raw(message, "To") + _raw(message, "Cc")),
    ]:
        if address and address not in found:
            found.append(address)
    return Mail(raw=raw, message=message, envelope_from=sender, recipients=tuple(found[:20]))


def _raw(message: Message, name: str) -> list[str]:
    wanted = name.lower()
    return [text(v, 2000) for k, v in message.raw_items() if k.lower() == wanted]


def _check_shape(message: Message) -> None:
    """At most MAX_PARTS parts, nested at most MAX_DEPTH deep."""
    count = 0
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        count += 1
        if count > MAX_PARTS:
            raise NotMail(f"more than {MAX_PARTS} MIME parts")
        if depth > MAX_DEPTH:
            raise NotMail(f"MIME parts nested deeper than {MAX_DEPTH}")
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))


def bodies(message: Message, limit: int = 256 * 1024) -> str:
    """The text of the mail's text/* parts (not HTML), decoded, at most `limit` characters:
    what a bounce says for people, and the returned mail when an MTA quotes it as text."""
    out: list[str] = []
    size = 0
    for part in message.walk():
        if part.get_content_maintype() != "text" or part.get_content_subtype() == "html":
            continue
        if str(part.get("Content-Disposition", "")).lower().startswith("attachment") and (
            part.get_content_subtype() != "rfc822-headers"
        ):
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:  # a broken transfer encoding: read as nothing
            payload = None
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            chunk = payload.decode(charset, "replace")
        except LookupError:
            chunk = payload.decode("utf-8", "replace")
        out.append(chunk[: limit - size])
        size += len(out[-1])
        if size >= limit:
            break
    return "\n".join(out)
