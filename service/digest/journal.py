"""The send journal: which messages went out since a batch last wrote to the database.

A batch writes its outcomes to the database a few times per batch, not once per message
(see delivery: that is what makes a send fast). A worker killed between two writes used
to take with it the knowledge of which of its messages its SMTP server had already
accepted, and the sweep sent them all again: up to a batch per killed process.

The journal closes that window. Right after a message's final 250, before the worker
takes the next message, it writes one entry naming the delivery, without waiting for
an answer:

- **Redis** (the default when the broker is Redis, so every machine's workers share it):
  an `HSET` on a connection that asked for no replies (`CLIENT REPLY OFF`), so an entry
  is one `send()` system call and never a round trip, into a corked socket (the kernel
  sends full segments, or what it holds after 200 ms). Once the kernel has the bytes, a
  killed process does not stop them: with no reply ever pending, closing its socket
  sends what it holds instead of resetting the connection.
- **A file per batch** under `<HEBDO_DATA_DIR>/journal` (the embedded default), opened
  for appending and locked while its batch lives: an entry is one `write()` into the
  page cache, which outlives the process.

When rows come back from a lost worker (the sweep takes back an expired claim, or a
batch claims a row flagged uncertain), the journal is read first: the rows it names are
recorded as sent, with the time, Message-ID and reply the worker saw, not sent again.
So a SIGKILL duplicates at most the one message whose 250 the process was holding.

Entries are dropped once the database has the batch's outcomes (`HDEL`; the batch's
file is deleted), so the journal holds about one batch per worker process, whatever
the size of the issue. What it cannot cover is said in docs/delivery.md: a Redis
restart or a machine crash loses the entries of the moment; rows of a worker that
died just before are then sent again, as without a journal (at most a batch each).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import redis
from redis.connection import ConnectionInterface

from service.config import Settings

log = logging.getLogger(__name__)

# Entries outlive their issue's send by this much at most (they are normally dropped after
# each batch's write); a key left behind by an issue that stopped for good then goes.
KEY_SECONDS = 7 * 24 * 3600
# After a failed write, Redis is not tried again for this long; meanwhile the batch writes
# each outcome to the database itself (see delivery.send_batch).
RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class Entry:
    """What the worker knew of a message its server accepted."""

    sent_at: datetime
    message_id: str
    reply: str

    def encode(self) -> str:
        reply = " ".join(self.reply.split())[:200]
        return f"{self.sent_at.timestamp():.6f}\t{self.message_id}\t{reply}"

    @classmethod
    def decode(cls, value: str) -> Entry | None:
        try:
            stamp, message_id, reply = value.split("\t", 2)
            return cls(datetime.fromtimestamp(float(stamp), UTC), message_id, reply)
        except ValueError:
            return None  # a torn or foreign line: as if absent (the row is sent again)


class BatchJournal(Protocol):
    """One batch's side of the journal, open while the batch sends."""

    def sent(self, delivery_id: int, entry: Entry) -> bool:
        """Note that this delivery went out; False when it could not be noted (the caller
        then writes the outcome to the database before it sends anything else)."""

    def recorded(self, delivery_ids: Iterable[int]) -> None:
        """The database now has these deliveries' outcomes: their entries may go."""

    def close(self, *, recorded: bool) -> None:
        """The batch is over: its outcomes are written (`recorded`), or they could not be and
        its entries stay for the sweep."""


class Journal(Protocol):
    enabled: bool

    def batch(self, issue_id: int) -> BatchJournal: ...

    def read(self, issue_id: int, delivery_ids: Iterable[int]) -> dict[int, Entry]:
        """The entries of these deliveries of an issue."""

    def forget(self, issue_id: int, delivery_ids: Iterable[int]) -> None:
        """Drop entries whose rows have been recorded from them."""

    def drop(self, issue_id: int) -> None:
        """Drop an issue's whole journal: it is sent, every row has its outcome."""


# ---------------------------------------------------------------- none


class _NoBatch:
    def sent(self, delivery_id: int, entry: Entry) -> bool:
        return True

    def recorded(self, delivery_ids: Iterable[int]) -> None:
        return None

    def close(self, *, recorded: bool) -> None:
        return None


class NoJournal:
    """HEBDO_SEND_JOURNAL=off: a killed worker's unrecorded messages are sent again."""

    enabled = False

    def batch(self, issue_id: int) -> BatchJournal:
        return _NoBatch()

    def read(self, issue_id: int, delivery_ids: Iterable[int]) -> dict[int, Entry]:
        return {}

    def forget(self, issue_id: int, delivery_ids: Iterable[int]) -> None:
        return None

    def drop(self, issue_id: int) -> None:
        return None


