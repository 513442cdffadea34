"""Admin issues and articles: the list of issues, one issue (preview, test, approve,
send, pause, resume, cancel, live progress), the coming issue's articles (exclude,
include, reorder), and the same powers over the admin API.

Thin views: the work is in issues (the issue's life) and editorial (the articles);
refusals from them become a flash message here, a 4xx JSON body on the API.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Response, abort, flash, g, jsonify, redirect, request, url_for

from service import i18n
from service.admin.audit import Actor
from service.digest import actions, editorial, previews, progress
from service.digest.planning import (
    NoIssue,
    Refused,
    get_issue,
    issue_articles,
    plan_week,
    require_issue,
)
from service.digest.rendering import Recipient
from service.extensions import limiter
from service.jobs import enqueue_batch
from service.mail.errors import DeliveryError
from service.models import Issue, IssueStatus
from service.subscribers.addresses import InvalidEmail
from service.web.admin.base import (
    API_ROLES,
    actor,
    add_texts,
    api_bp,
    bp,
    current,
    json_error,
    page,
    t,
)
from service.web.api import shapes
from service.web.api.openapi import Reply, error, operation
from service.web.common import client_ip, now, settings
from service.web.payloads import PayloadError, parse

add_texts(
    {
        "fr": {
            "issues.title": "Numéros",
            "issues.none": "Aucun numéro pour l’instant.",
            "issues.week": "Semaine",
            "issues.subject": "Objet",
            "issues.status": "Statut",
            "issues.send_at": "Envoi prévu",
            "issues.recipients": "Destinataires",
            "issues.sent": "Envoyés",
            "issues.failed": "Échecs",
            "issues.bounced": "Rebonds",
            "issues.complaints": "Plaintes (spam)",
            "issues.pending": "En attente",
            "issues.skipped": "Ignorés",
            "issues.rate": "Débit (msg/s, dernière minute)",
            "issues.eta": "Fin estimée dans (s)",
            "issues.progress": "Progression",
            "issues.issue": "Numéro {week}",
            "issues.articles": "Articles du numéro",
            "issues.no_articles": "Ce numéro ne contient aucun article.",
            "issues.preview": "Aperçu",
            "issues.preview_html": "Version HTML",
            "issues.preview_text": "Version texte",
            "issues.preview_frame": "Aperçu HTML du numéro {week}",
            "issues.actions": "Actions",
            "issues.test_to": "Adresse du test (vide : la vôtre)",
            "issues.test": "M’envoyer un test",
            "issues.approve": "Approuver",
            "issues.send": "Envoyer maintenant",
            "issues.pause": "Mettre en pause",
            "issues.resume": "Reprendre",
            "issues.cancel": "Annuler le numéro",
            "issues.confirm_send": "Envoyer ce numéro à tous les abonnés actifs maintenant ?",
            "issues.confirm_cancel": "Annuler ce numéro ? Ceux qui ne l’ont pas encore reçu ne le recevront pas.",
            "issues.confirm_pause": "Mettre l’envoi en pause ?",
            "issues.done.approve": "Numéro {week} approuvé : il partira à l’heure prévue.",
            "issues.done.send": "Envoi du numéro {week} lancé vers {recipients} abonnés.",
            "issues.done.plan": "Numéro {week} préparé : {articles} article(s), {status}.",
            "issues.plan": "Préparer le numéro {week} maintenant",
            "issues.plan_help": "Le numéro de la semaine {week} n’est pas encore préparé : préparez-le pour le prévisualiser, l’envoyer en test ou tout de suite. Sans relecture, ses articles sont remis à jour juste avant l’envoi programmé.",
            "issues.done.pause": "Envoi du numéro {week} mis en pause.",
            "issues.done.resume": "Envoi du numéro {week} repris.",
            "issues.done.cancel": "Numéro {week} annulé.",
            "issues.done.test": "Test du numéro {week} envoyé à {to}.",
            "issues.refused": "Impossible : le numéro {week} est « {status} ».",
            "issues.refused.test_address": "Adresse de test invalide.",
            "issues.refused.suppressed": "Cette adresse est sur la liste de suppression : aucun test ne lui est envoyé.",
            "issues.refused.no_address": "Indiquez une adresse : votre compte n’en a pas.",
            "issues.refused.mailer": "Le serveur de messagerie a refusé le test : {error}",
            "issues.status.draft": "brouillon",
            "issues.status.scheduled": "programmé",
            "issues.status.sending": "en cours d’envoi",
            "issues.status.sent": "envoyé",
            "issues.status.paused": "en pause",
            "issues.status.cancelled": "annulé",
            "articles.title": "Articles",
            "articles.intro": "Articles des 30 derniers jours. Numéro à venir : {week}.",
            "articles.intro_status": "Statut du numéro à venir : {status}.",
            "articles.not_planned": "Le numéro à venir n’est pas encore préparé : les positions sont celles qu’il aurait s’il l’était maintenant.",
            "articles.review_note": "Toute modification prépare de nouveau le numéro : en mode relecture, il redevient un brouillon à approuver.",
            "articles.none": "Aucun article ces 30 derniers jours.",
            "articles.published": "Publié le",
            "articles.article": "Article",
            "articles.state": "Dans le numéro à venir",
            "articles.position": "Position {n}",
            "articles.excluded": "Exclu",
            "articles.sent_in": "Déjà envoyé dans le numéro {week}",
            "articles.held_by": "Dans le numéro {week} ({status})",
            "articles.out": "Non retenu",
            "articles.exclude": "Exclure",
            "articles.include": "Réintégrer",
            "articles.up": "Monter",
            "articles.down": "Descendre",
            "articles.up_label": "Monter « {title} »",
            "articles.down_label": "Descendre « {title} »",
            "articles.done.exclude": "Article exclu du numéro à venir.",
            "articles.done.include": "Article réintégré.",
            "articles.done.move": "Ordre du numéro à venir modifié.",
            "articles.replanned": "Le numéro {week} a été préparé de nouveau ({status}).",
            "articles.refused": "Impossible : cet article n’est pas dans le numéro à venir.",
            "articles.previous": "Page précédente",
            "articles.next": "Page suivante",
            "articles.page": "Page {page} sur {pages}",
        },
        "en": {
            "issues.title": "Issues",
            "issues.none": "No issue yet.",
            "issues.week": "Week",
            "issues.subject": "Subject",
            "issues.status": "Status",
            "issues.send_at": "Send time",
            "issues.recipients": "Recipients",
            "issues.sent": "Sent",
            "issues.failed": "Failed",
            "issues.bounced": "Bounced",
            "issues.complaints": "Complaints (spam)",
            "issues.pending": "Pending",
            "issues.skipped": "Skipped",
            "issues.rate": "Rate (msg/s, last minute)",
            "issues.eta": "Done in (s)",
            "issues.progress": "Progress",
            "issues.issue": "Issue {week}",
            "issues.articles": "Articles in this issue",
            "issues.no_articles": "This issue holds no article.",
            "issues.preview": "Preview",
            "issues.preview_html": "HTML version",
            "issues.preview_text": "Text version",
            "issues.preview_frame": "HTML preview of issue {week}",
            "issues.actions": "Actions",
            "issues.test_to": "Test address (empty: yours)",
            "issues.test": "Send me a test",
            "issues.approve": "Approve",
            "issues.send": "Send now",
            "issues.pause": "Pause",
            "issues.resume": "Resume",
            "issues.cancel": "Cancel the issue",
            "issues.confirm_send": "Send this issue to every active subscriber now?",
            "issues.confirm_cancel": "Cancel this issue? Whoever has not got it yet will not.",
            "issues.confirm_pause": "Pause the send?",
            "issues.done.approve": "Issue {week} approved: it goes out at its scheduled time.",
            "issues.done.send": "Issue {week} is going out to {recipients} subscribers.",
            "issues.done.plan": "Issue {week} planned: {articles} article(s), {status}.",
            "issues.plan": "Plan issue {week} now",
            "issues.plan_help": "The issue of week {week} is not planned yet: plan it to preview it, send a test or send it now. Without review, its articles are refreshed right before the scheduled send.",
            "issues.done.pause": "Issue {week} paused.",
            "issues.done.resume": "Issue {week} sending again.",
            "issues.done.cancel": "Issue {week} cancelled.",
            "issues.done.test": "Test of issue {week} sent to {to}.",
            "issues.refused": "Not possible: issue {week} is “{status}”.",
            "issues.refused.test_address": "Invalid test address.",
            "issues.refused.suppressed": "This address is on the suppression list: no test is sent to it.",
            "issues.refused.no_address": "Type an address: your account has none.",
            "issues.refused.mailer": "The mail server refused the test: {error}",
            "issues.status.draft": "draft",
            "issues.status.scheduled": "scheduled",
            "issues.status.sending": "sending",
            "issues.status.sent": "sent",
            "issues.status.paused": "paused",
            "issues.status.cancelled": "cancelled",
            "articles.title": "Articles",
            "articles.intro": "Articles of the last 30 days. Coming issue: {week}.",
            "articles.intro_status": "Coming issue's status: {status}.",
            "articles.not_planned": "The coming issue is not planned yet: positions are those it would have if planned now.",
            "articles.review_note": "Any change plans the issue again: in review mode it becomes a draft to approve again.",
            "articles.none": "No article in the last 30 days.",
            "articles.published": "Published",
            "articles.article": "Article",
            "articles.state": "In the coming issue",
            "articles.position": "Position {n}",
            "articles.excluded": "Excluded",
            "articles.sent_in": "Already sent in issue {week}",
            "articles.held_by": "In issue {week} ({status})",
            "articles.out": "Not selected",
            "articles.exclude": "Exclude",
            "articles.include": "Include again",
            "articles.up": "Up",
            "articles.down": "Down",
            "articles.up_label": "Move “{title}” up",
            "articles.down_label": "Move “{title}” down",
            "articles.done.exclude": "Article left out of the coming issue.",
            "articles.done.include": "Article included again.",
            "articles.done.move": "The coming issue's order changed.",
            "articles.replanned": "Issue {week} was planned again ({status}).",
            "articles.refused": "Not possible: this article is not in the coming issue.",
            "articles.previous": "Previous page",
            "articles.next": "Next page",
            "articles.page": "Page {page} of {pages}",
        },
    }
)


def _status(status: str) -> str:
    return t(f"issues.status.{status}")


# ---------------------------------------------------------------- the domain, once for both faces


class _Outcome:
    """What an issue action did, for the flash message or the JSON answer."""

    def __init__(self, issue: Issue, message: str, **extra: Any) -> None:
        self.issue = issue
        self.message = message
        self.extra = extra


def _act(week: str, action: str, to: str | None, locale: str | None) -> _Outcome:
    """Run one issue action through `actions` (which audits it); raises NoIssue, Refused,
    InvalidEmail, SuppressedAddress, DeliveryError."""
    s, moment, by = settings(), now(), Actor(actor(), client_ip())
    if action == "plan":
        # The only action on a week that may have no issue yet.
        planned = actions.plan(s, week, moment, by)
        message = t(
            "issues.done.plan",
            week=planned.week,
            articles=planned.articles,
            status=_status(planned.status),
        )
        return _Outcome(require_issue(planned.week), message, articles=planned.articles)
    extra: dict[str, Any] = {}
    if action == "test":
        recipient, reply = actions.test(
            s, week, to or "", locale, moment, by, own_address=current().email
        )
        extra = {"to": recipient.email, "reply": reply}
        issue = require_issue(week)
        message = t("issues.done.test", week=issue.week, to=recipient.email)
    elif action == "send":
        result = actions.send(s, week, moment, enqueue_batch, by, at_once=True)
        if not result.started:
            fresh = require_issue(week)
            raise Refused(f"{fresh.week} is {fresh.status}", fresh.week, fresh.status)
        extra = {"recipients": result.recipients, "queued": result.queued}
        issue = require_issue(week)
        message = t("issues.done.send", week=issue.week, recipients=result.recipients)
    elif action == "resume":
        issue = actions.resume(s, week, moment, enqueue_batch, by)
        message = t("issues.done.resume", week=issue.week)
    else:
        issue = {"approve": actions.approve, "pause": actions.pause, "cancel": actions.cancel}[
            action
        ](s, week, moment, by)
        message = t(f"issues.done.{action}", week=issue.week)
    return _Outcome(issue, message, **extra)


# ---------------------------------------------------------------- browser pages


@bp.get("/issues", endpoint="issues")
def issues_list() -> tuple[str, int]:
    """Every issue, newest first, with its delivery figures."""
    coming = editorial.coming_week(settings(), now())
    found = get_issue(coming)
    plannable = found is None or (
        found.status == IssueStatus.CANCELLED and found.started_at is None
    )
    return page(
        "issues.html",
        rows=progress.recent_issues(),
        status_text=_status,
        tz=settings().timezone,
        coming=coming if plannable else None,
    )


def _issue_or_404(week: str) -> Issue:
    try:
        return require_issue(week)
    except NoIssue:
        abort(404)


@bp.get("/issues/<week>")
def issue(week: str) -> tuple[str, int]:
    """One issue: its articles, preview, actions and progress."""
    found = _issue_or_404(week)
    text = previews.mail_part(
        previews.preview(settings(), found, _preview_recipient(), now()), "plain"
    )
    return page(
        "issue.html",
        issue=found,
        articles=issue_articles(found.id),
        progress=progress_answer(progress.progress(found.week, now())),
        text=text,
        status_text=_status,
        live=found.status in (IssueStatus.SCHEDULED, IssueStatus.SENDING, IssueStatus.PAUSED),
        tz=settings().timezone,
        preview_locale=request.args.get("locale")
        if request.args.get("locale") in i18n.LOCALES
        else None,
    )


def _preview_recipient() -> Recipient:
    """The signed-in user's address when they have one (never a subscriber's), else a
    placeholder, in the language asked for (?locale=)."""
    chosen = request.args.get("locale")
    locale = chosen if chosen in i18n.LOCALES else str(g.get("admin_locale", "fr"))
    return Recipient(0, current().email or previews.PLACEHOLDER_ADDRESS, locale, now())


PREVIEW_CSP = (
    "default-src 'none'; img-src * data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)


@bp.get("/issues/<week>/preview.html")
def issue_preview(week: str) -> Response:
    """The issue's HTML exactly as mailed, for the issue page's sandboxed iframe."""
    found = _issue_or_404(week)
    html = previews.mail_part(
        previews.preview(settings(), found, _preview_recipient(), now()), "html"
    )
    response = Response(html, mimetype="text/html")
    # The mail's own inlined styles and remote images, but no script, and framed only here.
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/issues/<week>/progress.json")
def issue_progress(week: str) -> Response:
    """The live panel's figures (admin.js polls this every 2 s while the issue is live)."""
    found = _issue_or_404(week)
    figures = progress_answer(progress.progress(found.week, now())).model_dump(mode="json")
    return jsonify({**figures, "status_text": _status(figures["status"])})


