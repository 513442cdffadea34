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
    actor,
    add_texts,
    api_bp,
    bp,
    json_error,
    page,
    requires_admin,
    t,
)
from service.web.api import shapes
from service.web.api.openapi import Reply, error, operation
from service.web.common import client_ip, csv_download, now, settings

PAGE_LINES = 500  # non-new lines shown on the report page
API_LINES = 1000  # non-new lines returned by the API
FILENAME_MAX = 255

add_texts(
    {
        "fr": {
            "imports.title": "Importer des abonnés",
            "imports.intro": "Un fichier CSV en UTF-8, avec une ligne d’en-tête. Colonnes : "
            "email (obligatoire), locale, source, consent_date, consent_text, dans "
            "n’importe quel ordre, séparées par « , » ou « ; ».",
            "imports.consent": "Une ligne avec consent_date (date ISO, pas dans le futur) et "
            "consent_text est importée active : c’est l’affirmation d’un consentement déjà "
            "donné. Sans eux, l’adresse est importée en attente et reçoit un e-mail de "
            "confirmation.",
            "imports.limits": "Au plus {rows} lignes et {size} Ko par fichier.",
            "imports.file": "Fichier CSV",
            "imports.upload": "Vérifier le fichier (simulation)",
            "imports.recent": "Fichiers en attente d’import",
            "imports.none": "Aucun fichier en attente.",
            "imports.filename": "Fichier",
            "imports.by": "Déposé par",
            "imports.at": "Déposé le",
            "imports.no_file": "Choisissez un fichier CSV.",
            "imports.too_large": "Fichier trop volumineux : au plus {size} Ko par envoi.",
            "imports.gone": "Ce fichier n’est plus en attente (déjà importé ou expiré).",
            "imports.report": "Simulation : {filename}",
            "imports.report_intro": "Rien n’a encore été écrit. Voici ce que l’import ferait.",
            "imports.total": "Lignes",
            "imports.outcome.new_active": "Nouveaux actifs",
            "imports.outcome.new_pending": "Nouveaux en attente (e-mail de confirmation)",
            "imports.outcome.exists": "Déjà abonnés",
            "imports.outcome.suppressed": "Sur la liste de suppression",
            "imports.outcome.invalid": "Invalides",
            "imports.outcome.duplicate": "Doublons dans le fichier",
            "imports.ignored": "Colonnes ignorées : {columns}.",
            "imports.lines": "Lignes non importées",
            "imports.lines_cap": "Les {n} premières lignes sont affichées ; le rapport complet "
            "est dans le CSV.",
            "imports.line": "Ligne",
            "imports.email": "Adresse",
            "imports.outcome": "Résultat",
            "imports.reason": "Motif",
            "imports.download": "Télécharger le rapport ligne par ligne (CSV)",
            "imports.apply": "Importer",
            "imports.apply_confirm": "Importer {n} nouvelle(s) adresse(s) ?",
            "imports.nothing": "Aucune nouvelle adresse à importer.",
            "imports.done": "Import terminé : {new_active} actif(s), {new_pending} en attente, "
            "{exists} déjà abonné(s), {suppressed} sur la liste de suppression, "
            "{invalid} invalide(s), {duplicate} doublon(s).",
            "imports.failed": "L’import a échoué ; le fichier est conservé, vous pouvez "
            "réessayer. Les adresses déjà écrites seront signalées comme déjà abonnées.",
            "imports.back": "Retour à l’import",
            "export.link": "Exporter cette vue (CSV)",
            "export.bad_filter": "Le filtre « {field} » n’est pas valide.",
        },
        "en": {
            "imports.title": "Import subscribers",
            "imports.intro": "A UTF-8 CSV file with a header line. Columns: email (required), "
            "locale, source, consent_date, consent_text, in any order, separated by “,” or "
            "“;”.",
            "imports.consent": "A line with consent_date (ISO date, not in the future) and "
            "consent_text is imported active: it asserts consent already given. Without them "
            "the address is imported pending and gets a confirmation email.",
            "imports.limits": "At most {rows} lines and {size} KB per file.",
            "imports.file": "CSV file",
            "imports.upload": "Check the file (dry run)",
            "imports.recent": "Files waiting to be imported",
            "imports.none": "No file waiting.",
            "imports.filename": "File",
            "imports.by": "Uploaded by",
            "imports.at": "Uploaded at",
            "imports.no_file": "Choose a CSV file.",
            "imports.too_large": "File too large: at most {size} KB per upload.",
            "imports.gone": "This file is no longer waiting (already imported or expired).",
            "imports.report": "Dry run: {filename}",
            "imports.report_intro": "Nothing has been written yet. This is what the import "
            "would do.",
            "imports.total": "Lines",
            "imports.outcome.new_active": "New active",
            "imports.outcome.new_pending": "New pending (confirmation email)",
            "imports.outcome.exists": "Already subscribed",
            "imports.outcome.suppressed": "On the suppression list",
            "imports.outcome.invalid": "Invalid",
            "imports.outcome.duplicate": "Duplicates in the file",
            "imports.ignored": "Ignored columns: {columns}.",
            "imports.lines": "Lines not imported",
            "imports.lines_cap": "The first {n} lines are shown; the full report is in the CSV.",
            "imports.line": "Line",
            "imports.email": "Address",
            "imports.outcome": "Outcome",
            "imports.reason": "Reason",
            "imports.download": "Download the line-by-line report (CSV)",
            "imports.apply": "Import",
            "imports.apply_confirm": "Import {n} new address(es)?",
            "imports.nothing": "No new address to import.",
            "imports.done": "Import done: {new_active} active, {new_pending} pending, "
            "{exists} already subscribed, {suppressed} on the suppression list, "
            "{invalid} invalid, {duplicate} duplicate(s).",
            "imports.failed": "The import failed; the file is kept and you can try again. "
            "Addresses already written will be reported as already subscribed.",
            "imports.back": "Back to import",
            "export.link": "Export this view (CSV)",
            "export.bad_filter": "The “{field}” filter is not valid.",
        },
    }
)


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
        return _form(400, t("imports.no_file"))
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
        flash(t("imports.gone"), "error")
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
        flash(t("imports.gone"), "error")
    except BadImportFile as exc:
        flash(exc.message(_locale()), "error")
    except Exception:
        current_app.logger.exception("import of file %s failed", file_id)
        flash(t("imports.failed"), "error")
    else:
        flash(t("imports.done", **plan.counts), "info")
    return cast(Response, redirect(url_for("admin.imports")))


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> tuple[str, int]:
    # Raised while the CSRF check reads the form, before any view runs.
    return page("message.html", 413, title=t("imports.too_large", size=_size_kb()), body="")


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
        return page("message.html", 422, title=t("export.bad_filter", field=exc.field), body="")


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
