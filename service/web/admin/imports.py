"""Admin CSV import (upload → dry-run report → apply) and CSV export of a subscriber view,
in the browser and over the admin API. Thin views over `subscribers.csv_io`.

The uploaded file waits in `import_files` between its dry run and its import (the browser
cannot be trusted to send the same bytes twice); it is deleted when imported, and files
left more than a day are deleted whenever the list is shown or a file is added, and by
the hourly housekeeping task (service/ops/housekeeping.py).

Languages: the browser pages speak the signed-in admin's language; the admin API speaks
English, or French for a request whose Accept-Language asks for it (as `api.json_error`
reads Accept-Language).
"""

from __future__ import annotations

from typing import Any, cast

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext, ngettext
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from service import i18n
from service.extensions import db
from service.models import ImportFile
from service.subscribers.csv_io import (
    MAX_ROWS,
    NEW,
    OUTCOMES,
    BadImportFile,
    ExportProgress,
    Plan,
    PlannedLine,
    UploadGone,
    apply_import,
    apply_upload,
    audit_export,
    decode,
    export_csv,
    number,
    plan_import,
    purge_import_files,
    report_csv,
    store_upload,
)
from service.subscribers.search import FilterQuery, Filters, SearchError, parse_filters
from service.web.admin.base import (
    ADMIN_ROLES,
    LABELS,
    actor,
    api_bp,
    bp,
    json_error,
    page,
    requires_admin,
)
from service.web.api import shapes
from service.web.api.openapi import Reply, error, operation
from service.web.common import client_ip, csv_download, now, settings

PAGE_LINES = 500  # non-new lines shown on the report page
API_LINES = 1000  # non-new lines returned by the API
FILENAME_MAX = 255

LABELS["import"] = {
    "new_active": lazy_gettext("New active"),
    "new_pending": lazy_gettext("New pending (confirmation email)"),
    "exists": lazy_gettext("Already subscribed"),
    "suppressed": lazy_gettext("On the suppression list"),
    "invalid": lazy_gettext("Invalid"),
    "duplicate": lazy_gettext("Duplicates in the file"),
}


def import_summary(counts: dict[str, int]) -> str:
    """What an import did, outcome by outcome: "1 actif, 2 en attente, …"."""
    parts = [
        ngettext("%(num)s active", "%(num)s active", counts["new_active"]),
        ngettext("%(num)s pending", "%(num)s pending", counts["new_pending"]),
        ngettext("%(num)s already subscribed", "%(num)s already subscribed", counts["exists"]),
        ngettext(
            "%(num)s on the suppression list",
            "%(num)s on the suppression list",
            counts["suppressed"],
        ),
        ngettext("%(num)s invalid", "%(num)s invalid", counts["invalid"]),
        ngettext("%(num)s duplicate", "%(num)s duplicates", counts["duplicate"]),
    ]
    return _("Import done: %(counts)s.", counts=", ".join(parts))


def _locale() -> str:
    """The browser's language: the signed-in admin's."""
    return cast(str, g.get("admin_locale", "fr"))


def _api_locale() -> str:
    """The admin API's language: English, unless Accept-Language asks for French."""
    return i18n.pick_locale(accept=[*(lang for lang, _q in request.accept_languages), "en"])


