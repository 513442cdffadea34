"""Admin pages and API for subscribers: the list, one subscriber's record, actions on one,
a selection or a pasted list, the suppression list and the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from flask import (
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext, lazy_pgettext, ngettext
from pydantic import BaseModel

from service.admin import audit as audit_log
from service.admin.audit import Actor
from service.admin.visibility import EventSeen, event_seen_by, subscriber_seen_by
from service.extensions import db
from service.models import DeliveryStatus, Status, Subscriber
from service.subscribers import search
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.bulk import (
    MAX_BULK,
    Action,
    BulkError,
    Outcome,
    act,
    act_on_addresses,
    act_on_ids,
    addresses_in,
)
from service.subscribers.csv_cells import csv_chunks
from service.subscribers.suppressions import (
    suppression_reason,
    suppression_reasons,
    suppressions_page,
)
from service.web.admin.base import (
    ADMIN_ROLES,
    API_ROLES,
    LABELS,
    actor,
    api_bp,
    bp,
    current,
    json_error,
    label,
    page,
    requires_admin,
    safe_target,
)
from service.web.api import shapes
from service.web.api.openapi import Reply, error, operation
from service.web.api.shapes import Shape
from service.web.common import client_ip, csv_download, now, settings
from service.web.payloads import PayloadError, parse

LABELS.update(
    {
        "status": {
            "pending": lazy_gettext("pending"),
            "active": lazy_gettext("active"),
            "unsubscribed": lazy_gettext("unsubscribed"),
            "bounced": lazy_gettext("bounced"),
            "complained": lazy_gettext("complained"),
        },
        "sort": {
            "newest": lazy_gettext("Newest"),
            "oldest": lazy_gettext("Oldest"),
            "email": lazy_gettext("Address (A→Z)"),
            "-email": lazy_gettext("Address (Z→A)"),
        },
        "action": {
            "unsubscribe": lazy_pgettext("admin action", "Unsubscribe"),
            "resubscribe": lazy_gettext("Resubscribe (new confirmation)"),
            "bounce": lazy_gettext("Mark bounced"),
            "erase": lazy_gettext("Erase (GDPR)"),
        },
        "outcome": {
            "done": lazy_gettext("done"),
            "already": lazy_gettext("already"),
            "unknown": lazy_gettext("unknown"),
            "invalid": lazy_gettext("invalid"),
            "refused": lazy_gettext("refused"),
        },
    }
)


def counts_summary(counts: Mapping[str, int]) -> str:
    """How many addresses got each outcome: "3 faits, 1 déjà fait, 0 inconnu…"."""
    parts = [
        ngettext("%(num)s done", "%(num)s done", counts.get("done", 0)),
        ngettext("%(num)s already", "%(num)s already", counts.get("already", 0)),
        ngettext("%(num)s unknown", "%(num)s unknown", counts.get("unknown", 0)),
        ngettext("%(num)s invalid", "%(num)s invalid", counts.get("invalid", 0)),
        ngettext("%(num)s refused", "%(num)s refused", counts.get("refused", 0)),
    ]
    return ", ".join(parts) + "."


PAGE_SIZE = 50
AUDIT_PAGE = 100


def _too_many(count: int) -> str:
    return ngettext(
        "The list holds %(num)s address: at most 10,000 at a time.",
        "The list holds %(num)s addresses: at most 10,000 at a time.",
        count,
    )


def _by() -> Actor:
    return Actor(actor(), client_ip())


def _action(value: str | None) -> Action:
    try:
        return Action(value or "")
    except ValueError:
        abort(400)


# ---------------------------------------------------------------- pages


@bp.get("/subscribers")
def subscribers() -> tuple[str, int]:
    """The list: search, filters, sort, keyset pages, counts per status."""
    try:
        filters = search.parse_filters(request.args)
        result = search.list_page(filters, cursor=request.args.get("cursor"), limit=PAGE_SIZE)
    except search.SearchError as exc:
        flash(
            _(
                "The “%(field)s” filter is not valid: the list is shown unfiltered.",
                field=exc.field,
            ),
            "error",
        )
        filters, result = search.Filters(), search.list_page(search.Filters(), limit=PAGE_SIZE)
    args = {k: v for k, v in request.args.items(multi=True) if k not in ("cursor", "lang")}
    return page(
        "subscribers.html",
        filters=filters,
        result=result,
        counts=search.status_counts(),
        args=args,
        statuses=[s for s in search.Status],
        sorts=search.SORTS,
        actions=list(Action),
    )


@bp.get("/subscribers/<int:subscriber_id>")
def subscriber(subscriber_id: int) -> tuple[str, int]:
    """One subscriber's record: consent, history, deliveries, bounces, actions."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None:
        abort(404)
    return page(
        "subscriber.html",
        sub=sub,
        seen=subscriber_seen_by(current().role, sub, search.history(subscriber_id)),
        deliveries=search.recent_deliveries(subscriber_id),
        bounces=search.bounces(subscriber_id),
        actions=list(Action),
    )


