"""/dev/mailbox: the mail captured in local mode, for a developer's browser.

Registered only when no SMTP relay is configured and not in production, and served only
while the web server listens on a loopback address: it has no login and shows every
reader's address and confirmation link, so on 0.0.0.0 (a container, a shared machine)
it answers 403 with the reason instead, and logs a warning once. The mailbox goes off
rather than the start failing: the rest of a development run (sign-up, admin) works the
same on any address, and the mails are still saved as .eml files.
Captured HTML is shown in a sandboxed iframe (no scripts, no same-origin).
In French, or English as the other public pages (?lang=en, Accept-Language).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from flask import Blueprint, Response, abort, render_template, request
from flask_babel import gettext as _

from service.web.common import page_locale, settings

bp = Blueprint("devmail", __name__, url_prefix="/dev/mailbox")
log = logging.getLogger(__name__)
_warned: set[str] = set()


def loopback(address: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    if address == "localhost" or address.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


@bp.before_request
def _on_loopback_only() -> tuple[str, int] | None:
    # SERVER_NAME is the address the server listens on (gunicorn and Werkzeug both set it
    # from the listening socket), not the client's Host header.
    address = request.environ.get("SERVER_NAME", "")
    if loopback(address):
        return None
    if address not in _warned:
        _warned.add(address)
        log.warning(
            "/dev/mailbox is off: hebdo listens on %s, not a loopback address, and the "
            "mailbox has no login; listen on 127.0.0.1 to use it",
            address,
        )
    page = render_template(
        "pages/message.html",
        locale=page_locale(),
        title=_("The development mailbox is off"),
        body=_(
            "It is served only while hebdo listens on a loopback address (127.0.0.1): it "
            "has no login and shows every reader's address and confirmation link. The "
            "mails are still saved as .eml files in the data folder."
        ),
    )
    return page, 403


_NAME = re.compile(r"\d{8}T\d{12}-[0-9a-f]{8}\.eml")
MAX_LISTED = 200


def _folder() -> Path:
    return settings().mail_capture_dir


def _load(name: str) -> tuple[bytes, EmailMessage]:
    if not _NAME.fullmatch(name):
        abort(404)
    path = _folder() / name
    if not path.is_file():
        abort(404)
    raw = path.read_bytes()
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return raw, message


def _part(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return ""
    content = part.get_content()
    return content if isinstance(content, str) else ""


@bp.get("/")
def index() -> str:
    """The newest captured mails first."""
    folder = _folder()
    names = sorted((p.name for p in folder.glob("*.eml") if _NAME.fullmatch(p.name)), reverse=True)
    mails = []
    for name in names[:MAX_LISTED]:
        _raw, message = _load(name)
        mails.append(
            {
                "name": name,
                "to": message["To"],
                "subject": message["Subject"],
                "date": message["Date"],
            }
        )
    return render_template("dev/mailbox.html", mails=mails, total=len(names), locale=page_locale())


@bp.get("/<name>")
def show(name: str) -> str:
    """One mail: headers, text part, HTML part (sandboxed)."""
    raw, message = _load(name)
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return render_template(
        "dev/mail.html",
        name=name,
        head=head,
        text=_part(message, "plain"),
        html=_part(message, "html"),
        subject=message["Subject"],
        locale=page_locale(),
    )


@bp.get("/<name>/raw")
def raw(name: str) -> Response:
    """The .eml as captured, byte for byte."""
    data, _message = _load(name)
    return Response(
        data,
        mimetype="message/rfc822",
        headers={"Content-Disposition": f"attachment; filename={name}"},
    )
