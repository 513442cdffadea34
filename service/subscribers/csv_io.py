"""Subscribers in and out as CSV: the import (dry run, then apply) and the streamed export.

An import is planned first, line by line, against the database as it is now: every line
gets one outcome (`OUTCOMES`). The dry run stops there and writes nothing; applying plans
again (the database may have changed since the dry run) and writes the new subscribers in
batches, each committed with its audit rows, so a 100,000-line file never holds one huge
transaction and a crash leaves a prefix that a second run reports as `exists`.

Consent: a line asserts earlier consent with `consent_date` *and* `consent_text`; only then
is the address imported `active`. Otherwise it becomes `pending` and is owed one
confirmation mail (the usual sweep sends it). Half an assertion (a date without the text or
the reverse) is refused as `invalid` rather than guessed at.

The export is a generator of CSV text over `subscribers.search.iterate` (keyset pages), so
memory stays flat whatever the size of the view.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask_babel import force_locale, lazy_gettext
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from service import i18n
from service.admin.audit import audit
from service.config import Settings
from service.extensions import db, rowcount
from service.models import (
    CONSENT_VERSION_MAX,
    SOURCE_MAX,
    AuditEvent,
    ImportFile,
    Status,
    Subscriber,
    Suppression,
    search_key,
)
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.csv_cells import csv_chunks, undefuse
from service.subscribers.search import Filters, iterate
from service.subscribers.suppressions import suppression_hashes

MAX_ROWS = 100_000
BATCH = 1_000
LOOKUP_CHUNK = 500

NEW_ACTIVE = "new_active"
NEW_PENDING = "new_pending"
EXISTS = "exists"
SUPPRESSED = "suppressed"
INVALID = "invalid"
DUPLICATE = "duplicate"
OUTCOMES = (NEW_ACTIVE, NEW_PENDING, EXISTS, SUPPRESSED, INVALID, DUPLICATE)
NEW = (NEW_ACTIVE, NEW_PENDING)

IMPORT_COLUMNS = ("email", "locale", "source", "consent_date", "consent_text")
# The export's names for the same facts, so an export can be imported back as it is.
ALIASES = {
    "consent_at": "consent_date",
    "consent_source": "source",
    "consent_text_version": "consent_text",
}
# Export columns an import reads past (status is read, see _status_refusal).
IGNORED_COLUMNS = (
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
    "categories",
    "paused_until",
)
EXPORT_COLUMNS = (
    "email",
    "status",
    "locale",
    "created_at",
    "confirmed_at",
    "consent_at",
    "consent_source",
    "consent_text_version",
    "unsubscribed_at",
    # The reader's own choices (/preferences): topics joined by "; " (empty: every one),
    # and the day a pause ends.
    "categories",
    "paused_until",
)

# Why a line is not imported, for the report (`PlannedLine.reason`), by `PlannedLine.code`.
LINE_REASONS = {
    DUPLICATE: lazy_gettext("Address already earlier in the file (line %(line)s)."),
    EXISTS: lazy_gettext("Already a subscriber: left unchanged."),
    SUPPRESSED: lazy_gettext("On the suppression list: line not imported."),
    "fields": lazy_gettext("The line has more fields than the header."),
    "locale": lazy_gettext("Unknown language “%(value)s” (expected: %(locales)s)."),
    "source": lazy_gettext("Source too long (more than %(max)s characters)."),
    "consent_date": lazy_gettext(
        "consent_date is not a valid ISO date (YYYY-MM-DD or YYYY-MM-DDThh:mm:ss)."
    ),
    "consent_future": lazy_gettext("consent_date is in the future."),
    "consent_half": lazy_gettext("consent_date and consent_text go together: one is missing."),
    "status": lazy_gettext("Status “%(value)s”: only active or pending lines are imported."),
}

# Why a whole file is refused, by `BadImportFile.code`.
FILE_REASONS = {
    "encoding": lazy_gettext("The file is not UTF-8 (invalid byte near position %(position)s)."),
    "empty": lazy_gettext("The file is empty."),
    "header": lazy_gettext("The header must name an “email” column."),
    "unknown_columns": lazy_gettext("Unknown columns: %(columns)s. Accepted columns: %(known)s."),
    "twice": lazy_gettext("Column given twice: %(columns)s."),
    "too_many_rows": lazy_gettext("More than %(max)s lines: split the file."),
    "csv": lazy_gettext("Unreadable CSV at line %(line)s: %(detail)s."),
}


# An uploaded file waits this long for its import, then goes (it holds addresses).
KEEP_FILES = timedelta(hours=24)


def purge_import_files(now: datetime) -> int:
    """Delete uploads older than KEEP_FILES that were never imported (the caller commits)."""
    return rowcount(
        db.session.execute(delete(ImportFile).where(ImportFile.created_at < now - KEEP_FILES))
    )


class BadImportFile(ValueError):
    """The whole file is refused (encoding, header, size); `message(locale)` says why."""

    def __init__(self, code: str, **params: object) -> None:
        super().__init__(code)
        self.code = code
        self.params = params

    def message(self, locale: str) -> str:
        params = {
            name: number(value, locale) if isinstance(value, int) else value
            for name, value in self.params.items()
        }
        with force_locale(locale):
            return str(FILE_REASONS[self.code]) % params


def number(value: int, locale: str) -> str:
    """A count as the language writes it: 100,000 in English, 100 000 in French (a narrow
    no-break space: "100,000" reads as a hundred in French)."""
    grouped = f"{value:,}"
    return grouped if locale == "en" else grouped.replace(",", "\u202f")


def _reason(code: str, **params: object) -> str:
    """Why a line is not imported, in the current locale (the import forces its own)."""
    return str(LINE_REASONS[code]) % params


# ---------------------------------------------------------------- reading the file


def decode(data: bytes) -> str:
    """UTF-8 text, with or without a BOM; anything else is refused rather than guessed."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadImportFile("encoding", position=exc.start) from None


