"""Rows the tests start from (subscribers, articles) and what the app shows of them
(an issue's status, a Prometheus metric's value).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from sqlalchemy import insert, select

from service.digest.articles import ArticleInput, store_article
from service.digest.planning import get_issue
from service.extensions import db
from service.models import Subscriber


def add_readers(
    app: Flask, emails: list[str], *, status: str = "active", locale: str = "fr"
) -> dict[str, int]:
    """Insert confirmed subscribers at these addresses in bulk; return their ids by address."""
    now = datetime.now(UTC)
    rows = [
        {
            "email": email,
            "status": status,
            "locale": locale,
            "created_at": now,
            "optin_serial": 1,
            "confirmed_at": now,
            "consent_at": now,
            "consent_text_version": "test",
            "confirm_attempts": 0,
        }
        for email in emails
    ]
    with app.app_context():
        db.session.execute(insert(Subscriber), rows)
        db.session.commit()
        found = db.session.execute(
            select(Subscriber.email, Subscriber.id).where(Subscriber.email.in_(emails))
        )
        return dict(found.tuples().all())


def add_subscribers(
    app: Flask, count: int, *, status: str = "active", locale: str = "fr", start: int = 0
) -> list[int]:
    """Insert subscribers in bulk (`reader<n>@exemple.fr`); return their ids."""
    emails = [f"reader{n}@exemple.fr" for n in range(start, start + count)]
    return sorted(add_readers(app, emails, status=status, locale=locale).values())


def add_article(app: Flask, n: int, published: datetime, **fields: Any) -> int:
    """Store one article through the same path as feeds and the API."""
    values: dict[str, Any] = {
        "url": f"https://lhebdo.example/articles/{n}",
        "title": f"Article numéro {n}",
        "summary": f"Résumé de l’article {n}.",
        "category": "International",
        **fields,
    }
    with app.app_context():
        article_id, _created = store_article(
            ArticleInput(published_at=published, **values), source="test", now=published
        )
        db.session.commit()
        return article_id


# --- Prometheus ---------------------------------------------------------------------


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


def issue_status(app: Flask, week: str) -> str | None:
    """The issue's status as the database has it now (None when there is no issue)."""
    with app.app_context():
        db.session.expire_all()
        issue = get_issue(week)
        return issue.status if issue else None
