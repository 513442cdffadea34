"""The admin page of everything that came back: each mail or provider event, its verdict,
the rule and evidence behind it, the raw message while it is kept, and the undo of a
bounce. Admins only: raw mails hold readers' addresses."""

from __future__ import annotations

from typing import cast

from flask import Response, flash, redirect, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from werkzeug.exceptions import NotFound

from service.admin.audit import Actor
from service.extensions import db
from service.inbound.bounces import Undo, undo_bounce
from service.inbound.receive import RAW_KEEP_DAYS, InboundFilters, inbound_page, readable
from service.models import InboundMessage, InboundVerdict
from service.subscribers import search
from service.web.admin.base import LABELS, actor, bp, page, requires_admin
from service.web.common import client_ip, now, settings

PAGE_SIZE = 50
KINDS = ("bounce", "complaint", "unsubscribe", "auto_reply", "reply", "notice")

LABELS["verdict"] = {
    "bounced": lazy_gettext("bounced"),
    "soft_bounce": lazy_gettext("soft bounce"),
    "complained": lazy_gettext("complained"),
    "unsubscribed": lazy_gettext("unsubscribed"),
    "duplicate": lazy_gettext("nothing new"),
    "auto_reply": lazy_gettext("automatic reply"),
    "forwarded": lazy_gettext("forwarded"),
    "kept": lazy_gettext("kept for a person"),
    "unattributed": lazy_gettext("unattributed"),
    "undone": lazy_gettext("undone"),
}
LABELS["inbound"] = {
    "bounce": lazy_gettext("bounce"),
    "complaint": lazy_gettext("complaint"),
    "unsubscribe": lazy_gettext("unsubscription by mail"),
    "auto_reply": lazy_gettext("automatic reply"),
    "reply": lazy_gettext("reply"),
    "notice": lazy_gettext("delivery notice"),
}
LABELS["event"]["bounce.undo"] = lazy_gettext("bounce undone")


@bp.get("/inbound")
@requires_admin
def inbound() -> tuple[str, int]:
    """What came back, newest first, filtered by verdict or kind."""
    verdict = request.args.get("verdict", "")
    kind = request.args.get("kind", "")
    filters = InboundFilters(
        verdict=verdict if verdict in set(InboundVerdict) else "",
        kind=kind if kind in KINDS else "",
        subscriber_id=search.bounded_int(request.args.get("subscriber_id")),
    )
    args = {
        k: v
        for k, v in (
            ("verdict", filters.verdict),
            ("kind", filters.kind),
            ("subscriber_id", filters.subscriber_id),
        )
        if v
    }
    rows, more = inbound_page(filters, search.bounded_int(request.args.get("before")), PAGE_SIZE)
    return page(
        "inbound.html",
        rows=rows,
        more=more,
        args=args,
        verdicts=list(InboundVerdict),
        kinds=KINDS,
    )


@bp.get("/inbound/<int:inbound_id>")
@requires_admin
def inbound_message(inbound_id: int) -> tuple[str, int]:
    """One mail or event: verdict, rule, evidence, the raw message while kept."""
    row = db.session.get(InboundMessage, inbound_id)
    if row is None:
        raise NotFound()
    return page("inbound_message.html", row=row, raw=readable(row), keep_days=RAW_KEEP_DAYS)


@bp.post("/inbound/<int:inbound_id>/undo")
@requires_admin
def inbound_undo(inbound_id: int) -> Response:
    """Take a bounce back: the reader is mailed again."""
    result = undo_bounce(settings(), inbound_id, by=Actor(actor(), client_ip()), now=now())
    if result == Undo.UNKNOWN:
        raise NotFound()
    messages = {
        Undo.DONE: (_("Bounce undone: the reader gets the next issue."), "info"),
        Undo.ALREADY: (_("This bounce was already undone."), "info"),
        Undo.REFUSED: (
            _("Nothing to undo: this is no bounce, or the reader's status changed since."),
            "error",
        ),
    }
    text, category = messages[result]
    flash(text, category)
    return cast(Response, redirect(url_for("admin.inbound_message", inbound_id=inbound_id)))
