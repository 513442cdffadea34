"""What can go wrong delivering a message, as the sender must act on it: a transient
failure (try again later, at the time the server asked for) or a permanent one (this address
will never take it). Servers' replies are kept with any address in them masked.
"""

from __future__ import annotations

import re

_ENHANCED = re.compile(r"\s*5\.(\d{1,3})\.(\d{1,3})\b")
_POLICY_WORDS = re.compile(
    r"\b(?:relay\w*|policy|spam\w*|block\w*|blacklist\w*|reputation|authenticat\w*"
    r"|unauthenticated|rate.limit\w*|throttl\w*|sender)\b",
    re.IGNORECASE,
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


def _retry_after(response: str) -> int | None:
    match = _RETRY_AFTER.search(response)
    return int(match.group(1)) if match else None


def classify(code: int | None, response: str, stage: str = "") -> DeliveryError:
    """Map an SMTP reply to a transient or permanent failure."""
    if code is not None and 500 <= code < 600:
        return PermanentFailure(code, response, stage)
    return TransientFailure(code, response, _retry_after(response), stage)
