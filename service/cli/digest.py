"""`hebdo feeds …` and `hebdo digest …`: thin commands over the domain."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from babel.dates import format_datetime
from flask.cli import AppGroup
from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy import select

from service import i18n
from service.admin.audit import Actor
from service.digest import actions, feeds, previews, progress
from service.digest.planning import (
    DigestError,
    Refused,
    ahead_of_schedule,
    get_issue,
    parse_week,
    upcoming_week,
    week_start,
)
from service.digest.rendering import Recipient
from service.extensions import current_settings, db
from service.jobs import enqueue_batch
from service.mail.errors import DeliveryError
from service.models import Issue, IssueStatus
from service.subscribers.addresses import InvalidEmail


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str) -> None:
    click.echo(f"hebdo: {message}", err=True)
    sys.exit(1)


def _week(value: str | None) -> str:
    try:
        if value:
            return parse_week(value)
    except DigestError as exc:
        raise click.BadParameter(str(exc), param_hint="--week") from None
    # The issue going out now, if any; else this week's (see upcoming_week).
    in_flight = db.session.execute(
        select(Issue.week)
        .where(Issue.status.in_((IssueStatus.SENDING, IssueStatus.PAUSED)))
        .order_by(Issue.week.desc())
        .limit(1)
    ).scalar_one_or_none()
    return in_flight or upcoming_week(current_settings(), _now())


def _issue(week: str) -> Issue:
    issue = get_issue(week)
    if issue is None:
        _fail(_("no issue for %(week)s yet: run `hebdo digest plan --week %(week)s`", week=week))
    assert issue is not None
    return issue


week_option = click.option(
    "--week",
    help="ISO week, e.g. 2026-W48. Default: the issue being sent or paused, else this week's "
    "(next week's once this week's send time is more than a day past).",
)


# ---------------------------------------------------------------- feeds


@click.group("feeds", cls=AppGroup)
def feeds_group() -> None:
    """Article feeds (HEBDO_FEEDS)."""


@feeds_group.command("fetch")
def feeds_fetch() -> None:
    """Read every feed now; exit 1 if one of them failed."""
    reports = feeds.ingest_all(current_settings(), _now())
    for r in reports:
        if r.result == "error":
            click.echo(_("%(url)s: ERROR %(error)s", url=r.url, error=r.error))
        else:
            counts = ", ".join(
                (
                    ngettext("%(num)s new", "%(num)s new", r.created),
                    ngettext("%(num)s updated", "%(num)s updated", r.updated),
                    ngettext("%(num)s skipped", "%(num)s skipped", r.skipped),
                )
            )
            click.echo(f"{r.url}: {r.result}, {counts}")
        for problem in r.problems[:20]:
            click.echo(f"  {problem}")
    if not reports:
        click.echo(_("no feeds configured (HEBDO_FEEDS)"))
    if any(r.result == "error" for r in reports):
        sys.exit(1)


# ---------------------------------------------------------------- digest


@click.group("digest", cls=AppGroup)
def digest_group() -> None:
    """The weekly issue: plan, preview, test, send, follow."""


@digest_group.command("plan")
@week_option
def digest_plan(week: str | None) -> None:
    """Pick the week's articles (again, while the issue is a draft or scheduled)."""
    try:
        result = actions.plan(current_settings(), _week(week), _now(), Actor.cli())
    except Refused as exc:
        click.echo(
            _("%(week)s: already %(status)s, left as it is", week=exc.week, status=exc.status)
        )
        return
    issue = _issue(result.week)
    if result.articles == 0:
        click.echo(
            _(
                "%(week)s: no new articles since the previous issue; nothing to send",
                week=result.week,
            )
        )
        return
    click.echo(
        ngettext(
            "%(week)s: %(status)s, %(num)s article, %(when)s",
            "%(week)s: %(status)s, %(num)s articles, %(when)s",
            result.articles,
            week=result.week,
            status=result.status,
            when=_when(issue),
        )
    )


def _moment(when: datetime) -> str:
    local = when.astimezone(current_settings().timezone)
    if i18n.current_locale() != "en":
        return format_datetime(local, "EEE d MMM y HH:mm zzz", locale=i18n.current_locale())
    return f"{local:%a %d %b %Y %H:%M %Z}"


def _when(issue: Issue) -> str:
    moment = _moment(issue.send_at)
    if issue.send_at <= _now():
        return _("due since %(moment)s: send it with `hebdo digest send --now`", moment=moment)
    return _("goes out %(moment)s", moment=moment)