def _not_a_test() -> bool:
    return (request.view_args or {}).get("action") != "test"


# Test sends go to any address typed in: a cap per client, so the form cannot become a
# mail cannon (each is also audited).
TEST_SEND_LIMIT = "30/hour"


@bp.post("/issues/<week>/<action>")
@limiter.limit(TEST_SEND_LIMIT, exempt_when=_not_a_test, scope="issue-test")
def issue_action(week: str, action: str) -> Response:
    """Approve, send now, pause, resume, cancel or test; the outcome as a flash message."""
    if action not in actions.ACTIONS:
        abort(404)
    if action == "plan":
        try:
            week = plan_week(week)
        except NoIssue:
            abort(404)
    else:
        week = _issue_or_404(week).week
    to = request.form.get("to", "").strip() or current().email
    if action == "test" and not to:
        flash(t("issues.refused.no_address"), "error")
    else:
        try:
            outcome = _act(week, action, to, request.form.get("locale") or None)
            flash(outcome.message, "info")
        except Refused as exc:
            flash(t("issues.refused", week=exc.week, status=_status(exc.status)), "error")
        except InvalidEmail:
            flash(t("issues.refused.test_address"), "error")
        except previews.SuppressedAddress:
            flash(t("issues.refused.suppressed"), "error")
        except DeliveryError as exc:
            flash(t("issues.refused.mailer", error=str(exc)), "error")
    return cast(Response, redirect(url_for("admin.issue", week=week)))


