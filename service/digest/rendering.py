"""How an issue reads: rendered once per issue and locale (HTML with inlined CSS, and
plain text); per-subscriber pieces are markers that `mail_for` fills in (see
mail.message.MailTemplate).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

import css_inline
from flask import render_template
from flask_babel import force_locale
from flask_babel import gettext as _
from markupsafe import escape

from service import i18n
from service.config import Settings
from service.digest.planning import issue_articles, week_start
from service.inbound.verp import bounce_address, unsubscribe_address
from service.mail.message import DIGEST, TEST, MailTemplate, Markers, Outgoing
from service.models import Issue
from service.subscribers.tokens import public_url, unsubscribe_token_for

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


def render_issue(
    settings: Settings, issue: Issue, locale: str, *, markers: Markers | None = None
) -> Rendered:
    """The issue in one locale: with `markers`, the mail (per-subscriber pieces left as
    markers); without, the web version, which holds no personal data. The texts are in
    `locale`, whatever the request or command that renders it speaks."""
    articles = issue_articles(issue.id)
    with force_locale(locale):
        groups = [
            (category or _("Other stories"), list(items))
            for category, items in groupby(articles, key=lambda a: a.category)
        ]
        context = {
            "locale": locale,
            "site": settings.site_name,
            "week_label": week_label(issue.week, locale),
            "groups": groups,
            # The web version in the mail's language, whatever the browser prefers.
            "online_url": public_url(settings, f"/archive/{issue.week}?lang={locale}"),
            "subscribe_url": public_url(settings, "/subscribe"),
            "sender_identity": settings.sender_identity,
            "web": markers is None,
            "unsubscribe_url": markers["unsubscribe_url"] if markers else "",
            "email": markers["email"] if markers else "",
        }
        subject = _("%(site)s: %(lead)s", site=settings.site_name, lead=issue.subject or issue.week)
        html = _INLINER.inline(render_template("email/digest.html", subject=subject, **context))
        text = render_template("email/digest.txt", subject=subject, **context)
    return Rendered(subject, text, html)


def mail_template(
    settings: Settings, issue: Issue, locale: str, *, subject_prefix: str = ""
) -> MailTemplate:
    """The issue's mail in one locale, ready to be filled in per subscriber."""
    markers = Markers()
    rendered = render_issue(settings, issue, locale, markers=markers)
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
    text = {"unsubscribe_url": url, "email": recipient.email}
    html = {"unsubscribe_url": url, "email": str(escape(recipient.email))}
    return url, text, html


def mail_for(
    settings: Settings,
    template: MailTemplate,
    recipient: Recipient,
    now: datetime,
    issue_id: int | None = None,
) -> Outgoing:
    """One subscriber's copy: the shared rendering plus their address and unsubscribe link,
    and the addresses that bring back what concerns this delivery: its VERP bounce address
    (`issue_id` and a subscriber) and the reader's own unsubscribe mailto. A preview or a
    test to someone who is no subscriber (id 0) has neither."""
    unsubscribe_url, text_values, html_values = personal_values(settings, recipient)
    subscriber = recipient.subscriber_id
    return template.fill(
        to=recipient.email,
        unsubscribe_url=unsubscribe_url,
        now=now,
        values=text_values,
        html_values=html_values,
        envelope_from=bounce_address(settings, subscriber, issue_id=issue_id)
        if subscriber and issue_id
        else bounce_address(settings, None),
        unsubscribe_mailto=unsubscribe_address(settings, subscriber, recipient.created_at)
        if subscriber
        else None,
    )
