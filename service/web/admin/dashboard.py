"""Admin dashboard: subscribers per status, sign-ups and unsubscribes per week (an SVG
chart drawn here, server-side: no script, and a table for screen readers), the last
issues' figures, and the alerts of dashboard.alerts worded for the reader."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from flask import g

from service.reports import dashboard as figures
from service.web.admin.base import add_texts, bp, page, t
from service.web.common import now

add_texts(
    {
        "fr": {
            "dashboard.title": "Tableau de bord",
            "dashboard.subscribers": "Abonnés",
            "dashboard.status.pending": "en attente de confirmation",
            "dashboard.status.active": "actifs",
            "dashboard.status.unsubscribed": "désinscrits",
            "dashboard.status.bounced": "adresses en échec",
            "dashboard.status.complained": "plaintes",
            "dashboard.weeks": "Inscriptions et désabonnements par semaine",
            "dashboard.chart_title": "Inscriptions et désabonnements des {n} dernières semaines",
            "dashboard.week_of": "Semaine du",
            "dashboard.signups": "Inscriptions",
            "dashboard.unsubscribes": "Désabonnements",
            "dashboard.as_table": "Les mêmes chiffres en tableau",
            "dashboard.issues": "Derniers numéros",
            "dashboard.alerts": "Alertes",
            "dashboard.no_alert": "Rien à signaler.",
            "dashboard.alert.bounce_rate": "Le numéro {week} a eu {percent} % de rebonds ({bounced} sur {recipients}) : au-delà de 2 %, les fournisseurs de messagerie se méfient. Vérifiez la liste.",
            "dashboard.alert.complaint_rate": "Numéro {week} signalé comme spam par des lecteurs : {complaints} plainte(s) pour {sent} envois ({percent} %). Gmail demande de rester sous 0,1 % et filtre à partir de 0,3 % : vérifiez d’où viennent ces inscriptions.",
            "dashboard.alert.feed_failing": "Le flux {url} est en échec ({failures} fois de suite) : {error}",
            "dashboard.alert.queue_stalled": "L’envoi du numéro {week} n’avance plus depuis {minutes} min alors que {queued} messages attendent : vérifiez les workers et le broker.",
        },
        "en": {
            "dashboard.title": "Dashboard",
            "dashboard.subscribers": "Subscribers",
            "dashboard.status.pending": "awaiting confirmation",
            "dashboard.status.active": "active",
            "dashboard.status.unsubscribed": "unsubscribed",
            "dashboard.status.bounced": "bounced",
            "dashboard.status.complained": "complained",
            "dashboard.weeks": "Sign-ups and unsubscribes per week",
            "dashboard.chart_title": "Sign-ups and unsubscribes over the last {n} weeks",
            "dashboard.week_of": "Week of",
            "dashboard.signups": "Sign-ups",
            "dashboard.unsubscribes": "Unsubscribes",
            "dashboard.as_table": "The same figures as a table",
            "dashboard.issues": "Latest issues",
            "dashboard.alerts": "Alerts",
            "dashboard.no_alert": "Nothing to report.",
            "dashboard.alert.bounce_rate": "Issue {week} bounced {percent} % ({bounced} of {recipients}): above 2 %, mailbox providers grow suspicious. Check the list.",
            "dashboard.alert.complaint_rate": "Readers reported issue {week} as spam: {complaints} complaint(s) for {sent} sent ({percent} %). Gmail asks for less than 0.1 % and filters from 0.3 %: check where these sign-ups came from.",
            "dashboard.alert.feed_failing": "Feed {url} is failing ({failures} times in a row): {error}",
            "dashboard.alert.queue_stalled": "Issue {week} has not moved for {minutes} min while {queued} messages wait: check the workers and the broker.",
        },
    }
)

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


def chart(weeks: list[tuple[date, int, int]], locale: str) -> Chart:
    """Two bars a week (sign-ups, unsubscribes) scaled to the busiest week."""
    peak = max([1, *(max(s, u) for _d, s, u in weeks)])
    slot = CHART_WIDTH / max(len(weeks), 1)
    bar_width = slot * 0.4
    usable = CHART_HEIGHT - AXIS
    bars, ticks = [], []
    # French puts a (narrow no-break) space before the colon.
    colon = "\u202f:" if locale == "fr" else ":"
    for n, (monday, signups, unsubscribes) in enumerate(weeks):
        left = n * slot + slot * 0.1
        day = f"{monday.day:02d}/{monday.month:02d}"
        for offset, value, css, key in (
            (0.0, signups, "signups", "dashboard.signups"),
            (bar_width, unsubscribes, "unsubscribes", "dashboard.unsubscribes"),
        ):
            height = round(usable * value / peak, 1)
            bars.append(
                Bar(
                    round(left + offset, 1),
                    round(usable - height, 1),
                    round(bar_width, 1),
                    height,
                    css,
                    f"{day} · {t(key)}{colon} {value}",
                )
            )
        ticks.append((round(left + bar_width, 1), day))
    return Chart(CHART_WIDTH, CHART_HEIGHT, bars, ticks, peak)


def alert_text(alert: figures.Alert) -> str:
    values: dict[str, Any] = dict(alert.values)
    if alert.kind == "queue_stalled" and values.get("minutes") is None:
        values["minutes"] = "?"
    return t(f"dashboard.alert.{alert.kind}", **values)


@bp.get("/")
def dashboard() -> tuple[str, int]:
    """Figures at a glance, and what needs attention first."""
    data = figures.dashboard(now())
    locale = str(g.get("admin_locale", "fr"))
    return page(
        "dashboard.html",
        data=data,
        chart=chart(data.weeks, locale),
        alerts=[(a.kind, alert_text(a)) for a in data.alerts],
        weeks=len(data.weeks),
    )