@bp.post("/subscribers/<int:subscriber_id>/<name>")
@requires_admin
def subscriber_action(subscriber_id: int, name: str) -> Response:
    action = _action(name)
    reason = request.form.get("reason", "").strip()[:200]
    here = url_for("admin.subscriber", subscriber_id=subscriber_id)
    if action == Action.ERASE and request.form.get("confirm") != "yes":
        flash(_("Tick the box to confirm the erasure."), "error")
        return cast(Response, redirect(here))
    outcome = act(settings(), action, subscriber_id, by=_by(), now=now(), reason=reason)
    if outcome == Outcome.UNKNOWN:
        abort(404)
    if action == Action.ERASE:
        flash(
            _(
                "Subscriber #%(id)s erased; the suppression list keeps blocking the address.",
                id=subscriber_id,
            ),
            "info",
        )
        return cast(Response, redirect(url_for("admin.subscribers")))
    flash(
        _(
            "%(action)s: %(outcome)s.",
            action=label("action", action.value),
            outcome=label("outcome", outcome.value),
        ),
        "info",
    )
    return cast(Response, redirect(here))


@bp.post("/subscribers/selection")
@requires_admin
def subscribers_selection() -> Response:
    """One action on the subscribers ticked on the list page."""
    action = _action(request.form.get("action"))
    ids = [i for v in request.form.getlist("id") if (i := search.bounded_int(v)) is not None]
    target = safe_target(
        request.form.get("back"), url_for("admin.subscribers"), inside="/admin/subscribers"
    )
    if not ids:
        flash(_("No subscriber selected."), "error")
        return cast(Response, redirect(target))
    reason = request.form.get("reason", "").strip()[:200]
    try:
        counts = act_on_ids(settings(), action, ids, by=_by(), now=now(), reason=reason)
    except BulkError as exc:
        flash(_too_many(exc.count), "error")
        return cast(Response, redirect(target))
    summary = {o.value: counts.get(o.value, 0) for o in Outcome}
    flash(f"{label('action', action.value)} — {counts_summary(summary)}", "info")
    return cast(Response, redirect(target))


@bp.route("/subscribers/bulk", methods=["GET", "POST"])
@requires_admin
def subscribers_bulk() -> tuple[str, int]:
    """Paste or upload a list of addresses; a report line per address."""
    if request.method == "GET":
        return page("bulk.html", actions=list(Action), report=None)
    action = _action(request.form.get("action"))
    text = request.form.get("addresses", "")
    upload = request.files.get("file")
    if upload and upload.filename:
        try:
            text = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            flash(_("The file is not UTF-8 text."), "error")
            return page("bulk.html", 400, actions=list(Action), report=None)
    try:
        addresses = addresses_in(text)
    except BulkError as exc:
        flash(_too_many(exc.count), "error")
        return page("bulk.html", 400, actions=list(Action), report=None)
    if not addresses:
        flash(_("The list holds no address."), "error")
        return page("bulk.html", 400, actions=list(Action), report=None)
    reason = request.form.get("reason", "").strip()[:200]
    report = act_on_addresses(
        settings(), action, addresses, by=_by(), now=now(), reason=reason, locale=current().locale
    )
    flash(f"{label('action', action.value)} — {counts_summary(report.counts)}", "info")
    return page(
        "bulk.html",
        actions=list(Action),
        report=report,
        done_action=action,
        counts_summary=counts_summary,
    )


