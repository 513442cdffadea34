"""Every status change of an issue, and nothing else: plan, approve, start, pause, resume,
cancel, expire, finish.

```
            plan            approve            start              finish
  (none) ───────▶ draft ─────────▶ scheduled ───────▶ sending ──────────▶ sent
                   │  ▲ replan        │  ▲ replan      │    ▲
                   │  └───────────────┘  │             pause│    │resume
                   │                     │             ▼    │
                   └──────── cancel ─────┴──────────▶ paused ──▶ cancelled
```
(A changed editor's note also takes a scheduled issue back to draft in review mode:
`unapprove`. `cancelled` is reached from every status but `sent`; a week without new articles is
planned straight to `cancelled`, and a draft nobody approved in time expires to it.)

Each change is one conditional UPDATE (`WHERE status IN (…allowed)`), so two workers, a
beat tick and a person acting at the same moment cannot both win: the loser gets False
and says so. This module decides nothing about when: `actions` (people and the weekly
clock), `planning` and `delivery` call it. Who did what is audited by `actions`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError

from service.extensions import db, rowcount
from service.models import Delivery, DeliveryStatus, Issue, IssueStatus

log = logging.getLogger(__name__)

# Statuses in which an issue may be (re)planned, as long as it never started going out.
PLANNABLE = (IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.CANCELLED)
CANCELLABLE = (IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.SENDING, IssueStatus.PAUSED)
# Deliveries still to go: queued, or claimed by a batch and not yet answered.
OPEN = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING)


def _change(issue_id: int, allowed: tuple[str, ...], **values: Any) -> bool:
    """Change an issue only from one of the `allowed` statuses; True when it changed.
    Not committed: the caller commits, with whatever else belongs to the change."""
    changed = db.session.execute(
        update(Issue).where(Issue.id == issue_id, Issue.status.in_(allowed)).values(**values)
    )
    return bool(rowcount(changed))


def _committed(changed: bool) -> bool:
    db.session.commit()
    return changed


def create(week: str, status: str, now: datetime, send_at: datetime) -> Issue | None:
    """The issue of `week`, new, in `status` (not committed); None when it was planned at
    the same moment elsewhere (another tick, worker or command), rolled back."""
    issue = Issue(week=week, subject="", status=status, planned_at=now, send_at=send_at)
    try:
        with db.session.begin_nested():
            db.session.add(issue)
    except IntegrityError:
        db.session.rollback()
        return None
    return issue


def replan(
    issue_id: int, status: str, now: datetime, send_at: datetime, subject: str, note: str | None
) -> bool:
    """A plannable issue that never started takes its new plan (not committed).

    Conditional on the issue still not started: a send that began since the caller looked
    (another tick, `digest send --now`) keeps the articles it started with. The UPDATE takes
    the row's write lock, so `start` waits for this transaction or wins it."""
    return bool(
        rowcount(
            db.session.execute(
                update(Issue)
                .where(
                    Issue.id == issue_id, Issue.started_at.is_(None), Issue.status.in_(PLANNABLE)
                )
                .values(status=status, planned_at=now, send_at=send_at, subject=subject, note=note)
                .execution_options(synchronize_session=False)
            )
        )
    )


def approve(issue_id: int, now: datetime) -> bool:
    """draft → scheduled (review mode); committed."""
    return _committed(
        _change(issue_id, (IssueStatus.DRAFT,), status=IssueStatus.SCHEDULED, approved_at=now)
    )


def unapprove(issue_id: int) -> bool:
    """scheduled → draft (review mode), while it has not started: what was approved changed
    (not committed: the change that calls for it commits)."""
    return bool(
        rowcount(
            db.session.execute(
                update(Issue)
                .where(
                    Issue.id == issue_id,
                    Issue.status == IssueStatus.SCHEDULED,
                    Issue.started_at.is_(None),
                )
                .values(status=IssueStatus.DRAFT, approved_at=None)
                .execution_options(synchronize_session=False)
            )
        )
    )