# ---------------------------------------------------------------- Redis


def _key(issue_id: int) -> str:
    return f"hebdo:journal:{issue_id}"


_TCP_CORK: int = getattr(socket, "TCP_CORK", 0)


def _cork(writer: ConnectionInterface | None) -> None:
    """Send what the writer's socket holds now, and let the kernel gather what follows into
    full segments (TCP_CORK, Linux: uncorking pushes, corking again gathers) instead of
    sending each entry at once. Called when the connection opens and at each database
    write of a batch (`RedisJournal.push`).

    An entry must have left the process before the next message goes, and it has once
    `send()` returns: it is in the kernel's socket buffer, which the kernel still delivers
    when the process is killed (closing a socket sends what it holds before the FIN), or
    after 200 ms at most while it lives. So a SIGKILL duplicates no more than before. The
    cost is what changes: sent at once, each entry ran loopback TCP and woke Redis inside
    the worker's system call, 22-25 µs of CPU per message (measured, a tenth of a message's
    cost); corked, a write is a copy into the buffer, 4-5 µs. What it widens is the window
    of a crash of the worker's machine, or of its Redis connection cut, to the entries of
    the last 200 ms (docs/delivery.md). Pushed at the batch's database writes, nothing
    written after them (an issue's journal dropped by another connection) can overtake them.
    """
    sock = getattr(writer, "_sock", None)
    if _TCP_CORK and isinstance(sock, socket.socket) and sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)


class RedisJournal:
    """Entries in one Redis hash per issue (delivery id → entry), written without replies.

    One connection per process is kept for writing; reads (rare: the sweep, a suspect
    row) use an ordinary client. Not thread-safe: a Celery prefork process sends one
    batch at a time.
    """

    enabled = True

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._writer: ConnectionInterface | None = None
        self.down_until = 0.0

    def _connection(self) -> ConnectionInterface | None:
        if self._writer is not None:
            return self._writer
        if time.monotonic() < self.down_until:
            return None
        try:
            writer = self.client.connection_pool.make_connection()
            writer.connect()
            # Nothing is ever read on this connection from here on: no reply to wait for,
            # none left unread when the process dies.
            writer.send_command("CLIENT", "REPLY", "OFF", check_health=False)
            _cork(writer)
        except (redis.RedisError, OSError) as exc:
            self._fail(exc)
            return None
        self._writer = writer
        return writer

    def _fail(self, exc: Exception) -> None:
        log.warning(
            "send journal: Redis unavailable (%s); outcomes written to the database one "
            "by one for %.0f s",
            type(exc).__name__,
            RETRY_SECONDS,
        )
        if self._writer is not None:
            self._writer.disconnect()
        self._writer = None
        self.down_until = time.monotonic() + RETRY_SECONDS

    def push(self) -> None:
        """Send the entries written so far now (see _cork)."""
        try:
            _cork(self._writer)
        except OSError as exc:
            self._fail(exc)

    def _send(self, *args: str | int) -> bool:
        return self._send_packed(_packed(*(str(a).encode() for a in args)))

    def _send_packed(self, command: bytes) -> bool:
        writer = self._connection()
        if writer is None:
            return False
        try:
            writer.send_packed_command([command], check_health=False)
        except (redis.RedisError, OSError) as exc:
            self._fail(exc)
            return False
        return True

    def batch(self, issue_id: int) -> BatchJournal:
        return _RedisBatch(self, _key(issue_id))

    def read(self, issue_id: int, delivery_ids: Iterable[int]) -> dict[int, Entry]:
        ids = list(delivery_ids)
        if not ids:
            return {}
        found: dict[int, Entry] = {}
        for chunk in _chunks(ids, 1000):
            values = self.client.hmget(_key(issue_id), chunk)
            for delivery_id, value in zip(chunk, values, strict=True):
                text = value.decode() if isinstance(value, bytes) else value
                if text is not None and (entry := Entry.decode(text)):
                    found[delivery_id] = entry
        return found

    def forget(self, issue_id: int, delivery_ids: Iterable[int]) -> None:
        for chunk in _chunks(list(delivery_ids), 1000):
            self.client.hdel(_key(issue_id), *chunk)

    def drop(self, issue_id: int) -> None:
        self.client.delete(_key(issue_id))


