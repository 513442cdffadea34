"""The embedded broker (kombu's file-system transport as service.filebroker writes and reads
it): a message file is never seen half written, and one left torn by a killed producer is
dropped instead of stopping the worker that reads it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service import create_app

# The embedded broker itself: the same on either backend run.
pytestmark = pytest.mark.backend_neutral


def channel(tmp_path: Path):  # type: ignore[no-untyped-def]
    app = create_app(
        {
            "HEBDO_ENV": "test",
            "HEBDO_DATA_DIR": str(tmp_path),
            "HEBDO_SECRET_KEY": "k" * 40,
            # The embedded broker whatever the run's HEBDO_BROKER_URL.
            "HEBDO_BROKER_URL": "filesystem://",
        }
    )
    connection = app.extensions["celery"].connection_for_write()
    return connection, connection.default_channel, Path(app.config["SETTINGS"].broker_folders[0])


def test_a_torn_message_file_is_dropped_and_the_next_one_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    connection, chan, queue = channel(tmp_path)
    chan._put("mail", {"body": "first"})
    # What a producer killed between creating the file and writing it leaves (kombu's own
    # transport wrote messages that way), sorted before the real one (whose name starts
    # with the monotonic clock in ms, never with a 0).
    (queue / "0_torn.mail.msg").write_bytes(b"")
    (queue / "00_half.mail.msg").write_bytes(b'{"body": "cut')
    with caplog.at_level(logging.WARNING, logger="service.filebroker"):
        assert chan._get("mail") == {"body": "first"}
    assert sum("not a whole message" in r.getMessage() for r in caplog.records) == 2
    assert list(queue.iterdir()) == []
    connection.release()


def test_a_message_appears_only_once_whole(tmp_path: Path) -> None:
    connection, chan, queue = channel(tmp_path)
    chan._put("mail", {"body": "x" * 100_000})
    (name,) = [p.name for p in queue.iterdir()]
    assert name.endswith(".mail.msg") and not name.startswith(".")
    assert chan._get("mail") == {"body": "x" * 100_000}
    connection.release()
