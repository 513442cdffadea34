"""The one way a mail is built: a standards-clean message and its bytes for the wire.

Every mail hebdo sends goes through `build_message` (or a `MailTemplate` filled per
subscriber) and `serialise`. Headers carry only what hebdo controls: configuration, our own
subjects, the validated address; never text a visitor typed. DKIM signs the final bytes.
"""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.generator import BytesGenerator
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime
from io import BytesIO
from time import time_ns

import dkim
from email_validator import EmailNotValidError, validate_email

from service.config import Settings
from service.mail.errors import PermanentFailure

# Raw header values written verbatim (see module docstring): we fold them ourselves.
_WIRE = policy.SMTP.clone(refold_source="none")
_WIRE_UTF8 = policy.SMTPUTF8.clone(refold_source="none")
_SAFE_HEADER_VALUE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+"
)


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    smtputf8: bool


class Outgoing:
    """A serialised message and its envelope: what a transport sends.

    Built from the message (`data`) or from what SMTP's DATA carries (`wire`: dot-stuffed,
    ending with CRLF . CRLF), or both; the other form is worked out when first asked for. A
    digest's template builds the wire form from pieces stuffed once: scanning an 18 KB
    digest for line-leading dots per reader cost more than building it, and without DKIM
    (which signs the message itself) the message form is then never built for SMTP.
    """

    __slots__ = ("_data", "_wire", "envelope", "message_id")

    def __init__(
        self,
        envelope: Envelope,
        data: bytes | None,
        message_id: str,
        *,
        wire: bytes | None = None,
    ) -> None:
        if data is None and wire is None:
            raise ValueError("a message needs its bytes")
        self.envelope = envelope
        self.message_id = message_id
        self._data = data
        self._wire = wire

    @property
    def data(self) -> bytes:
        """The message, as the recipient's server stores it."""
        if self._data is None:
            assert self._wire is not None
            self._data = dot_unstuffed(self._wire)
        return self._data

    def data_payload(self) -> bytes:
        """The message as DATA sends it."""
        if self._wire is None:
            self._wire = dot_stuffed(self.data) + b".\r\n"
        return self._wire


_LEADING_DOT = re.compile(rb"(?m)^\.")


def dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 transparency: a line starting with "." gets a second one; ends with CRLF."""
    if data.startswith(b".") or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


_LEADING_DOTS = re.compile(rb"(?m)^\.\.")


def dot_unstuffed(wire: bytes) -> bytes:
    """The message DATA carried (`wire`, with its final CRLF . CRLF), as the server stores it."""
    data = wire.removesuffix(b".\r\n")
    if data.startswith(b"..") or b"\n.." in data:
        data = _LEADING_DOTS.sub(b".", data)
    return data


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
        # A marked line is kept split around its markers (text at even places, markers at
        # odd ones), so a mail fills it with one join instead of a replace per value.
        marker = re.compile("(" + "|".join(f"{re.escape(m)}[^%]*%%" for m in markers) + ")")
        self.pieces: list[bytes | list[str]] = []
        static: list[str] = []
        for line in content.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if any(m in line for m in markers):
                if static:
                    self.pieces.append(_qp("\n".join(static) + "\n"))
                    static = []
                self.pieces.append(marker.split(line + "\n"))
            else:
                static.append(line)
        self.pieces.append(_qp("\n".join(static) + "\n"))
        # Every piece starts a line: the static ones are dot-stuffed here, once.
        self.wire_pieces = [dot_stuffed(p) if isinstance(p, bytes) else b"" for p in self.pieces]

    def fill(self, values: dict[str, str], *, need_raw: bool = True) -> tuple[bytes, bytes]:
        """The part for one recipient as SMTP's DATA carries it, and (`need_raw`) as it is
        (else b"")."""
        out = []
        wire = []
        for piece, wired in zip(self.pieces, self.wire_pieces, strict=True):
            if isinstance(piece, list):
                filled = piece.copy()
                filled[1::2] = [values.get(m, m) for m in piece[1::2]]
                encoded = _qp("".join(filled))
                wire.append(dot_stuffed(encoded))  # a line or two
            else:
                encoded = piece
                wire.append(wired)
            if need_raw:
                out.append(encoded)
        return b"".join(out), b"".join(wire)


# What a mail is, for the headers that say how to treat it.
DIGEST = "digest"
CONFIRMATION = "confirmation"
TEST = "test"


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
        kind: str = DIGEST,
        campaign: str = "",
    ) -> None:
        self.settings = settings
        self.markers = markers or Markers()
        prefixes = (self.markers.prefix,)
        head = EmailMessage(policy=policy.default)
        head["From"] = settings.mail_from  # configuration, not user text
        self._from = _header_block(serialise(head)) + b"\r\n"
        self._subject = _subject_header(subject)
        check_header_block((self._from + self._subject).rstrip(b"\r\n"))
        # Replies go to a person (HEBDO_REPLY_TO), never to the bounce address.
        reply_to = _raw_header("Reply-To", settings.reply_to) if settings.reply_to else ""
        self._list = (
            reply_to
            + _raw_header("List-Id", f"<{settings.list_id}>")
            + _raw_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
            + _kind_headers(settings, kind, campaign)
        ).encode()
        self._dkim_headers = dkim_headers(bool(settings.reply_to))
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
        envelope_from: str | None = None,
        unsubscribe_mailto: str | None = None,
        envelope: Envelope | None = None,
    ) -> Outgoing:
        """The message for one recipient: `values` fill markers in the text part, and in
        the HTML part unless `html_values` (already escaped) says otherwise. `envelope_from`
        is the recipient's VERP bounce address and `unsubscribe_mailto` their own
        unsubscribe address (inbound.verp); without them, HEBDO_MAIL_FROM's address and
        HEBDO_UNSUBSCRIBE_MAILTO. `envelope`, when the caller already worked it out for `to`
        (a send announces it ahead), is used as it is."""
        s = self.settings
        if envelope is None:
            address, smtputf8 = wire_address(to)
            envelope = Envelope(envelope_from or s.mail_from_address, address, smtputf8)
        recipient = envelope.recipient
        message_id = f"<{time_ns()}.{secrets.token_hex(6)}@{s.mail_domain}>"
        text_values = {self.markers[k]: v for k, v in (values or {}).items()}
        html_subst = {self.markers[k]: v for k, v in (html_values or values or {}).items()}
        head = b"".join(
            (
                self._from,
                b"To: " + recipient.encode() + b"\r\n",
                self._subject,
                _date_header(now or datetime.now(UTC)),
                f"Message-ID: {message_id}\r\n".encode(),
                self._list,
                _raw_header(
                    "List-Unsubscribe",
                    f"<{unsubscribe_url}>,",
                    f"<mailto:{unsubscribe_mailto or s.unsubscribe_mailto}?subject=unsubscribe>",
                ).encode(),
                self._mime,
            )
        )
        text, text_wire = self._text.fill(text_values, need_raw=bool(s.dkim_key))
        html, html_wire = self._html.fill(html_subst, need_raw=bool(s.dkim_key))
        # No header or MIME boundary line starts with a dot: only the parts needed stuffing.
        wire = (head, self._text_head, text_wire, self._html_head, html_wire, self._end, b".\r\n")
        if not s.dkim_key:
            return Outgoing(envelope, None, message_id, wire=b"".join(wire))
        data = b"".join((head, self._text_head, text, self._html_head, html, self._end))
        signature = dkim_signature(s, data, self._dkim_headers)
        return Outgoing(envelope, signature + data, message_id, wire=b"".join((signature, *wire)))


# The last Date line written: the messages of one second share it (formatting a date is
# a few µs, per message).
_last_date: list[tuple[datetime, bytes]] = []


def _date_header(now: datetime) -> bytes:
    second = now.replace(microsecond=0)
    if _last_date and _last_date[0][0] == second and _last_date[0][0].tzinfo == now.tzinfo:
        return _last_date[0][1]
    line = f"Date: {format_datetime(second)}\r\n".encode()
    _last_date[:] = [(second, line)]
    return line


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


# Signed once each.
DKIM_HEADERS = (
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"precedence",
    b"auto-submitted",
    b"feedback-id",
)
# Signed once more than they occur ("oversigned"): a relay or an attacker who adds a second
# From, a Subject or a List-Unsubscribe of their own breaks the signature, and so does one
# who adds a Reply-To to a mail that had none.
OVERSIGNED = (
    b"from",
    b"to",
    b"subject",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)


def dkim_headers(reply_to: bool) -> list[bytes]:
    """The `h=` of a mail: every header hebdo writes, each oversigned one listed once more
    than it occurs (Reply-To once when there is none, twice when there is)."""
    present = [*OVERSIGNED, b"reply-to"] if reply_to else list(OVERSIGNED)
    return [*present, *DKIM_HEADERS, *OVERSIGNED, b"reply-to"]


def dkim_sign(settings: Settings, data: bytes, include: list[bytes] | None = None) -> bytes:
    """Prepend a DKIM-Signature (relaxed/relaxed, rsa-sha256) over the list headers too."""
    return dkim_signature(settings, data, include) + data


def dkim_signature(settings: Settings, data: bytes, include: list[bytes] | None = None) -> bytes:
    """The DKIM-Signature header line(s) for `data`."""
    assert settings.dkim_key is not None
    signature = dkim.sign(
        data,
        settings.dkim_selector.encode(),
        settings.mail_domain.encode(),
        settings.dkim_key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=include or dkim_headers(bool(settings.reply_to)),
        linesep=b"\r\n",
    )
    return bytes(signature)


def _kind_headers(settings: Settings, kind: str, campaign: str) -> str:
    """`Precedence: bulk` on the digest (vacation responders stay quiet), `Auto-Submitted:
    auto-generated` on confirmation mails (RFC 3834: no auto-reply to them), and a
    `Feedback-ID` in Gmail's form (campaign:customer:mail type:sender id; Postmaster Tools
    groups complaints by it): the issue's week, the list, the kind of mail, the sending
    domain."""
    headers = ""
    if kind == DIGEST:
        headers += _raw_header("Precedence", "bulk")
    elif kind == CONFIRMATION:
        headers += _raw_header("Auto-Submitted", "auto-generated")
    fields = (campaign or kind, settings.list_id, kind, settings.mail_domain)
    return headers + _raw_header("Feedback-ID", ":".join(f.replace(":", ".") for f in fields))


def build_message(
    settings: Settings,
    *,
    to: str,
    subject: str,
    text: str,
    html: str,
    unsubscribe_url: str,
    now: datetime | None = None,
    kind: str = CONFIRMATION,
    envelope_from: str | None = None,
    unsubscribe_mailto: str | None = None,
) -> Outgoing:
    """Build and serialise one mail to one recipient, with RFC 2369/2919/8058 list headers
    (see MailTemplate.fill for the envelope sender and the mailto)."""
    template = MailTemplate(settings, subject=subject, text=text, html=html, kind=kind)
    return template.fill(
        to=to,
        unsubscribe_url=unsubscribe_url,
        now=now,
        envelope_from=envelope_from,
        unsubscribe_mailto=unsubscribe_mailto,
    )


FORWARD = "forward"


def forward_message(
    settings: Settings,
    *,
    to: str,
    subject: str,
    note: str,
    original: bytes,
    reply_to: str | None,
    now: datetime | None = None,
) -> Outgoing:
    """A mail that came back (a reader's reply) sent on to a person: hebdo's own From and
    subject, a note, the mail attached whole (message/rfc822). Not list mail, so no List-*
    headers; `Auto-Submitted` and X-Hebdo-Forwarded so that neither a responder nor hebdo
    itself (were the person's address to lead back here) answers or forwards it again.
    `reply_to` is the reader's address, validated here, so the person can answer them."""
    recipient, smtputf8 = wire_address(to)
    answer: str | None = None
    if reply_to:
        try:
            answer, needs_utf8 = wire_address(reply_to)
            smtputf8 = smtputf8 or needs_utf8
        except PermanentFailure:
            answer = None
    message_id = f"<{time_ns()}.{secrets.token_hex(6)}@{settings.mail_domain}>"
    head = EmailMessage(policy=policy.default)
    head["From"] = settings.mail_from  # configuration, not user text
    head["To"] = recipient
    head["Subject"] = subject  # hebdo's words, never the reader's
    head["Date"] = format_datetime(now or datetime.now(UTC))
    head["Message-ID"] = message_id
    if answer:
        head["Reply-To"] = answer
    head["Auto-Submitted"] = "auto-generated"
    head["X-Hebdo-Forwarded"] = "reply"
    boundary = f"=_hebdo_{secrets.token_hex(12)}"
    head["MIME-Version"] = "1.0"
    head["Content-Type"] = f'multipart/mixed; boundary="{boundary}"'
    # The attached mail goes as it came (CRLF line ends), 8bit when it has 8-bit bytes;
    # as an opaque .eml file (base64) when it could not travel as a message part.
    lines = original.replace(b"\r\n", b"\n").split(b"\n")
    if b"\0" in original or any(len(line) > 998 for line in lines):
        attached = (
            b'Content-Type: application/octet-stream; name="reply.eml"\r\n'
            b'Content-Disposition: attachment; filename="reply.eml"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + b"".join(
                binascii.b2a_base64(original[i : i + 57]).replace(b"\n", b"\r\n")
                for i in range(0, len(original), 57)
            ).rstrip(b"\r\n")
        )
    else:
        eight = any(byte > 127 for byte in original)
        attached = (
            b"Content-Type: message/rfc822\r\n"
            + (b"Content-Transfer-Encoding: 8bit\r\n" if eight else b"")
            + b"Content-Disposition: inline\r\n\r\n"
            + b"\r\n".join(lines).rstrip(b"\r\n")
        )
    data = b"".join(
        (
            _header_block(serialise(head, smtputf8=smtputf8)),
            b"\r\n\r\n",
            f"--{boundary}\r\n".encode(),
            b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(note),
            f"\r\n--{boundary}\r\n".encode(),
            attached,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    if settings.dkim_key:
        data = dkim_sign(settings, data, [b"from", b"to", b"subject", *DKIM_HEADERS, b"from"])
    envelope = Envelope(settings.mail_from_address, recipient, smtputf8)
    return Outgoing(envelope, data, message_id)


def serialise(msg: EmailMessage, *, smtputf8: bool = False) -> bytes:
    """The exact bytes of a message built with the email package (CRLF line ends)."""
    buffer = BytesIO()
    BytesGenerator(buffer, policy=_WIRE_UTF8 if smtputf8 else _WIRE).flatten(msg)
    return buffer.getvalue()