def _sample_recipient(email: str | None, locale: str | None) -> Recipient:
    try:
        return previews.sample_recipient(email, locale, _now())
    except InvalidEmail as exc:
        raise click.BadParameter(
            _("invalid address: %(code)s", code=exc.code), param_hint="--email"
        ) from None


@digest_group.command("preview")
@week_option
@click.option("--email", help="Render as this subscriber would get it (their locale and links).")
@click.option("--locale", type=click.Choice(["fr", "en"]), help="Force the locale.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE: .html the HTML part, .txt the text part, anything else the whole message.",
)
def digest_preview(
    week: str | None, email: str | None, locale: str | None, out: Path | None
) -> None:
    """The exact mail a subscriber gets (text part on stdout without --out)."""
    issue = _issue(_week(week))
    recipient = _sample_recipient(email, locale)
    mail = previews.preview(current_settings(), issue, recipient, _now())
    if out is None:
        click.echo(_part(mail, "plain"))
    elif out.suffix == ".html":
        out.write_text(_part(mail, "html"), encoding="utf-8")
    elif out.suffix == ".txt":
        out.write_text(_part(mail, "plain"), encoding="utf-8")
    else:
        out.write_bytes(mail.data)
    if out is not None:
        click.echo(_("written to %(path)s", path=out))


_part = previews.mail_part


@digest_group.command("test")
@week_option
@click.option("--to", "to", required=True, help="Address to send the test to.")
@click.option("--locale", type=click.Choice(["fr", "en"]), help="Force the locale.")
def digest_test(week: str | None, to: str, locale: str | None) -> None:
    """Send the issue to one address now, marked [TEST]; no delivery is recorded."""
    issue = _issue(_week(week))
    _sample_recipient(to, locale)  # a bad address is a usage error (exit 2), as --email's
    try:
        recipient, reply = actions.test(
            current_settings(), issue.week, to, locale, _now(), Actor.cli()
        )
    except (DeliveryError, previews.SuppressedAddress) as exc:
        _fail(_("test mail refused: %(error)s", error=exc))
        return
    click.echo(
        _(
            "test of %(week)s sent to %(to)s: %(reply)s",
            week=issue.week,
            to=recipient.email,
            reply=reply,
        )
    )


@digest_group.command("send")
@week_option
@click.option(
    "--now", "now_flag", is_flag=True, help="Send at once instead of at the scheduled time."
)
@click.option("--wait", is_flag=True, help="Follow the progress until the send ends.")
@click.option(
    "--yes", is_flag=True, help="With --now, send ahead of the scheduled time without asking."
)
def digest_send(week: str | None, now_flag: bool, wait: bool, yes: bool) -> None:
    """Approve the issue for its scheduled time, or with --now send it at once.

    Sending twice is harmless: an issue goes to each subscriber once.
    """
    week = _week(week)
    # --yes: the caller knows (a script, or an editor who read this once); say nothing more.
    ahead = _ahead_notice(week) if now_flag and not yes else None
    if ahead:
        click.echo(ahead)
        click.confirm(_("Send it now?"), abort=True)
    try:
        result = actions.send(
            current_settings(), week, _now(), enqueue_batch, Actor.cli(), at_once=now_flag
        )
    except Refused as exc:
        _fail(str(exc))
        return
    if result.approved:
        click.echo(_("%(week)s: approved", week=week))
    if result.status == IssueStatus.SCHEDULED:
        if not now_flag:
            click.echo(_("%(week)s: scheduled, %(when)s", week=week, when=_when(_issue(week))))
            return
        if result.recipients is not None:
            queued = ngettext(
                "%(num)s batch task queued", "%(num)s batch tasks queued", result.queued
            )
            click.echo(
                ngettext(
                    "%(week)s: sending to %(num)s subscriber (%(queued)s)",
                    "%(week)s: sending to %(num)s subscribers (%(queued)s)",
                    result.recipients,
                    week=week,
                    queued=queued,
                )
            )
            if result.recipients and not result.queued:
                click.echo(
                    _(
                        "hebdo: the broker is unreachable; the send is recorded and beat's "
                        "sweep queues it once the broker is back (or run this command again)"
                    ),
                    err=True,
                )
    else:
        click.echo(
            _("%(week)s: already %(status)s; nothing sent twice", week=week, status=result.status)
        )
    if wait:
        _follow(week)