@bp.get("/articles")
def articles() -> tuple[str, int]:
    """The last 30 days' articles and where each stands in the coming issue."""
    try:
        number = int(request.args.get("page", "1"))
    except ValueError:
        number = 1
    listing = editorial.recent_articles(settings(), now(), number)
    return page(
        "articles.html",
        listing=listing,
        status_text=_status,
        review=settings().review,
        last_position=listing.size,
        tz=settings().timezone,
    )


@bp.post("/articles/<int:article_id>/<action>")
def article_action(article_id: int, action: str) -> Response:
    """Exclude, include, move up or down; the coming issue is re-planned after."""
    s, moment, who, ip = settings(), now(), actor(), client_ip()
    try:
        if action == "exclude":
            change = editorial.exclude(s, article_id, actor=who, now=moment, ip=ip)
        elif action == "include":
            change = editorial.include(s, article_id, actor=who, now=moment, ip=ip)
        elif action in ("up", "down"):
            offset = -1 if action == "up" else 1
            change = editorial.move(s, article_id, offset, actor=who, now=moment, ip=ip)
        else:
            abort(404)
    except editorial.EditorialError:
        flash(t("articles.refused"), "error")
    else:
        flash(t("articles.done.move" if action in ("up", "down") else f"articles.done.{action}"))
        if change.replanned and change.status:
            flash(t("articles.replanned", week=change.week, status=_status(change.status)))
    target = url_for("admin.articles", page=request.form.get("page") or None)
    return cast(Response, redirect(f"{target}#article-{article_id}"))


