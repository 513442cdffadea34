"""The send journal: a worker that dies mid-batch leaves behind which of its messages went
out, and the sweep records those as sent instead of sending them again.

The death here is real (a forked process ends with os._exit right after its server said
250 to a message, before it could note it: no `finally`, no flush), the SMTP server is
aiosmtpd on loopback, the journal a real file or Redis. tests/test_exactly_once.py does
the same with Celery workers and SIGKILL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, func, select

from service import create_app
from service.config import Settings
from service.digest import delivery, journal
from service.digest.journal import Entry, FileJournal, RedisJournal, send_journal
from service.extensions import db
from service.mail.message import Outgoing
from service.mail.smtp import SMTPTransport
from service.models import Delivery, DeliveryStatus
from tests.support.data import add_article, add_subscribers
from tests.support.sending import NOW, Sender
from tests.support.settings import BROKER_URL
from tests.support.smtp import SMTPSink, free_port

KINDS = ["file", "off"] + (["redis"] if BROKER_URL.startswith("redis") else [])


def started(app: Flask, readers: int) -> Sender:
    add_article(app, 1, NOW - timedelta(days=1))
    add_subscribers(app, readers)
    sender = Sender(app)
    sender.start()
    sender.queue.clear()
    return sender


def die_after(values: dict[str, str], issue_id: int, accepted: int) -> int:
    """In a forked process: claim a batch, send it, and die the moment the server has
    accepted the `accepted`-th message, before the process can note it anywhere. Returns
    the child's exit status."""
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    try:
        journal.reset(close=False)
        app = create_app(values)
        with app.app_context():
            db.engine.dispose(close=False)
            settings = app.config["SETTINGS"]
            sent = 0

            class Dying(SMTPTransport):
                def send(self, mail: Outgoing, **options: Any) -> str:
                    nonlocal sent
                    reply = super().send(mail, **options)
                    sent += 1
                    if sent == accepted:
                        os._exit(9)  # killed holding this message's 250
                    return reply

            with Dying(settings) as transport:
                delivery.send_batch(settings, issue_id, transport=transport, clock=lambda: NOW)
    finally:
        os._exit(1)  # never back into pytest


def counting(settings: Settings, engine: Engine, seen: list[int]) -> SMTPTransport:
    """A transport that notes, before each message, how many deliveries the database says
    are sent (read by another connection, as the sweep of another process would)."""

    class Counting(SMTPTransport):
        def send(self, mail: Outgoing, **options: Any) -> str:
            with engine.connect() as conn:
                sent = select(func.count()).where(Delivery.status == DeliveryStatus.SENT)
                seen.append(conn.execute(sent).scalar_one())
            return super().send(mail, **options)

    return Counting(settings)


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_killed_mid_batch_sends_again_only_the_message_it_was_holding(
    kind: str,
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
) -> None:
    where = BROKER_URL if kind == "redis" else kind
    values = {**smtp_env, "HEBDO_SEND_JOURNAL": where, "HEBDO_CLAIM_TIMEOUT_SECONDS": "60"}
    app = make_app(values)
    sender = started(app, 6)
    issue_id = sender.issue().id
    assert die_after(values, issue_id, accepted=3) == 9
    first = [m.rcpt_tos[0] for m in smtp_server.messages]
    assert len(first) == 3
    # The claims expire; the sweep takes the rows back, reading the journal first.
    sender.sweep(NOW + timedelta(seconds=61))
    rows = sender.deliveries()
    if kind != "off":
        # The two messages noted before the death are recorded as sent, with the
        # Message-ID the server got (what a bounce or a complaint is matched by).
        recovered = {email: row for email, row in rows.items() if row.status == "sent"}
        assert sorted(recovered) == sorted(first[:2])
        for message in smtp_server.messages[:2]:
            row = recovered[message.rcpt_tos[0]]
            assert f"Message-ID: {row.message_id}".encode() in message.data
            assert row.smtp_response and row.smtp_response.startswith("250")
            assert row.sent_at == NOW
        assert sender.issue().sent_count == 2
    sender.run(NOW + timedelta(seconds=61))
    received = smtp_server.per_recipient()
    assert set(received) == {f"reader{n}@exemple.fr" for n in range(6)}
    twice = sorted(email for email, n in received.items() if n > 1)
    if kind == "off":
        assert twice == sorted(first)  # all three it had sent go out again
    else:
        assert twice == [first[2]]  # only the one whose 250 it was holding
    issue = sender.issue()
    assert issue.status == "sent" and issue.sent_count == 6
    if kind == "file":
        assert list((Path(values["HEBDO_DATA_DIR"]) / "journal").iterdir()) == []