@bp.get("/suppressions")
@requires_admin
def suppressions() -> tuple[str, int]:
    """The suppression list: hashes and reasons only; an address can be checked against it."""
    checked: str | None = None
    address = request.args.get("address", "").strip()
    if address:
        try:
            email = normalise_email(address)
        except InvalidEmail as exc:
            flash(exc.message(current().locale), "error")
        else:
            reason = suppression_reason(settings(), email)
            checked = (
                _("This address is on the suppression list (reason: %(reason)s).", reason=reason)
                if reason
                else _("This address is not on the suppression list.")
            )
    rows, more = suppressions_page(search.bounded_int(request.args.get("before")), PAGE_SIZE)
    return page(
        "suppressions.html", rows=rows, more=more, reasons=suppression_reasons(), checked=checked
    )


def _audit_filters(args: Any) -> tuple[audit_log.AuditFilters, dict[str, str]]:
    """Filters from query parameters, and those parameters again for the page's links.
    SearchError for a NUL character; an id that is not one is ignored."""
    search.refuse_nul(args, ("action", "actor"))
    kept = {k: v for k, v in args.items() if k in ("action", "actor", "subscriber_id") and v}
    filters = audit_log.AuditFilters(
        action=kept.get("action", ""),
        actor=kept.get("actor", ""),
        subscriber_id=search.bounded_int(kept.get("subscriber_id")),
    )
    return filters, kept


@bp.get("/audit")
@requires_admin
def audit() -> tuple[str, int]:
    """Every admin, subscriber and system action, newest first."""
    try:
        filters, args = _audit_filters(request.args)
    except search.SearchError as exc:
        flash(
            _(
                "The “%(field)s” filter is not valid: the list is shown unfiltered.",
                field=exc.field,
            ),
            "error",
        )
        filters, args = audit_log.AuditFilters(), {}
    before = search.bounded_int(request.args.get("before"))
    events, more = audit_log.page(filters, before, AUDIT_PAGE)
    return page("audit.html", events=events, more=more, args=args)


@bp.get("/audit.csv")
@requires_admin
def audit_csv() -> Response | tuple[str, int]:
    """The whole log (or a filtered part), streamed a page at a time."""
    try:
        filters, _args = _audit_filters(request.args)
    except search.SearchError as exc:
        return page(
            "message.html",
            422,
            title=_("The “%(field)s” filter is not valid.", field=exc.field),
            body="",
        )
    chunks = csv_chunks(audit_log.COLUMNS, audit_log.rows(filters))
    return csv_download(chunks, f"hebdo-audit-{now():%Y%m%d-%H%M}.csv")


# ---------------------------------------------------------------- API


def _subscriber(sub: Subscriber) -> shapes.Subscriber:
    return shapes.Subscriber(
        id=sub.id,
        email=sub.email,
        status=Status(sub.status),
        locale=sub.locale,
        created_at=sub.created_at,
        confirmed_at=sub.confirmed_at,
        source=sub.consent_source,
    )


def _event(e: EventSeen, traces: bool) -> shapes.AuditEvent:
    event = shapes.AuditEvent(
        id=e.id,
        created_at=e.created_at,
        actor=e.actor,
        action=e.action,
        subject=e.subject,
        subscriber_id=e.subscriber_id,
        before_status=e.before_status,
        after_status=e.after_status,
        detail=e.detail,
    )
    if traces:
        # Left unset otherwise, so an editor's answer has no `ip` key at all.
        event.ip = e.ip
    return event