@dataclass(frozen=True)
class RawLine:
    line: int
    values: dict[str, str]
    extra_fields: bool


@dataclass(frozen=True)
class Header:
    columns: tuple[str, ...]
    ignored: tuple[str, ...]


# Blank lines (nothing but spaces) before the header, with their line ends.
LEADING_BLANK_LINES = re.compile(r"(?:[^\S\r\n]*(?:\r\n|\r|\n))*")
LINE_END = re.compile(r"\r\n|\r|\n")


def _read(content: str) -> tuple[Header, Iterator[RawLine]]:
    """The header (checked) and an iterator over the data lines, blank ones skipped.

    Blank lines before the header are skipped too; line numbers stay those of the file.
    """
    content = content.removeprefix("\ufeff")
    blank = LEADING_BLANK_LINES.match(content)
    skipped = len(LINE_END.findall(blank.group())) if blank else 0
    content = content[blank.end() :] if blank else content
    first = content.split("\n", 1)[0]
    if not first.strip():
        raise BadImportFile("empty")
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
    try:
        names = [name.strip().lower() for name in next(reader)]
    except (StopIteration, csv.Error) as exc:
        raise BadImportFile("csv", line=skipped + 1, detail=str(exc) or "empty") from None
    names = [ALIASES.get(name, name) for name in names]
    known = (*IMPORT_COLUMNS, "status", *IGNORED_COLUMNS)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise BadImportFile(
            "unknown_columns",
            columns=", ".join(repr(n) for n in unknown),
            known=", ".join(IMPORT_COLUMNS),
        )
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BadImportFile("twice", columns=", ".join(twice))
    if "email" not in names:
        raise BadImportFile("header")
    header = Header(tuple(names), tuple(n for n in names if n in IGNORED_COLUMNS))

    def lines() -> Iterator[RawLine]:
        count = 0
        try:
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                count += 1
                if count > MAX_ROWS:
                    raise BadImportFile("too_many_rows", max=MAX_ROWS)
                values = {
                    name: undefuse(cell.strip()) for name, cell in zip(names, cells, strict=False)
                }
                yield RawLine(skipped + reader.line_num, values, len(cells) > len(names))
        except csv.Error as exc:
            raise BadImportFile("csv", line=skipped + reader.line_num, detail=str(exc)) from None

    return header, lines()


# ---------------------------------------------------------------- planning


@dataclass(slots=True)
class PlannedLine:
    line: int
    email: str
    outcome: str
    code: str = ""
    reason: str = ""
    locale: str = i18n.DEFAULT_LOCALE
    source: str | None = None
    consent_at: datetime | None = None
    consent_text: str = ""


@dataclass
class Plan:
    filename: str
    lines: list[PlannedLine]
    ignored_columns: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    def count(self) -> None:
        self.counts = {outcome: 0 for outcome in OUTCOMES}
        for planned in self.lines:
            self.counts[planned.outcome] += 1
        self.counts["total"] = len(self.lines)

    def not_new(self) -> Iterator[PlannedLine]:
        return (planned for planned in self.lines if planned.outcome not in NEW)


