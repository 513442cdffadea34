"""Admin pages and API for subscribers: the list, one subscriber's record, actions on one,
a selection or a pasted list, the suppression list and the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

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

from service.admin import audit as audit_log
from service.extensions import db
from service.models import AdminRole, AuditEvent, Subscriber
from service.subscribers import search
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.bulk import (
    Action,
    Actor,
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
from service.web.common import client_ip, csv_download, now, settings

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
        history=search.history(subscriber_id),
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


def subscriber_json(sub: Subscriber, *, full: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": sub.id,
        "email": sub.email,
        "status": sub.status,
        "locale": sub.locale,
        "created_at": sub.created_at.isoformat(),
        "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else None,
        "source": sub.consent_source,
    }
    if full:
        data["unsubscribed_at"] = sub.unsubscribed_at.isoformat() if sub.unsubscribed_at else None
        data["unsubscribe_channel"] = sub.unsubscribe_channel
        data["consent"] = {
            "at": sub.consent_at.isoformat(),
            "source": sub.consent_source,
            "text_version": sub.consent_text_version,
        }
        if current().role == AdminRole.ADMIN:
            # IPs and browsers are the admin's to see (proof of consent), not an editor's.
            data["consent"].update(ip=sub.consent_ip, user_agent=sub.consent_user_agent)
        data["history"] = [event_json(e) for e in search.history(sub.id)]
        data["deliveries"] = [
            {
                "week": d.week,
                "status": d.status,
                "attempts": d.attempts,
                "sent_at": d.sent_at.isoformat() if d.sent_at else None,
                "error": d.error,
            }
            for d in search.recent_deliveries(sub.id)
        ]
    return data


def event_json(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "created_at": e.created_at.isoformat(),
        "actor": e.actor,
        "action": e.action,
        "subject": e.subject,
        "subscriber_id": e.subscriber_id,
        "before_status": e.before_status,
        "after_status": e.after_status,
        "ip": e.ip,
        "detail": e.detail,
    }


@api_bp.get("/subscribers")
def api_subscribers() -> Response | tuple[Response, int]:
    """A keyset page of a filtered view; `next_cursor` fetches the next one."""
    try:
        filters = search.parse_filters(request.args, exact_lengths=True)
        limit = search.bounded_int(request.args.get("limit", str(search.DEFAULT_LIMIT)), default=0)
        result = search.list_page(filters, cursor=request.args.get("cursor"), limit=limit or 0)
    except search.SearchError as exc:
        return json_error(422, "invalid_parameter", str(exc))
    body: dict[str, Any] = {
        "items": [subscriber_json(s) for s in result.items],
        "next_cursor": result.next_cursor,
    }
    if "cursor" not in request.args:
        # The first page carries the counts per status; later pages (or `cursor=`) skip them.
        body["counts"] = search.status_counts()
    return jsonify(body)


def _api_subscriber(subscriber_id: int) -> Subscriber:
    # Beyond the id column's range there is nobody: asking the database would be an
    # "integer out of range" error on PostgreSQL (an OverflowError on SQLite), not a 404.
    sub = db.session.get(Subscriber, subscriber_id) if subscriber_id <= search.MAX_ID else None
    if sub is None:
        abort(404, f"no subscriber #{subscriber_id}")
    return sub


@api_bp.get("/subscribers/<int:subscriber_id>")
def api_subscriber(subscriber_id: int) -> Response:
    return jsonify(subscriber_json(_api_subscriber(subscriber_id), full=True))


# PATCH {"status": ...}: the statuses an admin may ask for, and the action that gets there.
PATCH_ACTIONS = {
    "unsubscribed": Action.UNSUBSCRIBE,
    "pending": Action.RESUBSCRIBE,
    "bounced": Action.BOUNCE,
}


@api_bp.patch("/subscribers/<int:subscriber_id>")
@requires_admin
def api_subscriber_patch(subscriber_id: int) -> Response | tuple[Response, int]:
    """Change a status: `unsubscribed`, `pending` (resubscribe: a new confirmation mail;
    never straight to `active`) or `bounced`; with an optional `reason`."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return json_error(400, "malformed_json", "send a JSON object")
    unknown = sorted(set(body) - {"status", "reason"})
    if unknown:
        return json_error(422, "invalid_field", f"unknown field(s): {', '.join(unknown)}")
    status, reason = body.get("status"), body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 200:
        return json_error(422, "invalid_field", "reason must be a string of at most 200")
    if not isinstance(status, str) or status not in PATCH_ACTIONS:
        return json_error(422, "invalid_field", f"status must be one of {', '.join(PATCH_ACTIONS)}")
    _api_subscriber(subscriber_id)
    outcome = act(
        settings(), PATCH_ACTIONS[status], subscriber_id, by=_by(), now=now(), reason=reason
    )
    sub = _api_subscriber(subscriber_id)
    if outcome == Outcome.REFUSED or (outcome == Outcome.ALREADY and sub.status != status):
        return json_error(409, "conflict", f"a {sub.status} subscriber cannot become {status}")
    return jsonify({"result": outcome.value, "subscriber": subscriber_json(sub)})


@api_bp.delete("/subscribers/<int:subscriber_id>")
@requires_admin
def api_subscriber_delete(subscriber_id: int) -> tuple[str, int]:
    """Erase (GDPR): see subscribers.bulk.erase."""
    _api_subscriber(subscriber_id)
    act(settings(), Action.ERASE, subscriber_id, by=_by(), now=now())
    return "", 204


@api_bp.post("/unsubscribes")
@requires_admin
def api_unsubscribes() -> Response | tuple[Response, int]:
    """Bulk unsubscribe: `{"emails": [...], "reason"?: "..."}` → a result per address."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return json_error(400, "malformed_json", "send a JSON object")
    emails, reason = body.get("emails"), body.get("reason", "")
    unknown = sorted(set(body) - {"emails", "reason"})
    if unknown:
        return json_error(422, "invalid_field", f"unknown field(s): {', '.join(unknown)}")
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        return json_error(422, "invalid_field", "emails must be a list of strings")
    if not isinstance(reason, str) or len(reason) > 200:
        return json_error(422, "invalid_field", "reason must be a string of at most 200")
    try:
        report = act_on_addresses(
            settings(),
            Action.UNSUBSCRIBE,
            list(enumerate(emails, 1)),
            by=_by(),
            now=now(),
            reason=reason,
        )
    except BulkError as exc:
        return json_error(422, "too_many", str(exc))
    return jsonify(
        {
            "results": [
                {"email": line.given, "result": line.outcome.value, "reason": line.reason or None}
                for line in report.lines
            ],
            "counts": report.counts,
        }
    )


@api_bp.get("/audit")
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
    return jsonify({"items": [event_json(e) for e in events], "next_before": more})
