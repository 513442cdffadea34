"""Admin issues and articles: the list of issues, one issue (preview, test, approve,
send, pause, resume, cancel, live progress), the coming issue's articles (exclude,
include, reorder), and the same powers over the admin API.

Thin views: the work is in digest.actions (the issue's life) and digest.editorial (the articles);
refusals from them become a flash message here, a 4xx JSON body on the API.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Response, abort, flash, g, jsonify, redirect, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext, ngettext

from service import i18n
from service.admin.audit import Actor
from service.admin.visibility import sees_suppressions
from service.digest import actions, editorial, intro, previews, progress
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
    LABELS,
    actor,
    api_bp,
    bp,
    current,
    json_error,
    label,
    page,
)
from service.web.api import shapes
from service.web.api.openapi import Reply, error, operation
from service.web.common import client_ip, now, settings
from service.web.payloads import PayloadError, parse

LABELS["issue"] = {
    "draft": lazy_gettext("draft"),
    "scheduled": lazy_gettext("scheduled"),
    "sending": lazy_gettext("sending"),
    "sent": lazy_gettext("sent"),
    "paused": lazy_gettext("paused"),
    "cancelled": lazy_gettext("cancelled"),
}


def _status(status: str) -> str:
    return label("issue", status)


def _done(action: str, week: str) -> str:
    """The flash message after approve, pause, resume or cancel."""
    if action == "approve":
        return _("Issue %(week)s approved: it goes out at its scheduled time.", week=week)
    if action == "pause":
        return _("Issue %(week)s paused.", week=week)
    if action == "resume":
        return _("Issue %(week)s sending again.", week=week)
    return _("Issue %(week)s cancelled.", week=week)


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
        message = ngettext(
            "Issue %(week)s planned: %(num)s article, %(status)s.",
            "Issue %(week)s planned: %(num)s articles, %(status)s.",
            planned.articles,
            week=planned.week,
            status=_status(planned.status),
        )
        return _Outcome(require_issue(planned.week), message, articles=planned.articles)
    extra: dict[str, Any] = {}
    if action == "test":
        # Editors may not learn whether an address is suppressed: the same answer either
        # way, without the server's reply (see actions.test).
        reveal = sees_suppressions(current().role)
        recipient, reply = actions.test(
            s,
            week,
            to or "",
            locale,
            moment,
            by,
            own_address=current().email,
            reveal_suppression=reveal,
        )
        extra = {"to": recipient.email, **({"reply": reply} if reveal else {})}
        issue = require_issue(week)
        if reveal:
            message = _(
                "Test of issue %(week)s sent to %(to)s.", week=issue.week, to=recipient.email
            )
        else:
            message = _(
                "Test of issue %(week)s sent to %(to)s, unless hebdo may not mail that address.",
                week=issue.week,
                to=recipient.email,
            )
    elif action == "send":
        result = actions.send(s, week, moment, enqueue_batch, by, at_once=True)
        if not result.started:
            fresh = require_issue(week)
            raise Refused(f"{fresh.week} is {fresh.status}", fresh.week, fresh.status)
        extra = {"recipients": result.recipients, "queued": result.queued}
        issue = require_issue(week)
        message = ngettext(
            "Issue %(week)s is going out to %(num)s subscriber.",
            "Issue %(week)s is going out to %(num)s subscribers.",
            result.recipients or 0,
            week=issue.week,
        )
    elif action == "resume":
        issue = actions.resume(s, week, moment, enqueue_batch, by)
        message = _done(action, issue.week)
    else:
        issue = {"approve": actions.approve, "pause": actions.pause, "cancel": actions.cancel}[
            action
        ](s, week, moment, by)
        message = _done(action, issue.week)
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
        intro_editable=found.status in intro.EDITABLE and found.started_at is None,
        intro_max=intro.INTRO_MAX,
        review=settings().review,
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


@bp.post("/issues/<week>/intro")
def issue_intro(week: str) -> Response:
    """Write the editor's note (digest.intro.set_intro audits it)."""
    found = _issue_or_404(week)
    try:
        change = intro.set_intro(
            settings(),
            found.week,
            request.form.get("intro", ""),
            now(),
            Actor(actor(), client_ip()),
        )
    except intro.IntroTooLong as exc:
        flash(
            _(
                "The note is %(length)s characters long: at most %(max)s.",
                length=exc.length,
                max=intro.INTRO_MAX,
            ),
            "error",
        )
    except Refused as exc:
        _flash_refused(exc)
    else:
        flash(_("Editor’s note saved."), "info")
        if change.needs_approval:
            flash(_("Issue %(week)s is a draft again: approve it to send it.", week=found.week))
    return cast(Response, redirect(url_for("admin.issue", week=found.week) + "#intro"))