def consent_version(text: str) -> str:
    """What `consent_text_version` keeps of a consent text.

    Up to 64 characters (a version label, the usual case) it is kept as it is. A longer
    text is not cut: a prefix could pass for another text, so it is stored as
    `sha256:` + the first 57 hex digits of its SHA-256, and the full text goes into the
    import's summary audit event, where the hash finds it.
    """
    if len(text) <= CONSENT_VERSION_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"sha256:{digest[: CONSENT_VERSION_MAX - 7]}"


def _consent_date(value: str, now: datetime) -> datetime:
    """An ISO date (midnight UTC) or datetime (UTC when it names no zone).

    ValueError if it is none; OverflowError if it is one that UTC cannot hold (year 1 at
    00:00+05:00 is still year 0 in UTC, year 9999 at 23:00-05:00 already year 10000).
    """
    if len(value) == 10:
        moment = datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
    else:
        moment = datetime.fromisoformat(value.replace(" ", "T", 1))
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment


def _locale(value: str) -> str | None:
    if not value:
        return i18n.DEFAULT_LOCALE
    base = value.replace("_", "-").split("-")[0].lower()
    return base if base in i18n.LOCALES else None


def _plan_line(raw: RawLine, *, filename: str, now: datetime, seen: dict[str, int]) -> PlannedLine:
    values = raw.values
    address = values.get("email", "")
    try:
        email = normalise_email(address)
    except InvalidEmail as exc:
        return PlannedLine(raw.line, address, INVALID, exc.code, exc.message())
    if email in seen:
        reason = _reason(DUPLICATE, line=seen[email])
        return PlannedLine(raw.line, email, DUPLICATE, DUPLICATE, reason)
    seen[email] = raw.line

    def invalid(code: str, **params: object) -> PlannedLine:
        return PlannedLine(raw.line, email, INVALID, code, _reason(code, **params))

    if raw.extra_fields:
        return invalid("fields")
    sub_locale = _locale(values.get("locale", ""))
    if sub_locale is None:
        return invalid("locale", value=values["locale"], locales=", ".join(i18n.LOCALES))
    source = values.get("source", "") or f"import:{filename}"
    if len(source) > SOURCE_MAX:
        return invalid("source", max=SOURCE_MAX)
    status = values.get("status", "")
    if status and status not in (Status.ACTIVE, Status.PENDING):
        return invalid("status", value=status)
    raw_date, consent_text = values.get("consent_date", ""), values.get("consent_text", "")
    consent_at = None
    if raw_date:
        try:
            consent_at = _consent_date(raw_date, now)
        except (ValueError, OverflowError):
            return invalid("consent_date")
        if consent_at > now:
            return invalid("consent_future")
    if bool(raw_date) != bool(consent_text):
        return invalid("consent_half")
    # An exported `pending` line carries its sign-up's consent but was never confirmed.
    outcome = NEW_ACTIVE if consent_at and status != Status.PENDING else NEW_PENDING
    return PlannedLine(
        raw.line,
        email,
        outcome,
        locale=sub_locale,
        source=source,
        consent_at=consent_at if outcome == NEW_ACTIVE else None,
        consent_text=consent_text if outcome == NEW_ACTIVE else "",
    )


def _suppressed(settings: Settings, emails: list[str]) -> set[str]:
    """Which of these addresses the suppression list holds (one query per 500 addresses)."""
    found: set[str] = set()
    for start in range(0, len(emails), LOOKUP_CHUNK):
        by_hash = {
            digest: email
            for email in emails[start : start + LOOKUP_CHUNK]
            for digest in suppression_hashes(settings, email)
        }
        rows = db.session.execute(
            select(Suppression.email_hash).where(Suppression.email_hash.in_(list(by_hash)))
        ).scalars()
        found.update(by_hash[digest] for digest in rows)
    return found


def _existing(emails: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(emails), LOOKUP_CHUNK):
        chunk = emails[start : start + LOOKUP_CHUNK]
        rows = db.session.execute(select(Subscriber.email).where(Subscriber.email.in_(chunk)))
        found.update(rows.scalars())
    return found