def _clean_filename(name: str | None) -> str:
    """A file name fit for a column and a consent source: its last path part, printable."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:FILENAME_MAX] or "upload.csv"


def _size_kb() -> str:
    return number(settings().admin_max_request_bytes // 1024, _locale())


def _limits() -> dict[str, str]:
    return {"rows": number(MAX_ROWS, _locale()), "size": _size_kb()}


# ---------------------------------------------------------------- browser


def _form(status: int = 200, error: str | None = None) -> tuple[str, int]:
    purge_import_files(now())
    db.session.commit()
    files = db.session.execute(
        select(ImportFile.id, ImportFile.filename, ImportFile.created_by, ImportFile.created_at)
        .order_by(ImportFile.created_at.desc())
        .limit(50)
    ).all()
    return page("imports.html", status, files=files, error=error, limits=_limits())


def _report(stored: ImportFile, plan: Plan) -> tuple[str, int]:
    shown: list[PlannedLine] = []
    for planned in plan.not_new():
        if len(shown) == PAGE_LINES:
            break
        shown.append(planned)
    hidden = plan.counts["total"] - plan.counts["new_active"] - plan.counts["new_pending"]
    return page(
        "import_report.html",
        stored=stored,
        plan=plan,
        outcomes=OUTCOMES,
        lines=shown,
        capped=hidden > len(shown),
        page_lines=PAGE_LINES,
        new=sum(plan.counts[o] for o in NEW),
    )


def _plan(stored: ImportFile) -> Plan:
    return plan_import(
        stored.content,
        filename=stored.filename,
        settings=settings(),
        now=now(),
        locale=_locale(),
    )


@bp.get("/imports")
@requires_admin
def imports() -> tuple[str, int]:
    """The upload form and the files waiting for their import."""
    return _form()


@bp.post("/imports")
@requires_admin
def imports_upload() -> tuple[str, int]:
    """Keep the upload and show its dry run; nothing is imported yet."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _form(400, _("Choose a CSV file."))
    filename = _clean_filename(upload.filename)
    try:
        stored, plan = store_upload(
            upload.read(),
            filename=filename,
            settings=settings(),
            now=now(),
            actor=actor(),
            locale=_locale(),
        )
    except BadImportFile as exc:
        return _form(422, exc.message(_locale()))
    return _report(stored, plan)


def _stored(file_id: int) -> ImportFile:
    stored = db.session.get(ImportFile, file_id)
    if stored is None:
        abort(404)
    return stored


@bp.get("/imports/<int:file_id>")
@requires_admin
def import_report(file_id: int) -> tuple[str, int] | Response:
    """The dry run of a waiting file, against the database as it is now."""
    stored = db.session.get(ImportFile, file_id)
    if stored is None:
        flash(_("This file is no longer waiting (already imported or expired)."), "error")
        return cast(Response, redirect(url_for("admin.imports")))
    return _report(stored, _plan(stored))


@bp.get("/imports/<int:file_id>/report.csv")
@requires_admin
def import_report_csv(file_id: int) -> Response:
    """Every line's dry-run outcome, as CSV."""
    stored = _stored(file_id)
    plan = _plan(stored)
    stem = stored.filename.rsplit(".", 1)[0] or "import"
    return csv_download(report_csv(plan), f"{stem}-report.csv")


@bp.post("/imports/<int:file_id>/apply")
@requires_admin
def import_apply(file_id: int) -> Response:
    """Import a waiting file, then forget it; a failed import keeps it for another try."""
    try:
        plan = apply_upload(
            file_id, settings=settings(), now=now(), actor=actor(), locale=_locale()
        )
    except UploadGone:
        flash(_("This file is no longer waiting (already imported or expired)."), "error")
    except BadImportFile as exc:
        flash(exc.message(_locale()), "error")
    except Exception:
        current_app.logger.exception("import of file %s failed", file_id)
        flash(
            _(
                "The import failed; the file is kept and you can try again. Addresses "
                "already written will be reported as already subscribed."
            ),
            "error",
        )
    else:
        flash(import_summary(plan.counts), "info")
    return cast(Response, redirect(url_for("admin.imports")))


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> tuple[str, int]:
    # Raised while the CSRF check reads the form, before any view runs.
    return page(
        "message.html",
        413,
        title=_("File too large: at most %(size)s KB per upload.", size=_size_kb()),
        body="",
    )


# ---------------------------------------------------------------- API


def _dry_run(value: str | None) -> bool | None:
    if value is None or value.lower() in ("1", "true", "yes", ""):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    return None


def _api_upload() -> tuple[bytes, str] | tuple[Response, int]:
    """The CSV bytes and a file name, from a text/csv body or a multipart `file`."""
    try:
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("file")
            if upload is None:
                return json_error(422, "no_file", "send the CSV as the multipart field `file`")
            return upload.read(), _clean_filename(upload.filename or request.args.get("filename"))
        if request.mimetype not in ("text/csv", "text/plain", "application/csv"):
            return json_error(
                415, "unsupported_media_type", "send text/csv, or multipart/form-data with `file`"
            )
        return request.get_data(), _clean_filename(request.args.get("filename") or "api.csv")
    except RequestEntityTooLarge:
        limit = settings().admin_max_request_bytes
        return json_error(413, "too_large", f"the request is larger than {limit} bytes")