# ---------------------------------------------------------------- admin API


def _figures(p: progress.Progress) -> dict[str, Any]:
    c = p.counts
    return {
        "week": p.week,
        "status": IssueStatus(p.status),
        "note": p.note,
        "started_at": p.started_at,
        "finished_at": p.finished_at,
        "recipients": p.recipients,
        "sent": c.get("sent", 0),
        "failed": c.get("failed", 0),
        "bounced": c.get("bounced", 0),
        "skipped": c.get("skipped", 0),
        "pending": p.pending,
        "complaints": p.complaints,
        "done": p.done,
        "percent": round(p.percent, 1),
        "rate": round(p.rate_last_minute, 2),
        "eta_seconds": p.eta_seconds,
    }


def progress_answer(p: progress.Progress) -> shapes.IssueProgress:
    return shapes.IssueProgress(**_figures(p))


def _summary(row: progress.IssueSummary) -> shapes.IssueSummary:
    i, c = row.issue, row.counts
    return shapes.IssueSummary(
        week=i.week,
        subject=i.subject,
        status=IssueStatus(i.status),
        note=i.note,
        send_at=i.send_at,
        started_at=i.started_at,
        finished_at=i.finished_at,
        recipients=i.recipients,
        sent=c["sent"],
        failed=c["failed"],
        bounced=c["bounced"],
        skipped=c["skipped"],
        pending=row.pending,
        complaints=i.complaint_count,
    )


