"""The intake: takes records on the caller's thread and moves them into the outbox.

Caller side (`submit_record`, `submit_later`): encode the record and append it to this
process's journal (one `os.write`: durable against any death of the process once it
returns). Only if the journal cannot be written (disk full, unwritable directory, an
in-memory outbox) does the record wait in a memory queue bounded by `max_queue`; past
that it is refused, counted and reported, never silently lost.

Worker side (`drain`): read journal frames and queued records, prepare them into events
and store events, rejected records and the journal offsets reached in one outbox
transaction, so a crash at any moment neither loses nor repeats a record. Journals of
processes that are gone are taken over by `recover_orphans`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import marshal
import operator
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .aggregate import Aggregation
from .errors import InvalidUsage
from .events import MeterEvent
from .health import Health
from .journal import (
    HEAD_SIZE,
    PICKLED,
    ROTATE_BYTES,
    JournalWriter,
    Segment,
    frame,
    take_orphans,
)
from .prepare import Preparer, RawRecord
from .profile import SETTINGS, Profile, profile_from, settings_of
from .storage.base import LOCAL, PENDING, OutboxStore, Progress, Reject, Row
from .usage import Usage

log = logging.getLogger("stripe_token_meter")

Reader = Callable[..., "dict[str, Any] | None"]
"""`record_later`'s `read`: callback arguments -> `record()` keyword arguments, or None."""

_RECORD: Final = 1
_LATER: Final = 2
READ_BYTES: Final = 256 * 1024
"""Journal bytes read per drain step (about a thousand records): memory stays bounded."""
JOURNAL_RETRY: Final = 1.0
SIGNAL_EVERY: Final = 1000
"""`on_work` is called for the first record after a drain and for every this many more
(the worker then stores early instead of on its timer)."""
"""After a failed append, the journal is tried again at most this often (seconds)."""


@dataclass(slots=True)
class LaterRecord:
    """A `record_later()` call: `read(*args)` gives `record()`'s arguments."""

    source: str
    read: Reader
    args: tuple[Any, ...]
    scoped: str | None
    recorded_at: float
    request_id: str | None = None
    """As `RawRecord.request_id`: used if `read` names no request id."""


Item = RawRecord | LaterRecord


_usage_fields = operator.attrgetter(*Usage.__dataclass_fields__)
_DIMENSIONS = len(Usage.__dataclass_fields__) - 1
assert tuple(Usage.__dataclass_fields__)[_DIMENSIONS] == "dimensions"


def _usage_tuple(usage: Usage) -> tuple[Any, ...]:
    """A `Usage`'s fields in order (`Usage(*t)` rebuilds it), as marshal can write them."""
    values: tuple[Any, ...] = _usage_fields(usage)
    dims = values[_DIMENSIONS]
    if type(dims) is not dict:
        values = (*values[:_DIMENSIONS], dict(dims))
    return values


def _encode(record: tuple[Any, ...]) -> bytes:
    """A journal frame for a record: marshal (fast, plain data), else pickle."""
    try:
        return frame(marshal.dumps(record))
    except ValueError:
        return frame(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL), PICKLED)


def _is_settings(payload: bytes) -> bool:
    """Whether a segment's first frame is its settings frame (see profile.py)."""
    try:
        rec = marshal.loads(payload)
    except Exception:
        return False
    return isinstance(rec, tuple) and len(rec) == 2 and rec[0] == SETTINGS


