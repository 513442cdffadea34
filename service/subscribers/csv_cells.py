"""CSV as hebdo writes it (subscriber exports, import reports, the audit log): cells a
spreadsheet shows as text, never runs as a formula, streamed a few hundred rows at a time."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Where a spreadsheet may see a cell of its own start inside one of ours: French Excel
# splits on `;` (quotes or not, when it opens a file it takes for another format), others
# on `,` or a tab, and a line break starts a row. A formula character there, after spaces
# or not, is defused as at the start: `x;=cmd|' /C calc'!A0` is written `'x;'=cmd|…`.
_INSIDE = re.compile(r"([;,\t\r\n][ ]*)(?=[=+\-@\t\r])")
_DEFUSED_INSIDE = re.compile(r"([;,\t\r\n][ ]*)'(?=[=+\-@\t\r])")


def defuse(cell: str) -> str:
    """A cell a spreadsheet will show as text, never run as a formula, wherever it splits
    it: a `'` before a formula character at the start, and after every separator."""
    cell = _INSIDE.sub(r"\1'", cell)
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell


def undefuse(cell: str) -> str:
    """Undo `defuse`: `'=x` back to `=x`, `a;'=x` to `a;=x`, so an export imports as it was."""
    if len(cell) > 1 and cell[0] == "'" and cell[1] in FORMULA_STARTS:
        cell = cell[1:]
    return _DEFUSED_INSIDE.sub(r"\1", cell)


def cell(value: object) -> str:
    """None empty, times in UTC ISO 8601, the rest as text, defused."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()
    return defuse(str(value))


def csv_chunks(
    header: Iterable[str], rows: Iterable[Iterable[object]], *, bom: bool = False, every: int = 500
) -> Iterator[str]:
    """The header and the rows as CSV text, one chunk per `every` rows: memory stays flat
    however many rows come."""
    buffer = io.StringIO()
    if bom:
        # Spreadsheets read the accents right only when the file says it is UTF-8.
        buffer.write("\ufeff")
    # Every field quoted: a cell holding a separator stays one cell in any spreadsheet
    # that honours quotes, whichever separator it splits on.
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)
    writer.writerow(list(header))
    for n, row in enumerate(rows, 1):
        writer.writerow([cell(value) for value in row])
        if n % every == 0:
            yield _drain(buffer)
    yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