ISSUE_ERRORS = {404: error("No issue that week")}


@api_bp.get("/issues")
@operation(
    summary="Issues with their status and delivery counts",
    roles=API_ROLES,
    replies={200: Reply("Issues, newest first", shapes.IssueList)},
)
def api_issues() -> Response:
    """Every issue with its status and delivery counts."""
    answer = shapes.IssueList(items=[_summary(row) for row in progress.recent_issues()])
    return jsonify(answer.model_dump(mode="json"))


@api_bp.get("/issues/<week>")
@operation(
    summary="One issue with its progress",
    roles=API_ROLES,
    replies={200: Reply("The issue", shapes.Issue), **ISSUE_ERRORS},
)
def api_issue(week: str) -> Response | tuple[Response, int]:
    """One issue, its articles and its progress."""
    try:
        found = require_issue(week)
    except NoIssue as exc:
        return json_error(404, "not_found", str(exc))
    answer = shapes.Issue(
        **_figures(progress.progress(found.week, now())),
        subject=found.subject,
        send_at=found.send_at,
        articles=[
            shapes.IssueArticle(position=a.position, title=a.title, url=a.url, category=a.category)
            for a in issue_articles(found.id)
        ],
    )
    return jsonify(answer.model_dump(mode="json"))


def _api_act(
    week: str, action: str, to: str | None, locale: str | None
) -> Response | tuple[Response, int]:
    try:
        if action == "plan":
            plan_week(week)
        else:
            require_issue(week)
        outcome = _act(week, action, to, locale)
    except NoIssue as exc:
        return json_error(404, "not_found", str(exc))
    except Refused as exc:
        return json_error(409, "conflict", f"{exc.week} is {exc.status}: cannot {action} it")
    except InvalidEmail as exc:
        return json_error(422, "invalid_address", f"invalid address: {exc.code}")
    except previews.SuppressedAddress as exc:
        return json_error(422, "suppressed_address", str(exc))
    except DeliveryError as exc:
        return json_error(502, "mail_refused", f"the mail server refused the test: {exc}")
    result = shapes.IssueActionResult(
        week=outcome.issue.week, status=IssueStatus(outcome.issue.status), **outcome.extra
    )
    return jsonify(result.model_dump(mode="json", exclude_none=True))


