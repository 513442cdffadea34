"""kombu's file-system transport (the embedded default's broker), made safe to kill.

kombu writes a message by creating its file under its final name and then writing into
it; a consumer takes any file with that name, renames it away and parses it, without the
writer's lock. A consumer that comes between the two steps reads an empty file, and a
producer killed between them (`kill -9` of a worker or beat while it queues a task) leaves
one behind for good: either way kombu raises a JSONDecodeError inside the worker's
consumer loop, which Celery treats as unrecoverable, and the worker stops (seen in
tests/test_exactly_once.py). Here a message is written under a temporary name and renamed
into place once complete (rename is atomic within a folder), and a file that cannot be read
as a message is logged and dropped: the database, not the broker, says what is left to
send, and the sweep queues it again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Not a name a consumer takes (that must end in ".<queue>.msg").
        partial = os.path.join(self.data_folder_out, f".{name}.part")
        try:
            with open(partial, "wb", buffering=0) as f:
                f.write(dumps(payload).encode())
            os.rename(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """kombu's, but a file that is not a whole message is dropped, not raised."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(tempfile.gettempdir(), name)
            try:
                # Whoever renames it first has it.
                shutil.move(os.path.join(self.data_folder_in, name), taken)
            except OSError:
                continue
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
                os.remove(taken)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            try:
                return loads(payload.decode())
            except ValueError:
                log.warning(
                    "broker: dropped %s, not a whole message (%d bytes): its producer "
                    "died while writing it; the sweep queues the work again",
                    name,
                    len(payload),
                )
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