def _ahead_notice(week: str) -> str | None:
    """What sending `week` now does to its scheduled send, when that is still ahead: it
    uses it up (a Saturday's "this week's" issue is next Monday's, which surprises)."""
    issue = get_issue(week)
    if issue is not None and issue.status not in (IssueStatus.DRAFT, IssueStatus.SCHEDULED):
        return None  # already going out or gone: `send` says so and sends nothing
    due = ahead_of_schedule(current_settings(), week, _now())
    if due is None:
        return None
    return _(
        "%(week)s is the issue of the week of %(monday)s, due %(moment)s. Sent now, it "
        "takes the place of that send: nothing more goes out then.",
        week=week,
        monday=i18n.format_date(i18n.current_locale(), week_start(week)),
        moment=_moment(due),
    )


def _follow(week: str) -> None:
    while True:
        db.session.expire_all()
        p = progress.progress(week, _now())
        click.echo(_progress_line(p))
        if p.status != IssueStatus.SENDING:
            return
        time.sleep(2)


def _progress_line(p: progress.Progress) -> str:
    c = p.counts
    line = _(
        "%(week)s %(status)s: %(done)s/%(recipients)s done (%(percent).1f %%), sent %(sent)s, "
        "queued %(queued)s, sending %(sending)s, failed %(failed)s, bounced %(bounced)s, "
        "skipped %(skipped)s",
        week=p.week,
        status=p.status,
        done=p.done,
        recipients=p.recipients,
        percent=p.percent,
        sent=c["sent"],
        queued=c["queued"],
        sending=c["sending"],
        failed=c["failed"],
        bounced=c["bounced"],
        skipped=c["skipped"],
    )
    if p.status != IssueStatus.SENDING:
        # A pace is news only while sending (a finished send of 3 mails is not "0.1 msg/s").
        return line
    last_minute = round(p.rate_last_minute * 60)
    if last_minute >= 60:
        pace = _("%(rate).0f msg/s over the last minute", rate=p.rate_last_minute)
    else:
        pace = ngettext(
            "%(num)s message sent over the last minute",
            "%(num)s messages sent over the last minute",
            last_minute,
        )
    return f"{line}; {pace}"


@digest_group.command("status")
@week_option
def digest_status(week: str | None) -> None:
    """Counts per delivery status, progress and rate."""
    week = _week(week)
    try:
        p = progress.progress(week, _now())
    except DigestError as exc:
        _fail(str(exc))
        return
    click.echo(_progress_line(p))
    if p.started_at:
        end = p.finished_at or _now()
        seconds = max((end - p.started_at).total_seconds(), 0.001)
        start = f"{p.started_at:%Y-%m-%d %H:%M:%S}"
        if p.counts["sent"]:
            # Three significant digits: a slow little send is 0.0333 msg/s, not "0.0".
            rate = f"{p.counts['sent'] / seconds:.3g}"
            click.echo(_("started %(start)s UTC, average %(rate)s msg/s", start=start, rate=rate))
        else:
            click.echo(_("started %(start)s UTC", start=start))
    if p.note:
        click.echo(_("note: %(note)s", note=p.note))


def _transition(name: str, week: str | None, change: str) -> None:
    week = _week(week)
    _issue(week)
    settings, moment, by = current_settings(), _now(), Actor.cli()
    try:
        if name == "resume":
            actions.resume(settings, week, moment, enqueue_batch, by)
        else:
            {"approve": actions.approve, "pause": actions.pause, "cancel": actions.cancel}[name](
                settings, week, moment, by
            )
    except Refused as exc:
        _fail(str(exc))
    click.echo(f"{week}: {change}")


@digest_group.command("approve")
@week_option
def digest_approve(week: str | None) -> None:
    """Review mode: let a draft go out at its scheduled time."""
    _transition("approve", week, _("approved, scheduled"))


@digest_group.command("pause")
@week_option
def digest_pause(week: str | None) -> None:
    """Stop sending after the batches in flight; resume picks up where it stopped."""
    _transition("pause", week, _("paused"))


@digest_group.command("resume")
@week_option
def digest_resume(week: str | None) -> None:
    """Carry on a paused send."""
    _transition("resume", week, _("sending again"))


@digest_group.command("cancel")
@week_option
def digest_cancel(week: str | None) -> None:
    """Stop an issue for good; whoever has not got it yet will not."""
    _transition("cancel", week, _("cancelled"))


COMMANDS = (feeds_group, digest_group)
