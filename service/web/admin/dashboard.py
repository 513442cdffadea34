"""Admin dashboard: subscribers per status, sign-ups and unsubscribes per week (an SVG
chart drawn here, server-side: no script, and a table for screen readers), the last
issues' figures, and the alerts of dashboard.alerts worded for the reader."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from flask_babel import gettext as _
from flask_babel import ngettext, npgettext, pgettext

from service.reports import dashboard as figures
from service.web.admin.base import bp, page
from service.web.common import now


def subscriber_count(status: str, n: int) -> str:
    """The words after a status's count on its card ("1 actif", "2 actifs")."""
    if status == "pending":
        return npgettext("subscribers", "awaiting confirmation", "awaiting confirmation", n)
    if status == "active":
        return npgettext("subscribers", "active", "active", n)
    if status == "unsubscribed":
        return npgettext("subscribers", "unsubscribed", "unsubscribed", n)
    if status == "bounced":
        return npgettext("subscribers", "bounced", "bounced", n)
    if status == "complained":
        return npgettext("subscribers", "complained", "complained", n)
    return status


# The chart's drawing box (viewBox units); the CSS scales it to the page.
CHART_WIDTH, CHART_HEIGHT, AXIS = 480, 160, 20


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    # (x, text) under each week's pair of bars
    ticks: list[tuple[float, str]]
    peak: int


def chart(weeks: list[tuple[date, int, int]]) -> Chart:
    """Two bars a week (sign-ups, unsubscribes) scaled to the busiest week."""
    peak = max([1, *(max(s, u) for _d, s, u in weeks)])
    slot = CHART_WIDTH / max(len(weeks), 1)
    bar_width = slot * 0.4
    usable = CHART_HEIGHT - AXIS
    bars, ticks = [], []
    # French puts a (narrow no-break) space before the colon, English none.
    colon = pgettext("punctuation", ":")
    for n, (monday, signups, unsubscribes) in enumerate(weeks):
        left = n * slot + slot * 0.1
        day = f"{monday.day:02d}/{monday.month:02d}"
        for offset, value, css, name in (
            (0.0, signups, "signups", _("Sign-ups")),
            (bar_width, unsubscribes, "unsubscribes", _("Unsubscribes")),
        ):
            height = round(usable * value / peak, 1)
            bars.append(
                Bar(
                    round(left + offset, 1),
                    round(usable - height, 1),
                    round(bar_width, 1),
                    height,
                    css,
                    f"{day} · {name}{colon} {value}",
                )
            )
        ticks.append((round(left + bar_width, 1), day))
    return Chart(CHART_WIDTH, CHART_HEIGHT, bars, ticks, peak)


def alert_text(alert: figures.Alert) -> str:
    """An alert's facts worded for the reader, in the page's language."""
    v: dict[str, Any] = dict(alert.values)
    if alert.kind == "bounce_rate":
        return _(
            "Issue %(week)s bounced %(percent)s %% (%(bounced)s of %(recipients)s): above 2 %%, "
            "mailbox providers grow suspicious. Check the list.",
            **v,
        )
    if alert.kind == "complaint_rate":
        sent = ngettext("%(num)s sent", "%(num)s sent", v["sent"])
        return ngettext(
            "Readers reported issue %(week)s as spam: %(num)s complaint for %(sent)s "
            "(%(percent)s %%). Gmail asks for less than 0.1 %% and filters from 0.3 %%: check "
            "where these sign-ups came from.",
            "Readers reported issue %(week)s as spam: %(num)s complaints for %(sent)s "
            "(%(percent)s %%). Gmail asks for less than 0.1 %% and filters from 0.3 %%: check "
            "where these sign-ups came from.",
            v["complaints"],
            week=v["week"],
            sent=sent,
            percent=v["percent"],
        )
    if alert.kind == "feed_failing":
        return ngettext(
            "Feed %(url)s is failing (%(num)s time in a row): %(error)s",
            "Feed %(url)s is failing (%(num)s times in a row): %(error)s",
            v["failures"],
            url=v["url"],
            error=v["error"],
        )
    if alert.kind == "queue_stalled":
        return ngettext(
            "Issue %(week)s has not moved for %(minutes)s min while %(num)s message waits: "
            "check the workers and the broker.",
            "Issue %(week)s has not moved for %(minutes)s min while %(num)s messages wait: "
            "check the workers and the broker.",
            v["queued"],
            week=v["week"],
            minutes="?" if v.get("minutes") is None else v["minutes"],
        )
    return alert.kind


@bp.get("/")
def dashboard() -> tuple[str, int]:
    """Figures at a glance, and what needs attention first."""
    data = figures.dashboard(now())
    return page(
        "dashboard.html",
        data=data,
        chart=chart(data.weeks),
        alerts=[(a.kind, alert_text(a)) for a in data.alerts],
        weeks=len(data.weeks),
        subscriber_count=subscriber_count,
    )