def plan_import(
    content: str, *, filename: str, settings: Settings, now: datetime, locale: str = "fr"
) -> Plan:
    """Each line's outcome against the database as it is now. Reads only: the dry run.

    Raises BadImportFile when the file as a whole cannot be used.
    """
    header, raw_lines = _read(content)
    # Read every line before validating any: a file over the limit is refused at once.
    raws = list(raw_lines)
    seen: dict[str, int] = {}
    # The report's reasons in the reader's language, whatever the request speaks.
    with force_locale(locale):
        lines = [_plan_line(raw, filename=filename, now=now, seen=seen) for raw in raws]
        del raws
        candidates = [planned.email for planned in lines if planned.outcome in NEW]
        suppressed = _suppressed(settings, candidates)
        existing = _existing([email for email in candidates if email not in suppressed])
        for planned in lines:
            if planned.outcome not in NEW:
                continue
            if planned.email in suppressed:
                planned.outcome, planned.code = SUPPRESSED, SUPPRESSED
                planned.reason = _reason(SUPPRESSED)
            elif planned.email in existing:
                planned.outcome, planned.code = EXISTS, EXISTS
                planned.reason = _reason(EXISTS)
    plan = Plan(filename, lines, header.ignored)
    plan.count()
    return plan


# ---------------------------------------------------------------- applying


def _row(planned: PlannedLine, now: datetime) -> dict[str, Any]:
    active = planned.outcome == NEW_ACTIVE
    return {
        "email": planned.email,
        # Given, not left to the column's default: a per-row Python default makes the bulk
        # INSERT fall back to one statement per row.
        "search_key": search_key(planned.email),
        "status": Status.ACTIVE if active else Status.PENDING,
        "locale": planned.locale,
        "created_at": now,
        "optin_serial": 1,
        "consent_at": planned.consent_at if active else now,
        "consent_source": planned.source,
        "consent_text_version": consent_version(planned.consent_text) if active else "import",
        # A new pending address owes its one confirmation mail now; the sweep sends it.
        "confirm_due_at": None if active else now,
        "confirm_attempts": 0,
    }


def _write_batch(batch: list[PlannedLine], *, actor: str, filename: str, now: datetime) -> None:
    """Insert one batch of new subscribers and one audit row each, in one transaction.

    Core bulk INSERTs (batched VALUES lists with RETURNING): an ORM object per row, or the
    ORM's bulk path with its per-row default, costs several times as much. Raises
    IntegrityError when another writer created one of the addresses since the plan was made.
    An empty batch (every line of it taken by another writer meanwhile) writes nothing:
    executing an INSERT with an empty list would run it once with no values at all.
    """
    if not batch:
        return
    table = Subscriber.__table__
    result = db.session.execute(
        insert(table).returning(table.c.id, table.c.email, table.c.status),
        [_row(planned, now) for planned in batch],
    )
    ids = {email: (sub_id, status) for sub_id, email, status in result}
    audit_rows = [
        {
            "created_at": now,
            "actor": actor,
            "action": "import",
            "subscriber_id": ids[planned.email][0],
            "after_status": ids[planned.email][1],
            # The file and line, never the address: the audit log outlives an erasure.
            "detail": {"file": filename, "line": planned.line},
        }
        for planned in batch
    ]
    db.session.execute(insert(AuditEvent.__table__), audit_rows)