def _record(sub: Subscriber) -> shapes.SubscriberRecord:
    # What an editor sees is decided once, for this answer and the HTML page alike.
    seen = subscriber_seen_by(current().role, sub, search.history(sub.id))
    consent = shapes.Consent(
        at=seen.consent.at, source=seen.consent.source, text_version=seen.consent.text_version
    )
    if seen.traces:
        consent.ip, consent.user_agent = seen.consent.ip, seen.consent.user_agent
    return shapes.SubscriberRecord(
        **_subscriber(sub).model_dump(),
        unsubscribed_at=sub.unsubscribed_at,
        unsubscribe_channel=sub.unsubscribe_channel,
        consent=consent,
        history=[_event(e, seen.traces) for e in seen.history],
        deliveries=[
            shapes.DeliveryLine(
                week=d.week,
                status=DeliveryStatus(d.status),
                attempts=d.attempts,
                sent_at=d.sent_at,
                error=d.error,
            )
            for d in search.recent_deliveries(sub.id)
        ],
    )


def _answer(shape: BaseModel) -> Response:
    """A shape as JSON; fields left unset (an editor's view of consent, counts after the
    first page) are left out, not written as null."""
    return jsonify(shape.model_dump(mode="json", exclude_unset=True))


@api_bp.get("/subscribers")
@operation(
    summary="A keyset page of subscribers, filtered",
    query=shapes.SubscriberQuery,
    roles=API_ROLES,
    replies={
        200: Reply("A page; `counts` per status on the first page", shapes.SubscriberPage),
        422: error("Bad filter or cursor"),
    },
)
def api_subscribers() -> Response | tuple[Response, int]:
    """A keyset page of a filtered view; `next_cursor` fetches the next one."""
    try:
        filters = search.parse_filters(request.args, exact_lengths=True)
        limit = search.bounded_int(request.args.get("limit", str(search.DEFAULT_LIMIT)), default=0)
        result = search.list_page(filters, cursor=request.args.get("cursor"), limit=limit or 0)
    except search.SearchError as exc:
        return json_error(422, "invalid_parameter", str(exc))
    answer = shapes.SubscriberPage(
        items=[_subscriber(s) for s in result.items], next_cursor=result.next_cursor
    )
    if "cursor" not in request.args:
        # The first page carries the counts per status; later pages (or `cursor=`) skip them.
        answer.counts = {Status(k): v for k, v in search.status_counts().items()}
    return _answer(answer)


def _api_subscriber(subscriber_id: int) -> Subscriber:
    # Beyond the id column's range there is nobody: asking the database would be an
    # "integer out of range" error on PostgreSQL (an OverflowError on SQLite), not a 404.
    sub = db.session.get(Subscriber, subscriber_id) if subscriber_id <= search.MAX_ID else None
    if sub is None:
        abort(404, f"no subscriber #{subscriber_id}")
    return sub


@api_bp.get("/subscribers/<int:subscriber_id>")
@operation(
    summary="One subscriber with consent record, history and recent deliveries",
    roles=API_ROLES,
    replies={
        200: Reply("The subscriber", shapes.SubscriberRecord),
        404: error("No such subscriber"),
    },
)
def api_subscriber(subscriber_id: int) -> Response:
    return _answer(_record(_api_subscriber(subscriber_id)))


# PATCH {"status": ...}: the statuses an admin may ask for, and the action that gets there.
PATCH_ACTIONS = {
    "unsubscribed": Action.UNSUBSCRIBE,
    "pending": Action.RESUBSCRIBE,
    "bounced": Action.BOUNCE,
}


ShapeT = TypeVar("ShapeT", bound=Shape)


def _json_body(model: type[ShapeT]) -> ShapeT:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise PayloadError(400, "malformed_json", "send a JSON object")
    return parse(model, body)


