"""The editor's note at the top of an issue: what an intro may hold, how it reads in
each part of the mail, and changing it (audited, like every issue action).

An intro is plain text: paragraphs separated by a blank line, and links written as a bare
`https://…` address or as `[words](https://…)`. Nothing else is markup: HTML is taken out
when it is saved and whatever is left is escaped when it is rendered, and only http(s)
addresses ever become links, so a `javascript:` "link" stays inert text. The same text
feeds the HTML part, the text part, the archive page and the inbox preheader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

from service.admin.audit import Actor, audit
from service.config import Settings
from service.digest import lifecycle
from service.digest.planning import Refused, require_issue
from service.extensions import db
from service.models import Issue, IssueStatus

# One declaration of the limit: the API shape, the admin form and the check below use it.
INTRO_MAX = 1000
# An intro may change until the issue starts going out.
EDITABLE = (IssueStatus.DRAFT, IssueStatus.SCHEDULED)

# A script or style element goes with its content; any other tag leaves its text.
_HIDDEN = re.compile(r"<(script|style)\b.*?(</\1\s*>|$)", re.I | re.S)
_TAG = re.compile(r"<[^>]*>")
# `[words](anything but http(s))`: the words alone (a `javascript:` target never survives).
_NOT_A_LINK = re.compile(r"\[([^\]\n]{1,200})\]\((?!https?://)(?:[^()\s]|\([^()\s]*\))*\)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# `[words](https://…)` or a bare `https://…`; a trailing full stop or comma is prose.
_LINK = re.compile(
    r"\[(?P<label>[^\]\n]{1,200})\]\((?P<target>https?://[^\s()<>]+)\)"
    r"|(?P<bare>https?://[^\s<>]+[^\s<>.,;:!?)»\"'])"
)
_SENTENCE = re.compile(r"(.+?[.!?…])(?:\s|$)", re.S)


class IntroTooLong(ValueError):
    """Longer than INTRO_MAX characters once cleaned."""

    def __init__(self, length: int) -> None:
        super().__init__(f"intro is {length} characters long; at most {INTRO_MAX}")
        self.length = length


def clean(text: str) -> str:
    """The intro as it is stored: tags and control characters out, line ends unified, at
    most one blank line between paragraphs. Raises IntroTooLong."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _NOT_A_LINK.sub(r"\1", _CONTROL.sub("", _TAG.sub("", _HIDDEN.sub("", text))))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    cleaned = "\n\n".join(p for p in paragraphs if p)
    if len(cleaned) > INTRO_MAX:
        raise IntroTooLong(len(cleaned))
    return cleaned


@dataclass(frozen=True)
class Piece:
    text: str
    url: str | None = None


def paragraphs(text: str) -> list[list[Piece]]:
    """The intro as paragraphs of text and links, for both parts of the mail."""
    result = []
    for paragraph in clean(text).split("\n\n") if text else []:
        pieces, at = [], 0
        for match in _LINK.finditer(paragraph):
            if match.start() > at:
                pieces.append(Piece(paragraph[at : match.start()]))
            url = match.group("target") or match.group("bare")
            pieces.append(Piece(match.group("label") or url, url))
            at = match.end()
        if at < len(paragraph):
            pieces.append(Piece(paragraph[at:]))
        result.append(pieces)
    return result


def as_html(text: str, link_style: str = "") -> list[Markup]:
    """One escaped HTML fragment per paragraph; links open the address as written."""
    style = Markup(' style="{}"').format(link_style) if link_style else Markup("")
    return [
        Markup("").join(
            Markup('<a href="{}"{}>{}</a>').format(p.url, style, p.text)
            if p.url
            else escape(p.text)
            for p in paragraph
        )
        for paragraph in paragraphs(text)
    ]


def as_text(text: str) -> list[str]:
    """One plain-text paragraph each; a named link reads `words (address)`."""
    return [
        "".join(f"{p.text} ({p.url})" if p.url and p.text != p.url else p.text for p in paragraph)
        for paragraph in paragraphs(text)
    ]


def opening(text: str, limit: int) -> str:
    """The first paragraph's first sentence, and the next ones while they fit in `limit`
    characters ("Bonjour !" alone says little), links as their words: the inbox preheader."""
    first = (paragraphs(text) or [[]])[0]
    plain = "".join(p.text for p in first)
    sentences = [m.group(1).strip() for m in _SENTENCE.finditer(plain)] or [plain.strip()]
    chosen = sentences[0]
    for sentence in sentences[1:]:
        if len(chosen) + 1 + len(sentence) > limit:
            break
        chosen = f"{chosen} {sentence}"
    return chosen


def effective(settings: Settings, issue: Issue, locale: str) -> str:
    """The issue's own note, else the locale's default from the settings (may be empty)."""
    if issue.intro:
        return issue.intro
    return settings.default_intro_en if locale == "en" else settings.default_intro_fr


@dataclass(frozen=True)
class IntroChange:
    issue: Issue
    # In review mode an approved issue whose note changed is a draft again.
    needs_approval: bool


def set_intro(
    settings: Settings, week: str, text: str | None, now: datetime, by: Actor
) -> IntroChange:
    """Write (or, empty, remove) the issue's note before it goes out; audited as
    `issue.intro`. In review mode an approval covers the note that was approved, so an
    approved issue goes back to draft. Raises NoIssue, Refused, IntroTooLong."""
    issue = require_issue(week)
    cleaned = clean(text or "") or None
    if issue.status not in EDITABLE or issue.started_at is not None:
        db.session.refresh(issue)
        raise Refused(
            f"{issue.week} is {issue.status}: cannot change its intro", issue.week, issue.status
        )
    unapproved = False
    if cleaned != issue.intro:
        issue.intro = cleaned
        if settings.review and issue.status == IssueStatus.SCHEDULED:
            unapproved = lifecycle.unapprove(issue.id)
        audit(
            "issue.intro",
            actor=by.name,
            now=now,
            subject=f"issue:{issue.week}",
            ip=by.ip,
            detail={"length": len(cleaned or ""), "needs_approval": unapproved},
        )
    db.session.commit()
    return IntroChange(require_issue(issue.week), unapproved)