@api_bp.post("/imports")
@operation(
    summary="Import a CSV (email, locale, source, consent_date, consent_text)",
    description="A dry run unless `dry_run=0`.",
    query=shapes.ImportQuery,
    raw_body={
        # text/plain and application/csv are taken as text/csv.
        "text/csv": {
            "schema": {"type": "string"},
            "example": "email,locale,consent_date,consent_text\r\n"
            "lectrice@exemple.fr,fr,2026-11-02,form-2026-11\r\n",
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        },
    },
    roles=ADMIN_ROLES,
    replies={
        200: Reply("The per-line report", shapes.ImportReport),
        413: error("Body larger than HEBDO_ADMIN_MAX_REQUEST_BYTES"),
        415: error("Not CSV"),
        422: error("Unreadable file"),
    },
)
@requires_admin
def api_import() -> tuple[Response, int]:
    """Dry run (the default, `?dry_run=1`) or apply (`?dry_run=0`) a CSV import."""
    dry_run = _dry_run(request.args.get("dry_run"))
    if dry_run is None:
        return json_error(422, "bad_dry_run", "dry_run is 1 (the default) or 0")
    received = _api_upload()
    if isinstance(received[0], Response):
        return cast(tuple[Response, int], received)
    data, filename = cast(tuple[bytes, str], received)
    locale = _api_locale()
    try:
        content = decode(data)
        if dry_run:
            plan = plan_import(
                content, filename=filename, settings=settings(), now=now(), locale=locale
            )
        else:
            plan = apply_import(
                content,
                filename=filename,
                settings=settings(),
                now=now(),
                actor=actor(),
                locale=locale,
            )
    except BadImportFile as exc:
        db.session.rollback()
        return json_error(422, exc.code, exc.message(locale))
    lines: list[shapes.ImportLine] = []
    truncated = False
    for planned in plan.not_new():
        if len(lines) == API_LINES:
            truncated = True
            break
        lines.append(
            shapes.ImportLine(
                line=planned.line,
                email=planned.email,
                outcome=planned.outcome,
                code=planned.code,
                reason=planned.reason,
            )
        )
    report = shapes.ImportReport(
        dry_run=dry_run,
        filename=filename,
        counts=plan.counts,
        ignored_columns=list(plan.ignored_columns),
        lines=lines,
        truncated=truncated,
    )
    return jsonify(report.model_dump(mode="json")), 200


# ---------------------------------------------------------------- export


def _export(filters: Filters, *, bom: bool) -> Response:
    progress = ExportProgress()
    who, ip, started = actor(), client_ip(), now()

    def chunks() -> Any:
        try:
            yield from export_csv(filters, progress=progress, bom=bom)
        finally:
            # When the stream ends, or the client goes away: only then is the count known.
            audit_export(filters, progress, actor=who, now=started, ip=ip)

    return csv_download(chunks(), f"hebdo-subscribers-{started:%Y-%m-%d}.csv")


@bp.get("/subscribers.csv")
@requires_admin
def subscribers_csv() -> Response | tuple[str, int]:
    """The list's current view as CSV (same filters), streamed."""
    try:
        return _export(parse_filters(request.args), bom=True)
    except SearchError as exc:
        return page(
            "message.html",
            422,
            title=_("The “%(field)s” filter is not valid.", field=exc.field),
            body="",
        )


@api_bp.get("/subscribers.csv")
@operation(
    summary="Export a filtered view as CSV (streamed)",
    query=FilterQuery,
    roles=ADMIN_ROLES,
    replies={
        200: Reply("CSV", content={"text/csv": {"schema": {"type": "string"}}}),
        422: error("Bad filter"),
    },
)
@requires_admin
def api_subscribers_csv() -> Response | tuple[Response, int]:
    """A view of the subscribers as CSV (the list API's filters), streamed."""
    try:
        return _export(parse_filters(request.args, exact_lengths=True), bom=False)
    except SearchError as exc:
        return json_error(422, "bad_filter", str(exc))