ACTION_REPLIES = {
    200: Reply("Done", shapes.IssueActionResult),
    **ISSUE_ERRORS,
    409: error("Not possible in the issue's current status"),
}


@api_bp.post("/issues/<week>/test")
@operation(
    summary="Send the issue to one address now, marked [TEST] (no delivery recorded)",
    body=shapes.TestSend,
    roles=API_ROLES,
    replies={
        **ACTION_REPLIES,
        422: error("No address, or one that cannot be mailed (invalid, suppressed)"),
        429: error("More than 30 test sends in an hour from this client"),
        502: error("The mail server refused the test"),
    },
)
@limiter.limit(TEST_SEND_LIMIT, scope="issue-test")
def api_issue_test(week: str) -> Response | tuple[Response, int]:
    """Test send: JSON `{"to": address, "locale"?: "fr"|"en"}`."""
    body = request.get_json(silent=True)
    try:
        asked = parse(shapes.TestSend, body if isinstance(body, dict) else {})
    except PayloadError as exc:
        return json_error(
            422, "invalid_address", f'a JSON body {{"to": address}} is required: {exc.detail}'
        )
    if not asked.to.strip():
        return json_error(422, "invalid_address", 'a JSON body {"to": address} is required')
    return _api_act(week, "test", asked.to, asked.locale)


@api_bp.post("/issues/<week>/<action>")
@operation(
    summary="Plan, approve, send (at once), pause, resume or cancel the issue",
    path={"action": {"schema": {"type": "string", "enum": list(shapes.ISSUE_ACTIONS)}}},
    roles=API_ROLES,
    replies=ACTION_REPLIES,
)
def api_issue_action(week: str, action: str) -> Response | tuple[Response, int]:
    """plan, approve, send (at once), pause, resume or cancel."""
    if action not in shapes.ISSUE_ACTIONS:
        return json_error(404, "not_found", f"no action {action!r}")
    return _api_act(week, action, None, None)
