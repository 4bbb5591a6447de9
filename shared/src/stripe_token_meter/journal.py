"""Per-process append-only journal: a record is in the kernel before `record()` returns.

Each meter appends every record to a segment file of its own with one `os.write`. Once
that returns, the bytes are in the OS page cache and outlive any death of the process
(SIGTERM with the default handler, `os._exit`, kill -9, a crashed worker); only the machine
losing power before the OS writes them back can lose the last moments. The worker moves
frames into the outbox, committing how far it read in the same transaction, and deletes a
segment once it is all in. Each segment is `flock`ed by its writer for its whole life, so
a segment nobody holds belongs to a process that is gone: whichever process looks next
takes it over (see `take_orphans`).

A frame is `magic, length, crc32` then the payload: a torn or zeroed tail (power loss, a
full disk) is told apart from a record and never read as one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

SUFFIX: Final = ".jnl"
MAGIC: Final = 0x5AA5
_HEAD: Final = struct.Struct("<HII")
HEAD_SIZE: Final = _HEAD.size
_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from
_crc = zlib.crc32
MAX_FRAME: Final = 16 * 1024 * 1024
"""A length above this is not a record's (records are a few hundred bytes): corruption."""
ROTATE_BYTES: Final = 8 * 1024 * 1024
"""A segment fully moved into the outbox is replaced by a fresh one past this size, so
reading stays cheap and disk use bounded by what is not yet in the outbox."""


def journal_dir(outbox_path: str) -> str | None:
    """Where an outbox's journals live (`<outbox>.journal/`); None for `:memory:`."""
    if outbox_path == ":memory:":
        return None
    return outbox_path + ".journal"


_LENGTH: Final = 0x7FFFFFFF
PICKLED: Final = 0x80000000
"""Set in a frame's length word when its payload is a pickle rather than marshal data."""


def frame(payload: bytes, flags: int = 0) -> bytes:
    """One journal frame around an encoded record."""
    return _pack_head(MAGIC, len(payload) | flags, _crc(payload)) + payload


@dataclass
class Segment:
    """One journal file and the descriptor holding its lock."""

    path: str
    fd: int
    name: str = field(init=False)
    size: int = 0
    """Bytes written (own segments) or found (taken-over ones)."""

    def __post_init__(self) -> None:
        self.name = os.path.basename(self.path)

    def read(
        self, offset: int, max_bytes: int = 1 << 20, max_frames: int = 1 << 30
    ) -> tuple[list[tuple[int, bytes, bool]], int]:
        """Frames from `offset`: ([(end offset, payload, pickled)], bytes skipped as corrupt).

        Stops at an incomplete frame at the end (a write still under way, or a torn tail:
        the caller decides which). Corrupt bytes in between are skipped up to the next
        valid frame and counted.
        """
        data = os.pread(self.fd, max_bytes, offset)
        out: list[tuple[int, bytes, bool]] = []
        pos = 0
        skipped = 0
        end = len(data)
        while end - pos >= HEAD_SIZE and len(out) < max_frames:
            magic, word, crc = _unpack_head(data, pos)
            length = word & _LENGTH
            if magic == MAGIC and length <= MAX_FRAME:
                stop = pos + HEAD_SIZE + length
                if stop > end:
                    if length > max_bytes - HEAD_SIZE:  # larger than a read: read it whole
                        big = os.pread(self.fd, HEAD_SIZE + length, offset + pos)
                        if len(big) == HEAD_SIZE + length and _crc(big[HEAD_SIZE:]) == crc:
                            out.append((offset + pos + len(big), big[HEAD_SIZE:], word > length))
                            pos += len(big)
                            continue
                    break  # incomplete: more may come
                payload = data[pos + HEAD_SIZE : stop]
                if _crc(payload) == crc:
                    out.append((offset + stop, payload, word > length))
                    pos = stop
                    continue
            # Not a frame here: resynchronise at the next magic.
            nxt = data.find(b"\xa5\x5a", pos + 1)
            if nxt < 0:
                nxt = max(pos + 1, end - HEAD_SIZE + 1)
            skipped += nxt - pos
            pos = nxt
        return out, skipped

    def tail_after(self, offset: int) -> int:
        """Bytes in the file past `offset` (a retired segment's unreadable tail)."""
        return max(0, os.fstat(self.fd).st_size - offset)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)  # releases the flock
            finally:
                self.fd = -1