def start(issue_id: int, now: datetime) -> bool:
    """scheduled → sending (not committed: `delivery.start_send` snapshots the recipients in
    the same transaction, so an issue is never sending without its deliveries)."""
    return _change(
        issue_id,
        (IssueStatus.SCHEDULED,),
        status=IssueStatus.SENDING,
        started_at=now,
        progress_at=now,
    )


def pause(issue_id: int, note: str | None = None) -> bool:
    """sending → paused (committed): batch tasks stop claiming; the batches in flight finish.
    `note` says why when the sender paused it (a broken issue, a relay refusing us)."""
    values: dict[str, Any] = {"status": IssueStatus.PAUSED}
    if note is not None:
        values["note"] = note[:200]
    paused = _committed(_change(issue_id, (IssueStatus.SENDING,), **values))
    if paused and note is not None:
        log.error("issue %s paused: %s", issue_id, note)
    return paused


def resume(issue_id: int) -> bool:
    """paused → sending (committed); the caller dispatches the batches."""
    return _committed(_change(issue_id, (IssueStatus.PAUSED,), status=IssueStatus.SENDING))


def cancel(issue_id: int, now: datetime) -> bool:
    """Stop an issue for good (committed); deliveries not yet sent are marked skipped.

    Two transactions, the issue's first: a batch flushing its outcomes locks deliveries
    and then the issue, so holding the issue while locking deliveries could deadlock it.
    A batch that claimed rows before the cancel skips them itself (see delivery)."""
    if not _committed(
        _change(issue_id, CANCELLABLE, status=IssueStatus.CANCELLED, finished_at=now)
    ):
        return False
    db.session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.SKIPPED, last_error="issue cancelled")
    )
    db.session.commit()
    return True


def expire_drafts(before: datetime) -> list[str]:
    """Drafts due before `before` that nobody approved are cancelled (committed), so their
    articles go to the next issue; returns their weeks."""
    expired = (
        db.session.execute(
            update(Issue)
            .where(Issue.status == IssueStatus.DRAFT, Issue.send_at < before)
            .values(
                status=IssueStatus.CANCELLED,
                note="not approved in time; articles go to the next issue",
            )
            .returning(Issue.week)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    db.session.commit()
    for week in expired:
        log.warning(
            "issue %s was never approved: cancelled, its articles go to the next issue", week
        )
    return list(expired)


def status_counts(issue_id: int) -> dict[str, int]:
    """Deliveries of an issue per status, every status present (0 when none)."""
    counts = dict.fromkeys((s.value for s in DeliveryStatus), 0)
    rows = db.session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.issue_id == issue_id)
        .group_by(Delivery.status)
    )
    for status, count in rows:
        counts[status] = count
    return counts


def finish_if_done(issue_id: int, now: datetime) -> bool:
    """sending → sent once no delivery is queued or being sent (committed); the counters are
    then recounted from the rows, the truth (the running ones are kept per batch)."""
    open_rows = exists().where(Delivery.issue_id == issue_id, Delivery.status.in_(OPEN))
    done = db.session.execute(
        update(Issue)
        .where(Issue.id == issue_id, Issue.status == IssueStatus.SENDING, ~open_rows)
        .values(status=IssueStatus.SENT, finished_at=now)
    )
    if not rowcount(done):
        db.session.commit()
        return False
    counts = status_counts(issue_id)
    db.session.execute(
        update(Issue)
        .where(Issue.id == issue_id)
        .values(
            sent_count=counts["sent"],
            failed_count=counts["failed"],
            bounced_count=counts["bounced"],
        )
    )
    db.session.commit()
    log.info(
        "issue %s sent: %d sent, %d failed, %d bounced, %d skipped",
        issue_id,
        counts["sent"],
        counts["failed"],
        counts["bounced"],
        counts["skipped"],
    )
    return True