def _reference(read: Reader) -> str | None:
    """`module:qualname` naming a plain function, or None if it cannot be looked up."""
    if getattr(read, "__self__", None) is not None:
        return None
    module = getattr(read, "__module__", None)
    qualname = getattr(read, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def _resolve(ref: str) -> Reader:
    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{ref} is not callable")
    result: Reader = obj
    return result


class Intake:
    """One process's path from `record()` to the outbox."""

    def __init__(
        self,
        outbox: OutboxStore,
        preparer: Preparer,
        health: Health,
        *,
        local: bool,
        api: str,
        max_queue: int,
        lease_seconds: float,
        journal_dir: str | None,
        aggregate: Aggregation | None = None,
    ) -> None:
        self.outbox = outbox
        self.aggregate = aggregate
        self.preparer = preparer
        self.health = health
        self.local = local
        self.api = api
        self._max_queue = max_queue
        self._lease = lease_seconds
        self.profile = Profile(preparer, api, local, aggregate)
        """This meter's own settings; a taken-over segment may carry another's."""
        self._profiles: dict[str, Profile] = {}
        """Settings of the segments being read, by segment name."""
        self.journal = (
            JournalWriter(journal_dir, _encode(settings_of(self.profile)))
            if journal_dir is not None
            else None
        )
        self._journal_retry = 0.0
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._carry: list[Item] = []
        """Queued records a drain took but could not store: the next drain stores them."""
        self._in_drain = 0
        self._drain_lock = threading.Lock()
        self._offsets: dict[str, int] = {}
        """How far each own segment is in the outbox (bytes)."""
        self._ingested = 0
        """Own journal frames in the outbox."""
        self._refs: dict[Reader, str] = {}
        self._readers: dict[str, Reader] = {}
        self.on_work: Callable[[], None] | None = None
        """Set by the worker: records are waiting (so it sleeps instead of polling)."""
        self._undrained = 0

    # -- caller side -------------------------------------------------------------------------

    def submit_record(
        self,
        usage: Usage | None,
        counts: str,
        fields: dict[str, Any],
        scoped: str | None,
        fallback: str | None,
        recorded_at: float,
    ) -> None:
        journal = self._usable_journal()
        if journal is not None:
            u: Any = usage
            if usage is not None:
                u = _usage_tuple(usage) if isinstance(usage, Usage) else repr(usage)[:200]
            data = _encode((_RECORD, u, counts, fields, scoped, fallback, recorded_at))
            if self._append(journal, data):
                n = self._undrained = self._undrained + 1
                if n == 1 or n % SIGNAL_EVERY == 0:
                    self._signal()
                return
        self._hold(RawRecord(usage, counts, fields, scoped, fallback, recorded_at))
        self._arrived()

    def _arrived(self) -> None:
        n = self._undrained = self._undrained + 1
        if n == 1 or n % SIGNAL_EVERY == 0:
            self._signal()

    def _signal(self) -> None:
        """Tell the worker records wait (a cross-thread wake-up: a few microseconds)."""
        on_work = self.on_work
        if on_work is not None:
            on_work()

    def submit_later(
        self, source: str, read: Reader, args: tuple[Any, ...], scoped: str | None, now: float
    ) -> bool:
        """Journal a `record_later()`; False if `read` cannot be named in a journal (a
        bound method, a closure): the caller then runs it at once."""
        ref = self._refs.get(read)
        if ref is None:
            ref = _reference(read)
            if ref is None:
                return False
            self._refs[read] = ref  # only plain functions: a bounded set
        journal = self._usable_journal()
        if journal is not None and self._append(
            journal, _encode((_LATER, source, ref, args, scoped, now))
        ):
            n = self._undrained = self._undrained + 1
            if n == 1 or n % SIGNAL_EVERY == 0:
                self._signal()
            return True
        self._hold(LaterRecord(source, read, args, scoped, now))
        self._arrived()
        return True

    def _usable_journal(self) -> JournalWriter | None:
        """The journal, unless it failed less than `JOURNAL_RETRY` ago (or there is none)."""
        journal = self.journal
        if journal is None or (journal.error and time.monotonic() < self._journal_retry):
            return None
        return journal

    def _append(self, journal: JournalWriter, data: bytes) -> bool:
        """One frame into the journal; on failure, say so (rate-limited) and return False."""
        if journal.append(data):
            return True
        self._journal_retry = time.monotonic() + JOURNAL_RETRY
        err = journal.error
        self.health.note_error("journal_unwritable", repr(err))
        self.health.log_every(
            "journal",
            logging.ERROR,
            f"stripe-token-meter: cannot append to the journal in "
            f"{journal.directory} ({err}); records wait in "
            f"memory (at most max_queue={self._max_queue}) and are lost if the process "
            "dies before the disk has room again",
        )
        return False

    def _hold(self, item: Item) -> None:
        """Keep a record in memory (journal unavailable), within `max_queue`."""
        if self._queue.qsize() + self._in_drain >= self._max_queue:  # carried ones too
            self.health.count("dropped")
            self.health.note_error(
                "dropped", f"max_queue={self._max_queue} records waiting in memory"
            )
            self.health.log_every(
                "dropped",
                logging.ERROR,
                f"stripe-token-meter: a record was REFUSED: the journal cannot be written and "
                f"{self._max_queue} records already wait in memory (max_queue); counted in "
                "stats()['dropped']. Free disk space or fix the outbox directory.",
            )
            return
        if self.journal is not None:
            self.health.count("not_journaled")
        self._queue.put(item)

    def write_through(self, item: Item) -> None:
        """Prepare and store on the calling thread (`durable="sync"`, after close)."""
        with self._drain_lock:
            self._store_items([item], [])

    def settled(self) -> bool:
        """Nothing taken and not yet stored (waits out a drain under way)."""
        with self._drain_lock:
            return not self._carry and self.backlog() == 0

    def backlog(self) -> int:
        """Records taken and not yet in the outbox (journal and memory)."""
        written = self.journal.written if self.journal is not None else 0
        return written - self._ingested + self._queue.qsize() + self._in_drain

    # -- worker side -------------------------------------------------------------------------

    def drain(self, limit: int = 500, lease_owner: str | None = None) -> tuple[int, list[Row]]:
        """Move up to `limit` records into the outbox: (records moved, rows leased).

        Holds the drain lock from the first read to the commit, so `flush()` can tell
        "nothing left" apart from "read but not yet stored". A failed store (disk full,
        database locked) loses nothing: journal offsets were not committed, and queued
        records are carried to the next drain.
        """
        self._undrained = 0
        with self._drain_lock:
            moved, rows = self._drain_memory(limit, lease_owner)
            if self.journal is not None and moved < limit:
                for seg in self.journal.segments():
                    n, more = self._drain_segment(seg, limit - moved, lease_owner, own=True)
                    moved += n
                    rows.extend(more)
                    if moved >= limit:
                        break
                self._retire_segments()
        return moved, rows

    def _drain_memory(self, limit: int, lease_owner: str | None) -> tuple[int, list[Row]]:
        taken, self._carry = self._carry, []
        get = self._queue.get_nowait
        try:
            while len(taken) < limit:
                self._in_drain = len(taken) + 1  # counted before it leaves the queue
                try:
                    taken.append(get())
                except queue.Empty:
                    break
            self._in_drain = len(taken)
            rows = self._store_items(taken, [], lease_owner=lease_owner) if taken else []
        except BaseException:
            self._carry = taken  # nothing taken off the queue is lost
            raise
        finally:
            self._in_drain = len(self._carry)
        return len(taken), rows

    def _drain_segment(
        self, seg: Segment, limit: int, lease_owner: str | None, *, own: bool
    ) -> tuple[int, list[Row]]:
        """Up to `limit` frames of `seg` into the outbox with its new offset."""
        offset = self._offsets.get(seg.name) if own else None
        if offset is None:
            offset = self.outbox.journal_offset(seg.name)
            if own:
                self._offsets[seg.name] = offset
        frames, skipped = seg.read(offset, READ_BYTES, limit)
        if skipped:
            self._report_corrupt(seg, skipped)
        if not frames:
            return 0, []
        profile = self._profiles.get(seg.name)
        if profile is None:
            profile = self._profiles[seg.name] = self._segment_profile(seg, offset, frames)
        items: list[Item] = []
        rejects: list[Reject] = []
        records = 0
        for end, payload, pickled in frames:
            if end - len(payload) == HEAD_SIZE and not pickled and _is_settings(payload):
                continue  # the segment's settings frame, read above
            records += 1
            item = self._decode(payload, pickled, seg, end, rejects, profile)
            if item is not None:
                items.append(item)
        new_offset = frames[-1][0]
        rows = self._store_items(items, rejects, [(seg.name, new_offset)], lease_owner, profile)
        if own:
            self._offsets[seg.name] = new_offset
            self._ingested += records
        return records, rows  # a settings frame alone: 0, its progress is stored

    def _segment_profile(
        self, seg: Segment, offset: int, frames: list[tuple[int, bytes, bool]]
    ) -> Profile:
        """The settings `seg` was written with (its first frame); a segment from before
        settings frames existed is read with this meter's own."""
        if offset == 0:
            first = frames[0]
        else:
            head, _ = seg.read(0, READ_BYTES, 1)
            if not head:
                return self.profile
            first = head[0]
        end, payload, pickled = first
        if end != HEAD_SIZE + len(payload) or pickled or not _is_settings(payload):
            return self.profile
        try:
            settings = marshal.loads(payload)[1]
            return profile_from(settings, self.profile, self.health)
        except Exception as exc:
            self.health.note_error("journal_settings", f"{seg.name}: {exc!r}")
            return self.profile

    def _decode(
        self,
        payload: bytes,
        pickled: bool,
        seg: Segment,
        end: int,
        rejects: list[Reject],
        profile: Profile,
    ) -> Item | None:
        """A journal frame -> the record it holds (None: kept as a rejected record)."""
        try:
            # A pickle only from our own files: 0600 in a 0700 directory of this user's.
            rec = pickle.loads(payload) if pickled else marshal.loads(payload)
        except Exception as exc:
            rejects.append(self._unreadable(seg, end, exc))
            return None
        position = f"j{seg.name.rsplit('-', 1)[-1].split('.')[0]}:{end}"
        try:
            if rec[0] == _RECORD:
                _, u, counts, fields, scoped, fallback, recorded_at = rec
                usage: Any = Usage(*u) if isinstance(u, tuple) else u  # a repr: rejected
                return RawRecord(usage, counts, fields, scoped, fallback, recorded_at, position)
            _, source, ref, args, scoped, recorded_at = rec
            read = self._readers.get(ref)
            if read is None:
                read = self._readers[ref] = _resolve(ref)
            return LaterRecord(source, read, tuple(args), scoped, recorded_at, position)
        except InvalidUsage as exc:  # a Usage that no longer validates (e.g. too old)
            raw = RawRecord(repr(rec[1])[:200], rec[2], rec[3], rec[4], rec[5], rec[6])
            rejects.append(profile.preparer.rejected(exc, raw))
        except Exception as exc:
            rejects.append(self._unreadable(seg, end, exc))
        return None

    def _unreadable(self, seg: Segment, end: int, exc: BaseException) -> Reject:
        self.health.count("invalid")
        return (
            "unreadable_journal_record",
            "journal",
            f"a journal record (segment {seg.name}, ending at byte {end}) could not be read "
            f"back ({type(exc).__name__}: {exc}); an adapter's reader may have been renamed "
            "since it was written. Nothing was billed for it.",
            {"segment": seg.name, "offset": end},
        )

    def _report_corrupt(self, seg: Segment, skipped: int) -> None:
        self.health.note_error("journal_corrupt", f"{skipped} bytes skipped in {seg.path}")
        self.health.log_every(
            f"corrupt:{seg.name}",
            logging.ERROR,
            f"stripe-token-meter: {skipped} unreadable bytes skipped in journal {seg.path} "
            "(a torn write after a power loss or a full disk); records around them were "
            "kept",
        )

    def _store_items(
        self,
        items: list[Item],
        rejects: list[Reject],
        progress: list[Progress] | None = None,
        lease_owner: str | None = None,
        profile: Profile | None = None,
    ) -> list[Row]:
        """Prepare `items` and store them with `rejects` and `progress`, in one transaction,
        the way `profile` (the writer's settings; this meter's by default) says."""
        p = self.profile if profile is None else profile
        events: list[MeterEvent] = []
        recorded = 0
        for item in items:
            raw: RawRecord | None
            if isinstance(item, LaterRecord):
                raw = self._read_later(item)
                if raw is None:
                    continue
            else:
                raw = item
            events.extend(p.preparer.events_or_reject(raw, rejects))
            recorded += 1
        status = LOCAL if p.local else PENDING
        # Leased rows go straight to this worker's transport: only rows of its own API.
        owner = lease_owner if not p.local and p.api == self.api else None
        added, rows = self.outbox.ingest(
            events,
            rejects,
            progress or (),
            status=status,
            owner=owner,
            lease_seconds=self._lease,
            api=p.api,
            aggregate=p.aggregate,
        )
        if recorded:
            self.health.count("recorded", recorded)
        if events:
            self.health.count("events", added)
            if added < len(events):
                self.health.count("duplicates", len(events) - added)
        return rows

    def close_windows(self, *, everything: bool = False) -> int:
        """Aggregation windows due now (all, for a flush) become events. Any meter does
        it, aggregating or not: windows a process left behind are closed all the same."""
        return self.outbox.close_windows(everything=everything)

    def _read_later(self, item: LaterRecord) -> RawRecord | None:
        """A `record_later()` -> a raw record, or None if `read` gave nothing."""
        try:
            kwargs = item.read(*item.args)
        except Exception as exc:
            self.report_adapter_error(item.source, exc)
            return None
        if kwargs is None:
            return None
        fields = dict(kwargs)
        counts = fields.pop("counts", "disjoint")
        fallback = fields.pop("fallback_customer_id", None)
        return RawRecord(
            None, counts, fields, item.scoped, fallback, item.recorded_at, item.request_id
        )

    def report_adapter_error(self, source: str, exc: BaseException) -> None:
        """An adapter failed to translate a callback: count it, log once with the traceback."""
        self.health.adapter_error(source, exc)

    def _retire_segments(self) -> None:
        """Delete own retired segments that are all in the outbox; rotate a large active
        one that is."""
        journal = self.journal
        if journal is None:
            return
        for seg in journal.segments():
            done = self._offsets.get(seg.name, 0) >= seg.size
            if seg is journal.active:
                if done and seg.size >= ROTATE_BYTES:
                    journal.rotate()
                continue
            if done:
                self._delete(seg)
                journal.drop_retired(seg)
                self._offsets.pop(seg.name, None)

    def _delete(self, seg: Segment) -> None:
        """A segment all in the outbox: remove the file, then its progress row."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(seg.path)
        seg.close()
        self._profiles.pop(seg.name, None)
        self.outbox.forget_journal(seg.name)

    def recover_orphans(self) -> int:
        """Move every segment whose writer is gone into the outbox; returns records moved.

        Safe from several threads and processes at once: each segment is locked by the
        one taking it. A torn tail (the writer died mid-write, power loss) is reported.
        """
        journal = self.journal
        if journal is None:
            return 0
        own = {s.name for s in journal.segments()}
        moved = 0
        for seg in take_orphans(journal.directory, own):
            try:
                while True:
                    with self._drain_lock:
                        n, _ = self._drain_segment(seg, 1000, None, own=False)
                    if not n:
                        break
                    moved += n
                done = self.outbox.journal_offset(seg.name)
                tail = seg.tail_after(done)
                if tail:
                    self._keep_bad_tail(seg, tail)
                else:
                    self._delete(seg)
            finally:
                seg.close()
        if moved:
            self.health.count("journals_recovered", moved)
            log.info(
                "stripe-token-meter: %d records recovered from journals of exited processes",
                moved,
            )
        return moved

    def _keep_bad_tail(self, seg: Segment, tail: int) -> None:
        """A segment whose end is no whole frame: keep the file (renamed) and say so."""
        bad = seg.path + ".bad"
        os.replace(seg.path, bad)
        self.outbox.forget_journal(seg.name)
        self.health.note_error("journal_corrupt", f"{tail} bytes at the end of {bad}")
        self.health.log_every(
            f"tail:{seg.name}",
            logging.ERROR,
            f"stripe-token-meter: the last {tail} bytes of journal {seg.name} are not a whole "
            f"record (the writer died mid-write, a power loss or a full disk); kept as {bad}",
        )

    def close(self) -> None:
        """No more journal appends; what the journal holds goes into the outbox now."""
        if self.journal is None:
            self.drain(10**9)
            return
        self.journal.detach()
        while self.drain(10**9)[0]:
            pass
        # Journals of processes that died (kill -9) go in too, so a clean close leaves no
        # usage on local disk once the outbox has it (a shared PostgreSQL outbox above all).
        self.recover_orphans()