class JournalWriter:
    """Appends frames to this process's active segment; the worker rotates it.

    One lock serialises writers with rotation and close, so a descriptor is never used
    after it was swapped out (a stale fd number could name another file by then).
    """

    def __init__(self, directory: str, header: bytes = b"") -> None:
        self.directory = directory
        self.header = header
        """The frame every new segment starts with (the writer's settings)."""
        self._lock = threading.Lock()
        self._fd = -1
        self.active: Segment | None = None
        self.retired: list[Segment] = []
        """Segments swapped out and not yet fully in the outbox (worker-side list)."""
        self.written = 0
        """Frames appended by this process (all segments)."""
        self.error: OSError | None = None
        """The last failure to append, until an append succeeds again."""
        self.closed = False

    def append(self, data: bytes) -> bool:
        """One frame in the page cache, or False (disk full, unwritable...: see `error`)."""
        with self._lock:
            fd = self._fd
            if fd < 0:
                if self.closed or not self._open():
                    return False
                fd = self._fd
            active = self.active
            assert active is not None
            try:
                n = os.write(fd, data)
            except OSError as exc:
                self.error = exc
                return False
            if n != len(data):  # a short write (disk full): take the torn frame back
                self.error = OSError(errno.ENOSPC, "short write to the journal")
                try:
                    os.ftruncate(fd, active.size)
                except OSError:
                    self._swap(None)  # cannot undo: never append after a torn frame
                return False
            active.size += n
            self.written += 1
            self.error = None
            return True

    def _open(self) -> bool:
        """A fresh segment (under the lock). Failing is reported via `error`."""
        try:
            segment = create_segment(self.directory)
        except OSError as exc:
            self.error = exc
            return False
        if self.header:
            try:
                n = os.write(segment.fd, self.header)
            except OSError as exc:
                n, self.error = -1, exc
            if n != len(self.header):  # a segment without its settings is never used
                with contextlib.suppress(OSError):
                    os.unlink(segment.path)
                segment.close()
                if n >= 0:
                    self.error = OSError(errno.ENOSPC, "short write to the journal")
                return False
            segment.size = n
        self._swap(segment)
        return True

    def _swap(self, segment: Segment | None) -> None:
        if self.active is not None:
            self.retired.append(self.active)
        self.active = segment
        self._fd = segment.fd if segment is not None else -1

    def rotate(self) -> None:
        """Retire the active segment; the next append opens a new one (worker side)."""
        with self._lock:
            if self.active is not None:
                self._swap(None)

    def detach(self) -> None:
        """No more appends (close or fork): later records take the caller's other path."""
        with self._lock:
            self.closed = True
            self._swap(None)

    def segments(self) -> list[Segment]:
        """Retired segments, then the active one: the order records were written in."""
        with self._lock:
            active = self.active
            out = list(self.retired)
        if active is not None:
            out.append(active)
        return out

    def drop_retired(self, segment: Segment) -> None:
        with self._lock:
            if segment in self.retired:
                self.retired.remove(segment)

    def forget_in_child(self) -> None:
        """After fork: the parent's segments and lock are the parent's. Our copies of its
        descriptors are closed (the parent keeps its flock; nothing is deleted here)."""
        self._lock = threading.Lock()
        for seg in [*self.retired, *([self.active] if self.active else [])]:
            seg.close()
        self.retired = []
        self.active = None
        self._fd = -1
        self.written = 0
        self.error = None


def create_segment(directory: str) -> Segment:
    """A new private segment, locked by this process for as long as it is open."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = f"{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}"
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    # Read through the same open file: its own descriptor for pread would be a second
    # open file description, and closing it could never drop this one's lock anyway.
    return Segment(path, fd)


def take_orphans(directory: str, skip: set[str]) -> Iterator[Segment]:
    """Segments whose writer is gone, each locked by us while the caller ingests it.

    A segment another live process (or another meter here) holds is skipped; so is one
    deleted between listing and locking (it was ingested by whoever deleted it).
    """
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX))
    except FileNotFoundError:
        return
    for name in names:
        if name in skip:
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            if st.st_nlink == 0 or os.stat(path).st_ino != st.st_ino:
                raise FileNotFoundError(path)
        except OSError:
            os.close(fd)
            continue
        seg = Segment(path, fd)
        seg.size = st.st_size
        yield seg
