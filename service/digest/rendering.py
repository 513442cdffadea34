"""How an issue reads: rendered once per issue and locale (HTML with inlined CSS, and
plain text); per-subscriber pieces are markers that `mail_for` fills in (see
mail.message.MailTemplate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

import css_inline
from flask import render_template
from flask_babel import force_locale, ngettext
from flask_babel import gettext as _
from markupsafe import escape

from service import i18n
from service.config import Settings
from service.digest import intro
from service.digest.clicks import link_for
from service.digest.planning import issue_articles, week_start
from service.inbound.verp import bounce_address, unsubscribe_address
from service.mail import brand
from service.mail.message import (
    DIGEST,
    TEST,
    Envelope,
    MailTemplate,
    Markers,
    Outgoing,
    wire_address,
)
from service.models import Issue
from service.subscribers.tokens import preferences_token_for, public_url, unsubscribe_token_for

_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def week_label(week: str, locale: str) -> str:
    """How readers name an issue, "Semaine du 23 novembre 2026": ISO weeks are ours."""
    with force_locale(locale):
        return _("Week of %(date)s", date=i18n.format_date(locale, week_start(week)))


# Subjects longer than this are cut in most inbox lists (and on phones well before).
SUBJECT_MAX = 70
# What inbox lists show of the preview text; padding keeps the body out of the rest.
PREHEADER_MAX = 110
_BLANKS = re.compile(r"[ \t\r\n]+")
_PREHEADER_PAD = "\u200c\u00a0" * 90


def shorten(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut on a word and ended with "…"."""
    # Runs of blanks become one space; no-break spaces stay (French punctuation).
    text = _BLANKS.sub(" ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 1)]
    # Cut inside a word: drop that word (unless it is the only one).
    if text[len(cut)] != " " and " " in cut.strip():
        cut = cut[: cut.rstrip().rfind(" ")]
    return cut.rstrip(" ,;:.-–—") + "…"


def digest_subject(
    settings: Settings, lead: str | None, others: int, week: str, locale: str
) -> str:
    """The subject from HEBDO_SUBJECT_TEMPLATE (or the locale's default), at most
    SUBJECT_MAX characters: the lead title gives way, never the count. The sender's
    name is already in the From line, so the default does not repeat it."""
    label = week_label(week, locale)
    if not lead:
        return shorten(f"{settings.site_name}: {label}", SUBJECT_MAX)
    with force_locale(locale):
        if settings.subject_template:
            template = settings.subject_template
        elif others:
            template = ngettext(
                "“{lead}” and %(num)s other article", "“{lead}” and %(num)s other articles", others
            )
        else:
            template = "{lead}"

    def fill(title: str) -> str:
        filled = template.format(lead=title, others=others, site=settings.site_name, week=label)
        return _BLANKS.sub(" ", filled).strip()

    room = SUBJECT_MAX - len(fill(""))
    return shorten(fill(shorten(lead, max(room, 8))), SUBJECT_MAX)


def preheader(intro_text: str, titles: list[str]) -> str:
    """What the inbox shows after the subject: the issue's own note's first sentences, else
    the top headlines (a default note is the same every week: it would say nothing)."""
    if intro_text:
        return shorten(intro.opening(intro_text, PREHEADER_MAX), PREHEADER_MAX)
    return shorten(" · ".join(titles[:3]), PREHEADER_MAX)


def render_issue(
    settings: Settings,
    issue: Issue,
    locale: str,
    *,
    markers: Markers | None = None,
    categories: frozenset[str] | None = None,
) -> Rendered:
    """The issue in one locale: with `markers`, the mail (per-subscriber pieces left as
    markers); without, the web version, which holds no personal data. The texts are in
    `locale`, whatever the request or command that renders it speaks.

    The first article is the lead (the editor chooses it by putting it first): a larger
    block with its picture; the others follow, compact, grouped by category."""
    articles = issue_articles(issue.id)
    if categories is not None:
        articles = [a for a in articles if a.category in categories]
    lead, rest = (articles[0], articles[1:]) if articles else (None, [])
    note = intro.effective(settings, issue, locale)
    with force_locale(locale):
        groups = [
            (category or _("Other stories"), list(items))
            for category, items in groupby(rest, key=lambda a: a.category)
        ]
        context = {
            "locale": locale,
            "week_label": week_label(issue.week, locale),
            "lead": lead,
            "groups": groups,
            "intro_html": intro.as_html(note),
            "intro_text": intro.as_text(note),
            "preheader": preheader(issue.intro or "", [a.title for a in articles]),
            "preheader_pad": _PREHEADER_PAD,
            **brand.masthead(settings),
            # The web version in the mail's language, whatever the browser prefers.
            "online_url": public_url(settings, f"/archive/{issue.week}?lang={locale}"),
            "subscribe_url": public_url(settings, "/subscribe"),
            "sender_identity": settings.sender_identity,
            "web": markers is None,
            "unsubscribe_url": markers["unsubscribe_url"] if markers else "",
            "preferences_url": markers["preferences_url"] if markers else "",
            # Where an article's links lead (the templates call it for every article link).
            "link": link_for(settings, issue.week, mail=markers is not None),
            "email": markers["email"] if markers else "",
        }
        subject = digest_subject(
            settings, lead.title if lead else None, len(rest), issue.week, locale
        )
        html = _INLINER.inline(render_template("email/digest.html", subject=subject, **context))
        text = render_template("email/digest.txt", subject=subject, **context)
    return Rendered(subject, text, html)


def mail_template(
    settings: Settings,
    issue: Issue,
    locale: str,
    *,
    subject_prefix: str = "",
    categories: frozenset[str] | None = None,
) -> MailTemplate:
    """The issue's mail in one locale (and, given `categories`, only their articles), ready
    to be filled in per subscriber."""
    markers = Markers()
    rendered = render_issue(settings, issue, locale, markers=markers, categories=categories)
    return MailTemplate(
        settings,
        subject=subject_prefix + rendered.subject,
        text=rendered.text,
        html=rendered.html,
        markers=markers,
        kind=TEST if subject_prefix else DIGEST,
        campaign=issue.week,
    )


@dataclass(frozen=True)
class Recipient:
    """What personalisation needs of a subscriber (no ORM object: batches load columns)."""

    subscriber_id: int
    email: str
    locale: str
    created_at: datetime


def personal_values(
    settings: Settings, recipient: Recipient
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(unsubscribe URL, values for the text part, escaped values for the HTML part)."""
    token = unsubscribe_token_for(settings, recipient.subscriber_id, recipient.created_at)
    url = public_url(settings, f"/unsubscribe/{token}")
    choose = preferences_token_for(settings, recipient.subscriber_id, recipient.created_at)
    preferences = public_url(settings, f"/preferences/{choose}")
    text = {"unsubscribe_url": url, "preferences_url": preferences, "email": recipient.email}
    html = {
        "unsubscribe_url": url,
        "preferences_url": preferences,
        "email": str(escape(recipient.email)),
    }
    return url, text, html


def envelope_for(settings: Settings, recipient: Recipient, issue_id: int | None) -> Envelope:
    """The envelope mail_for gives a subscriber's copy (the VERP sender, the address as the
    wire has it), without building the copy: what a send announces ahead (delivery._Ahead)."""
    address, smtputf8 = wire_address(recipient.email)
    return Envelope(
        _bounce(settings, recipient, issue_id) or settings.mail_from_address, address, smtputf8
    )


def _bounce(settings: Settings, recipient: Recipient, issue_id: int | None) -> str | None:
    """The copy's VERP bounce address (None without HEBDO_BOUNCE_ADDRESS): the delivery's
    when it has a subscriber and an issue, else the bare bounce address."""
    subscriber = recipient.subscriber_id
    if subscriber and issue_id:
        return bounce_address(settings, subscriber, issue_id=issue_id)
    return bounce_address(settings, None)


def mail_for(
    settings: Settings,
    template: MailTemplate,
    recipient: Recipient,
    now: datetime,
    issue_id: int | None = None,
    envelope: Envelope | None = None,
) -> Outgoing:
    """One subscriber's copy: the shared rendering plus their address and unsubscribe link,
    and the addresses that bring back what concerns this delivery: its VERP bounce address
    (`issue_id` and a subscriber) and the reader's own unsubscribe mailto. A preview or a
    test to someone who is no subscriber (id 0) has neither. `envelope`: what
    `envelope_for` gave for the same recipient and issue, when the caller has it."""
    unsubscribe_url, text_values, html_values = personal_values(settings, recipient)
    subscriber = recipient.subscriber_id
    return template.fill(
        to=recipient.email,
        unsubscribe_url=unsubscribe_url,
        now=now,
        values=text_values,
        html_values=html_values,
        envelope_from=None if envelope else _bounce(settings, recipient, issue_id),
        unsubscribe_mailto=unsubscribe_address(settings, subscriber, recipient.created_at)
        if subscriber
        else None,
        envelope=envelope,
    )