def test_with_the_journal_away_each_outcome_reaches_the_database_before_the_next_message(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
) -> None:
    app = make_app(smtp_env)
    sender = started(app, 5)
    issue_id = sender.issue().id
    away = RedisJournal(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    engine = create_engine(smtp_env["HEBDO_DATABASE_URL"])
    seen: list[int] = []
    with app.app_context(), counting(sender.settings, engine, seen) as transport:
        report = delivery.send_batch(
            sender.settings, issue_id, transport=transport, clock=lambda: NOW, journal=away
        )
    engine.dispose()
    assert report.sent == 5
    assert seen == [0, 1, 2, 3, 4]  # each message's outcome committed before the next left
    assert sender.issue().sent_count == 5


def test_with_the_journal_working_outcomes_are_written_per_batch(
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
) -> None:
    """The journal is what lets the database be written once per batch, not per message."""
    app = make_app({**smtp_env, "HEBDO_SEND_JOURNAL": "file"})
    sender = started(app, 5)
    engine = create_engine(smtp_env["HEBDO_DATABASE_URL"])
    seen: list[int] = []
    with app.app_context(), counting(sender.settings, engine, seen) as transport:
        delivery.send_batch(
            sender.settings, sender.issue().id, transport=transport, clock=lambda: NOW
        )
    engine.dispose()
    assert seen == [0, 0, 0, 0, 0]
    assert sender.issue().sent_count == 5


def test_a_file_journal_skips_a_torn_line_and_keeps_a_live_batchs_file(tmp_path: Path) -> None:
    files = FileJournal(tmp_path)
    entry = Entry(datetime(2026, 12, 6, 8, 0, tzinfo=UTC), "<1@news.example.fr>", "250 2.0.0\r\nOk")
    live = files.batch(7)
    assert live.sent(1, entry) and live.sent(2, entry)
    (path,) = tmp_path.iterdir()
    with path.open("ab") as torn:
        torn.write(b"3\t1765008000.0\t<3@news")  # cut by a crash mid-line
    found = files.read(7, [1, 2, 3, 4])
    assert sorted(found) == [1, 2]
    assert found[1] == Entry(entry.sent_at, entry.message_id, "250 2.0.0 Ok")
    assert files.read(8, [1]) == {}  # another issue's rows
    files.forget(7, [1, 2])
    assert path.exists()  # its batch still holds it
    live.close(recorded=False)  # the batch ends without writing its outcomes
    assert sorted(files.read(7, [1, 2])) == [1, 2]  # still there for the sweep
    files.forget(7, [1, 2])
    assert not path.exists()
    done = files.batch(7)
    done.sent(5, entry)
    done.close(recorded=True)
    assert list(tmp_path.iterdir()) == []


def test_a_file_journal_keeps_a_dead_batchs_file_until_its_own_rows_are_taken_back(
    tmp_path: Path,
) -> None:
    """Two batches killed together: the sweep takes back the first one's rows (the other's
    claims expire a moment later). Dropping every dead file then would lose what the second
    one had sent, and send it again (seen in the SIGKILL test: 21 duplicates)."""
    files = FileJournal(tmp_path)
    entry = Entry(datetime(2026, 12, 6, 9, 0, tzinfo=UTC), "<1@news.example.fr>", "250 ok")
    first, second = files.batch(7), files.batch(7)
    for delivery_id in (1, 2):
        assert first.sent(delivery_id, entry)
    for delivery_id in (11, 12):
        assert second.sent(delivery_id, entry)
    first.close(recorded=False)
    second.close(recorded=False)  # both killed before writing their outcomes
    assert sorted(files.read(7, [1, 2, 3])) == [1, 2]  # the first batch's rows, swept
    files.forget(7, [1, 2])
    assert sorted(files.read(7, [11, 12, 13])) == [11, 12]  # still there for the next sweep
    files.forget(7, [11, 12])
    assert list(tmp_path.iterdir()) == []
    third = files.batch(7)
    third.sent(21, entry)
    third.close(recorded=False)
    files.drop(7)  # the issue is sent: whatever is left goes
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not BROKER_URL.startswith("redis"), reason="needs HEBDO_BROKER_URL (Redis)")
def test_a_redis_journal_drops_what_the_database_has(env: dict[str, str]) -> None:
    settings = create_app({**env, "HEBDO_SEND_JOURNAL": BROKER_URL}).config["SETTINGS"]
    redis_journal = send_journal(settings)
    assert isinstance(redis_journal, RedisJournal)
    entry = Entry(datetime(2026, 12, 6, 8, 0, tzinfo=UTC), "<1@news.example.fr>", "250 ok")
    batch = redis_journal.batch(3)
    for delivery_id in range(1, 6):
        assert batch.sent(delivery_id, entry)
    batch.recorded([1, 2, 3])
    assert sorted(redis_journal.read(3, range(1, 6))) == [4, 5]  # read after the writes
    # Left behind by an issue that stopped for good, the entries go by themselves.
    assert 0 < redis_journal.client.ttl("hebdo:journal:3") <= journal.KEY_SECONDS
    redis_journal.forget(3, [4, 5])
    assert redis_journal.read(3, range(1, 6)) == {}
    assert not redis_journal.client.exists("hebdo:journal:3")


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "off"])
def test_an_issue_sent_leaves_no_journal_behind(
    kind: str,
    make_app: Callable[[dict[str, str]], Flask],
    smtp_env: dict[str, str],
    smtp_server: SMTPSink,
) -> None:
    """Entries a worker could not drop (killed between its batch's write and their
    removal) name rows the database has: once the issue is sent, its journal goes."""
    where = BROKER_URL if kind == "redis" else kind
    values = {**smtp_env, "HEBDO_SEND_JOURNAL": where}
    app = make_app(values)
    sender = started(app, 4)
    issue_id = sender.issue().id
    with app.app_context():
        dead = send_journal(sender.settings)
        left = dead.batch(issue_id)
        # What a dead worker left: an entry for a row it had recorded (an id none of this
        # send's batches write or drop, so only the end of the issue removes it).
        stray = max(row.id for row in sender.deliveries().values()) + 1
        assert left.sent(stray, Entry(NOW, "<stray@news.example.fr>", "250 ok"))
        left.close(recorded=False)
        assert stray in dead.read(issue_id, [stray])
    sender.queue = [issue_id]
    sender.run()
    assert sender.issue().status == "sent" and len(smtp_server.messages) == 4
    with app.app_context():
        assert send_journal(sender.settings).read(issue_id, [stray]) == {}
    if kind == "file":
        assert list((Path(values["HEBDO_DATA_DIR"]) / "journal").iterdir()) == []
    else:
        assert not RedisJournal(BROKER_URL).client.exists(f"hebdo:journal:{issue_id}")