def apply_import(
    content: str,
    *,
    filename: str,
    settings: Settings,
    now: datetime,
    actor: str,
    locale: str = "fr",
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> Plan:
    """Plan the file again and write it: new subscribers in committed batches, each with its
    audit row, then one summary audit event. Returns the plan as applied."""
    plan = plan_import(content, filename=filename, settings=settings, now=now, locale=locale)
    new = [planned for planned in plan.lines if planned.outcome in NEW]
    db.session.rollback()  # the plan's reads: no transaction left open across the batches
    for start in range(0, len(new), batch_size):
        batch = new[start : start + batch_size]
        for _attempt in range(3):
            try:
                _write_batch(batch, actor=actor, filename=filename, now=now)
                db.session.commit()
                break
            except IntegrityError:
                # Someone subscribed one of these addresses since the plan: they exist now.
                db.session.rollback()
                taken = _existing([planned.email for planned in batch])
                with force_locale(locale):
                    reason = _reason(EXISTS)
                for planned in batch:
                    if planned.email in taken:
                        planned.outcome, planned.code = EXISTS, EXISTS
                        planned.reason = reason
                batch = [planned for planned in batch if planned.outcome in NEW]
        else:
            raise RuntimeError("could not write an import batch after concurrent inserts")
        if progress:
            progress(min(start + batch_size, len(new)))
    plan.count()
    long_texts = {
        consent_version(planned.consent_text): planned.consent_text
        for planned in new
        if planned.outcome == NEW_ACTIVE and len(planned.consent_text) > CONSENT_VERSION_MAX
    }
    summary: dict[str, Any] = {"file": filename, "counts": plan.counts}
    if long_texts:
        summary["consent_texts"] = long_texts
    db.session.add(
        AuditEvent(
            created_at=now,
            actor=actor,
            action="import",
            subject=f"file:{filename}"[:100],
            detail=summary,
        )
    )
    db.session.commit()
    return plan


class UploadGone(LookupError):
    """The waiting file is not there any more: imported (by another click or another
    admin), or purged after KEEP_FILES."""


def store_upload(
    data: bytes, *, filename: str, settings: Settings, now: datetime, actor: str, locale: str
) -> tuple[ImportFile, Plan]:
    """Keep an uploaded file for its import and return it with its dry run; nothing is
    imported yet. Raises BadImportFile (and keeps nothing) when the file cannot be used."""
    try:
        content = decode(data)
        stored = ImportFile(created_at=now, created_by=actor, filename=filename, content=content)
        plan = plan_import(content, filename=filename, settings=settings, now=now, locale=locale)
    except BadImportFile:
        db.session.rollback()
        raise
    purge_import_files(now)
    db.session.add(stored)
    db.session.commit()
    return stored, plan


def apply_upload(
    file_id: int, *, settings: Settings, now: datetime, actor: str, locale: str = "fr"
) -> Plan:
    """Import a waiting file, then forget it; a failed import keeps it for another try.

    Deleting the file first claims it: a second click (or a second admin) finds nothing to
    import (UploadGone) instead of importing it twice. If the import fails, the file is put
    back as it was (same id, so its dry-run page still works): the rows already written
    stay, and the next try reports them as `exists`. The failure is raised again."""
    stored = db.session.get(ImportFile, file_id)
    if stored is None:
        raise UploadGone(file_id)
    created_at, created_by = stored.created_at, stored.created_by
    content, filename = stored.content, stored.filename
    claimed = rowcount(db.session.execute(delete(ImportFile).where(ImportFile.id == file_id)))
    db.session.commit()
    if not claimed:
        raise UploadGone(file_id)
    try:
        return apply_import(
            content, filename=filename, settings=settings, now=now, actor=actor, locale=locale
        )
    except Exception:
        db.session.rollback()
        db.session.add(
            ImportFile(
                id=file_id,
                created_at=created_at,
                created_by=created_by,
                filename=filename,
                content=content,
            )
        )
        db.session.commit()
        raise


def report_csv(plan: Plan) -> Iterator[str]:
    """Every line's outcome as CSV (line, email, outcome, code, reason), formula-safe."""
    rows = (
        (planned.line, planned.email, planned.outcome, planned.code, planned.reason)
        for planned in plan.lines
    )
    return csv_chunks(("line", "email", "outcome", "code", "reason"), rows)


# ---------------------------------------------------------------- export


@dataclass
class ExportProgress:
    rows: int = 0
    complete: bool = False


def _export_value(sub: Subscriber, column: str) -> object:
    value = getattr(sub, column)
    if column == "categories":
        return "; ".join(value or [])
    return value


def export_csv(
    filters: Filters, *, progress: ExportProgress, bom: bool = False, chunk_rows: int = 500
) -> Iterator[str]:
    """The view's subscribers as CSV text, a few hundred rows per chunk; `progress` counts
    the rows as they go (the caller audits the count once the stream has ended)."""

    def rows() -> Iterator[list[object]]:
        for sub in iterate(filters):
            progress.rows += 1
            yield [_export_value(sub, column) for column in EXPORT_COLUMNS]
        progress.complete = True

    return csv_chunks(EXPORT_COLUMNS, rows(), bom=bom, every=chunk_rows)


def audit_export(
    filters: Filters, progress: ExportProgress, *, actor: str, now: datetime, ip: str | None
) -> None:
    """One audit event per export: who, which view, how many rows (and whether it finished).

    The search text and the source prefix are recorded as used or not, never as typed: a
    search text is a piece of an address, a source may name a person (`admin:<name>`), and
    the audit log outlives an erasure.
    """
    view = {
        "q": bool(filters.q),
        "source": bool(filters.source),
        "status": list(filters.statuses),
        "locale": filters.locale,
        "since": filters.since.isoformat() if filters.since else None,
        "until": filters.until.isoformat() if filters.until else None,
        "sort": filters.sort,
    }
    detail = {"filters": view, "rows": progress.rows, "complete": progress.complete}
    audit("export", actor=actor, now=now, ip=ip, detail=detail)
    db.session.commit()
