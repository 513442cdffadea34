"""Local mail capture: with no SMTP relay configured, every message is written as an
`.eml` file in the data folder, where `/dev/mailbox` shows it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from service.mail.message import Envelope, Outgoing


class CaptureTransport:
    """Writes each message as `<data_dir>/mail/<time>-<random>.eml`, byte for byte."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> CaptureTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send(
        self,
        mail: Outgoing,
        *,
        following: Envelope | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> str:
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}.eml"
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(mail.data)
        # Atomic rename: the mailbox view never shows a half-written file.
        os.replace(temporary, self.folder / name)
        if meanwhile is not None:
            meanwhile()
        return f"250 captured as {name}"