def _flash_refused(exc: Refused) -> None:
    """What an editor reads when the issue's status does not allow the action."""
    flash(
        _(
            "Not possible: issue %(week)s is “%(status)s”.",
            week=exc.week,
            status=_status(exc.status),
        ),
        "error",
    )


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
        flash(_("Type an address: your account has none."), "error")
    else:
        try:
            outcome = _act(week, action, to, request.form.get("locale") or None)
            flash(outcome.message, "info")
        except Refused as exc:
            _flash_refused(exc)
        except InvalidEmail:
            flash(_("Invalid test address."), "error")
        except previews.SuppressedAddress:
            flash(_("This address is on the suppression list: no test is sent to it."), "error")
        except DeliveryError as exc:
            flash(_("The mail server refused the test: %(error)s", error=str(exc)), "error")
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
    """Exclude, include, move up or down, make lead; the coming issue is re-planned after."""
    s, moment, who, ip = settings(), now(), actor(), client_ip()
    try:
        if action == "exclude":
            change = editorial.exclude(s, article_id, actor=who, now=moment, ip=ip)
        elif action == "include":
            change = editorial.include(s, article_id, actor=who, now=moment, ip=ip)
        elif action in ("up", "down"):
            offset = -1 if action == "up" else 1
            change = editorial.move(s, article_id, offset, actor=who, now=moment, ip=ip)
        elif action == "lead":
            change = editorial.make_lead(s, article_id, actor=who, now=moment, ip=ip)
        else:
            abort(404)
    except editorial.EditorialError:
        flash(_("Not possible: this article is not in the coming issue."), "error")
    else:
        if action == "exclude":
            flash(_("Article left out of the coming issue."))
        elif action == "include":
            flash(_("Article included again."))
        elif action == "lead":
            flash(_("This article now leads the coming issue."))
        else:
            flash(_("The coming issue's order changed."))
        if change.replanned and change.status:
            flash(
                _(
                    "Issue %(week)s was planned again (%(status)s).",
                    week=change.week,
                    status=_status(change.status),
                )
            )
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
        "hard_bounces": c.get("bounced", 0) + p.late_hard_bounces,
        "soft_bounces": p.soft_bounces,
        "mailto_unsubscribes": p.mailto_unsubscribes,
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
        hard_bounces=c["bounced"] + i.hard_bounce_count,
        soft_bounces=i.soft_bounce_count,
        mailto_unsubscribes=i.mailto_unsubscribe_count,
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
        intro=found.intro,
        articles=[
            shapes.IssueArticle(
                position=a.position, title=a.title, url=a.url, category=a.category, clicks=a.clicks
            )
            for a in issue_articles(found.id)
        ],
    )
    return jsonify(answer.model_dump(mode="json"))


@api_bp.patch("/issues/<week>")
@operation(
    summary="Write the issue's editor's note, or choose its lead story, before it goes out",
    body=shapes.IssuePatch,
    roles=API_ROLES,
    replies={
        200: Reply("Done", shapes.IssuePatchResult),
        400: error("Malformed JSON"),
        **ISSUE_ERRORS,
        409: error("The issue started going out (or, for `lead`, is not the coming issue)"),
        422: error(
            f"Invalid field: an intro over {intro.INTRO_MAX} characters, an unknown article"
        ),
    },
)
def api_issue_patch(week: str) -> Response | tuple[Response, int]:
    """`{"intro": "…"}` and/or `{"lead": article id}`; in review mode an approved issue
    is a draft again afterwards (`needs_approval`)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return json_error(400, "malformed_json", "send a JSON object")
    try:
        change = parse(shapes.IssuePatch, body)
    except PayloadError as exc:
        return json_error(exc.status, exc.code, exc.detail)
    try:
        found = require_issue(week)
    except NoIssue as exc:
        return json_error(404, "not_found", str(exc))
    s, moment, by = settings(), now(), Actor(actor(), client_ip())
    needs_approval = False
    try:
        if change.lead is not None:
            if editorial.coming_week(s, moment) != found.week:
                return json_error(
                    409, "conflict", f"{found.week} is not the coming issue: its lead is fixed"
                )
            replanned = editorial.make_lead(s, change.lead, actor=by.name, now=moment, ip=by.ip)
            needs_approval = replanned.replanned and replanned.status == IssueStatus.DRAFT
        if "intro" in change.model_fields_set:
            needs_approval = (
                intro.set_intro(s, found.week, change.intro, moment, by).needs_approval
                or needs_approval
            )
    except editorial.EditorialError as exc:
        return json_error(422, "invalid_field", str(exc))
    except intro.IntroTooLong as exc:
        return json_error(422, "invalid_field", str(exc))
    except Refused as exc:
        return json_error(409, "conflict", f"{exc.week} is {exc.status}: cannot change it")
    fresh = require_issue(found.week)
    result = shapes.IssuePatchResult(
        week=fresh.week,
        status=IssueStatus(fresh.status),
        intro=fresh.intro,
        needs_approval=needs_approval and settings().review,
    )
    return jsonify(result.model_dump(mode="json"))


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
        422: error(
            "No address, or one that cannot be mailed (invalid; suppressed: told to admin "
            "tokens only, an editor's answer is the same as for any address)"
        ),
        429: error("More than 30 test sends in an hour from this client"),
        502: error("The mail server refused the test"),
    },
)
@limiter.limit(TEST_SEND_LIMIT, scope="issue-test")
def api_issue_test(week: str) -> Response | tuple[Response, int]:
    """Test send: JSON `{"to": address, "locale"?: "fr"|"en"}`."""
    try:
        require_issue(week)
    except NoIssue as exc:
        return json_error(404, "not_found", str(exc))
    body = request.get_json(silent=True)
    try:
        asked = parse(shapes.TestSend, body if isinstance(body, dict) else {})
    except PayloadError as exc:
        if exc.field == "locale":
            return json_error(422, "invalid_locale", f"locale must be one of {i18n.LOCALES}")
        return json_error(422, "invalid_address", 'a JSON body {"to": address} is required')
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