@api_bp.patch("/subscribers/<int:subscriber_id>")
@operation(
    summary="Unsubscribe, resubscribe (pending, a new confirmation) or mark bounced",
    body=shapes.SubscriberPatch,
    roles=ADMIN_ROLES,
    replies={
        200: Reply("Done, or already so", shapes.PatchResult),
        400: error("Malformed JSON"),
        404: error("No such subscriber"),
        409: error("That status cannot be reached from the current one"),
        422: error("Invalid field"),
    },
)
@requires_admin
def api_subscriber_patch(subscriber_id: int) -> Response | tuple[Response, int]:
    """Change a status: `unsubscribed`, `pending` (resubscribe: a new confirmation mail;
    never straight to `active`) or `bounced`; with an optional `reason`."""
    try:
        change = _json_body(shapes.SubscriberPatch)
    except PayloadError as exc:
        return json_error(exc.status, exc.code, exc.detail)
    _api_subscriber(subscriber_id)
    outcome = act(
        settings(),
        PATCH_ACTIONS[change.status],
        subscriber_id,
        by=_by(),
        now=now(),
        reason=change.reason,
    )
    sub = _api_subscriber(subscriber_id)
    if outcome == Outcome.REFUSED or (outcome == Outcome.ALREADY and sub.status != change.status):
        return json_error(
            409, "conflict", f"a {sub.status} subscriber cannot become {change.status}"
        )
    return _answer(
        shapes.PatchResult.model_validate({"result": outcome, "subscriber": _subscriber(sub)})
    )


@api_bp.delete("/subscribers/<int:subscriber_id>")
@operation(
    summary="Erase (GDPR): personal data removed, the address stays suppressed",
    roles=ADMIN_ROLES,
    replies={204: Reply("Erased"), 404: error("No such subscriber")},
)
@requires_admin
def api_subscriber_delete(subscriber_id: int) -> tuple[str, int]:
    """Erase (GDPR): see subscribers.bulk.erase."""
    _api_subscriber(subscriber_id)
    act(settings(), Action.ERASE, subscriber_id, by=_by(), now=now())
    return "", 204


@api_bp.post("/unsubscribes")
@operation(
    summary=f"Unsubscribe a list of addresses (at most {MAX_BULK:,})",
    body=shapes.Unsubscribes,
    roles=ADMIN_ROLES,
    replies={
        200: Reply("A result per address, in order", shapes.BulkReport),
        400: error("Malformed JSON"),
        413: error("Body larger than HEBDO_ADMIN_MAX_REQUEST_BYTES"),
        422: error("Invalid field or too many addresses"),
    },
)
@requires_admin
def api_unsubscribes() -> Response | tuple[Response, int]:
    """Bulk unsubscribe: `{"emails": [...], "reason"?: "..."}` → a result per address."""
    try:
        asked = _json_body(shapes.Unsubscribes)
        report = act_on_addresses(
            settings(),
            Action.UNSUBSCRIBE,
            list(enumerate(asked.emails, 1)),
            by=_by(),
            now=now(),
            reason=asked.reason,
        )
    except PayloadError as exc:
        return json_error(exc.status, exc.code, exc.detail)
    except BulkError as exc:
        return json_error(422, "too_many", str(exc))
    return _answer(
        shapes.BulkReport(
            results=[
                shapes.BulkResult(email=line.given, result=line.outcome, reason=line.reason or None)
                for line in report.lines
            ],
            counts={Outcome(k): v for k, v in report.counts.items()},
        )
    )


@api_bp.get("/audit")
@operation(
    summary="Audit events, newest first",
    query=shapes.AuditQuery,
    roles=ADMIN_ROLES,
    replies={
        200: Reply("A page of events", shapes.AuditPage),
        422: error("A NUL character in `action` or `actor`"),
    },
)
@requires_admin
def api_audit() -> Response | tuple[Response, int]:
    """Audit events, newest first; `next_before` fetches the next page."""
    limit = search.bounded_int(request.args.get("limit"), default=100, maximum=1000) or 100
    try:
        filters, _args = _audit_filters(request.args)
    except search.SearchError as exc:
        return json_error(422, "invalid_parameter", str(exc))
    before = search.bounded_int(request.args.get("before"))
    events, more = audit_log.page(filters, before, limit)
    role = current().role
    items = [_event(event_seen_by(role, e), traces=True) for e in events]
    return _answer(shapes.AuditPage(items=items, next_before=more))