class _RedisBatch:
    def __init__(self, journal: RedisJournal, key: str) -> None:
        self.journal = journal
        self.key = key
        self.expiring = False
        # HSET <key> packed once: a message's entry only adds its two fields.
        self._hset = _packed(b"HSET", key.encode()).replace(b"*2", b"*4", 1)

    def sent(self, delivery_id: int, entry: Entry) -> bool:
        field, value = str(delivery_id).encode(), entry.encode().encode()
        command = b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            self._hset,
            len(field),
            field,
            len(value),
            value,
        )
        if not self.journal._send_packed(command):
            return False
        if not self.expiring:
            # Once per batch, after the key exists (EXPIRE on a missing key does nothing).
            self.expiring = self.journal._send("EXPIRE", self.key, KEY_SECONDS)
        return True

    def recorded(self, delivery_ids: Iterable[int]) -> None:
        ids = list(delivery_ids)
        if ids:
            self.journal._send("HDEL", self.key, *ids)
        self.journal.push()

    def close(self, *, recorded: bool) -> None:
        self.journal.push()


# ---------------------------------------------------------------- files


_serial = itertools.count()


class FileJournal:
    """One append-only file per batch, `<folder>/<issue>.<host>.<pid>.<n>.log`, locked
    (flock) while its batch lives; a file nobody holds belongs to a batch that is over."""

    enabled = True

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def batch(self, issue_id: int) -> BatchJournal:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{issue_id}.{socket.gethostname()}.{os.getpid()}.{next(_serial)}.log"
        path = self.folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _FileBatch(path, fd)

    def _files(self, issue_id: int) -> Iterator[Path]:
        yield from self.folder.glob(f"{issue_id}.*.log")

    def read(self, issue_id: int, delivery_ids: Iterable[int]) -> dict[int, Entry]:
        wanted = set(delivery_ids)
        found: dict[int, Entry] = {}
        if not wanted:
            return found
        for path in self._files(issue_id):
            for delivery_id, entry in _entries(path).items():
                if delivery_id in wanted:
                    found[delivery_id] = entry
        return found

    def forget(self, issue_id: int, delivery_ids: Iterable[int]) -> None:
        """Delete the files of batches that are over (nobody holds their lock) and whose
        every entry is among `delivery_ids`, the rows just recorded from them. A live
        batch's file stays until its batch ends, and so does a dead batch's whose rows
        the sweep has not taken back yet (their claims expire a moment later): deleting
        it would send them again."""
        recorded = set(delivery_ids)
        self._delete_over(issue_id, lambda path: set(_entries(path)) <= recorded)

    def drop(self, issue_id: int) -> None:
        self._delete_over(issue_id, lambda path: True)

    def _delete_over(self, issue_id: int, deletable: Callable[[Path], bool]) -> None:
        for path in self._files(issue_id):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            else:
                if deletable(path):
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)


def _entries(path: Path) -> dict[int, Entry]:
    """A batch file's entries by delivery id ({} once its batch ended and deleted it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}  # its batch ended meanwhile: its outcomes are in the database
    found: dict[int, Entry] = {}
    # A line without its newline is being written (or was cut by a crash): skipped.
    for line in data.decode(errors="replace").split("\n")[:-1]:
        head, _, rest = line.partition("\t")
        if head.isdigit() and (entry := Entry.decode(rest)):
            found[int(head)] = entry
    return found


class _FileBatch:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def sent(self, delivery_id: int, entry: Entry) -> bool:
        if self.fd is None:
            return False
        try:
            os.write(self.fd, f"{delivery_id}\t{entry.encode()}\n".encode())
        except OSError as exc:  # a full disk: the caller writes to the database instead
            log.warning("send journal: cannot write %s (%s)", self.path, exc)
            return False
        return True

    def recorded(self, delivery_ids: Iterable[int]) -> None:
        return None  # the whole file goes when the batch is over

    def close(self, *, recorded: bool) -> None:
        if self.fd is None:
            return
        if recorded:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # releases the lock: the sweep may read and delete what is left
        self.fd = None


def _packed(*parts: bytes) -> bytes:
    """A command in RESP, Redis's wire format (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- choosing


_journals: dict[tuple[str, str], Journal] = {}


def reset(*, close: bool = True) -> None:
    """Forget this process's journals, closing their Redis connections (between tests). A
    forked child passes `close=False`: the sockets it inherited are still its parent's."""
    for journal in _journals.values():
        if close and isinstance(journal, RedisJournal):
            if journal._writer is not None:
                journal._writer.disconnect()
            journal.client.close()
    _journals.clear()


def send_journal(settings: Settings) -> Journal:
    """The journal HEBDO_SEND_JOURNAL names, one per process and setting (a Redis journal
    keeps its writing connection between batches)."""
    where = settings.send_journal
    key = (where, str(settings.data_dir))
    journal = _journals.get(key)
    if journal is None:
        if where == "off":
            journal = NoJournal()
        elif where == "file":
            journal = FileJournal(settings.data_dir / "journal")
        else:
            journal = RedisJournal(where)
        _journals[key] = journal
    return journal
