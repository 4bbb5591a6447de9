"""The background delivery loop: a daemon thread running its own anyio event loop.

It never touches the host's event loop (LiteLLM may log after the host's loop ended).
One loop owns the outbox (its SQLite work runs on a helper thread, one turn at a time):
it moves queued records in, hands fresh and due rows to whichever of the `concurrency`
sender tasks is free, and marks what they bring back delivered, retried later, paused or
dead-lettered. Senders only talk to Stripe, so requests stay in flight back to back
(pipelined) instead of in rounds that wait for their slowest request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import anyio

from .health import Health
from .intake import Intake
from .retry import Outcome, Verdict, backoff
from .storage.base import (
    PRUNE_LIMIT,
    UNCONFIRMED_CODE,
    UNCONFIRMED_LIMIT,
    OutboxUnavailable,
    Row,
)

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from .transport import Transport

log = logging.getLogger("stripe_token_meter")

WORKER_MODULES: Final = (
    "anyio._backends._asyncio",
    "anyio._core._eventloop",
    "anyio.to_thread",
    "anyio.streams.memory",
)
"""Imported by the worker's event loop: the meter imports them first, on its own thread."""
RESTART_BASE: Final = 0.5
RESTART_CAP: Final = 30.0
"""A crashed worker starts again after 0.5 s, doubling up to 30 s while it keeps crashing."""
ORPHAN_SCAN: Final = 5.0
"""Journals of exited processes (fork children, an earlier deploy) are looked for at
start and then at most this many seconds apart (and by every `flush()`)."""
WINDOW_CHECK: Final = 0.25
"""Seconds between looks for aggregation windows to close (one indexed query)."""
REPLACED_CHECK: Final = 1.0
"""How often the worker checks that the outbox file is still the one it opened."""

IDLE_HOUSEKEEPING = 1.0
"""With nothing queued, leased or in flight the loop sleeps until woken (a record, a
flush, an answer) or the next housekeeping check, at most this long."""
READY_LIMIT = 2000
"""Fresh rows kept leased in memory for the senders (a few rounds' worth). Should they
wait half their lease (slow sends), they are given back, so no other process takes a row
we still hold. A larger limit measured no faster: past it, rows are claimed as usual."""
DRAIN_LIMIT = 500
"""Records stored per outbox transaction (see `Intake.drain`)."""
FLUSH_INTERVAL = 0.2
"""Records wait in memory at most this long (the kill -9 window), unless flush() wakes us."""
WAKE_AT_QUEUED = 1000
"""...or this many are queued. Draining every small batch at once cost callers GIL time."""
AUTH_PAUSE = 30.0
OUTAGE_PROBE = 5.0
"""While Stripe is unreachable, one batch probes it at most this many seconds apart."""
PRUNE_INTERVAL = 300.0
"""Delivered rows past `retain_delivered` are deleted at most this many seconds apart, on
a turn with nothing to send (see `Worker._prune_due`)."""
PRUNE_FIRST = 10.0
"""The first prune, this long after the worker starts. Both are read when a `Worker` is
made, so a test can shorten them (they are not `TokenMeter` options)."""


class Worker:
    """Owns delivery for one `TokenMeter` in one process."""

    def __init__(
        self,
        intake: Intake,
        health: Health,
        make_transport: Callable[[], Transport] | None,
        *,
        lease_seconds: float = 30.0,
        max_retry_delay: float = 60.0,
        retry_base_delay: float = 0.5,
        retain_delivered: float = 35 * 86400,
    ) -> None:
        self._intake = intake
        self._health = health
        self._outbox = intake.outbox
        self._make_transport = make_transport
        self._lease = lease_seconds
        self._max_delay = max_retry_delay
        self._base_delay = retry_base_delay
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.deadline = float("inf")
        self.hold_until = 0.0
        self._done: list[tuple[Sequence[Row], list[Outcome]]] = []
        self._ready: collections.deque[Row] = collections.deque()
        """Rows stored leased to us, waiting for a free sender (see `READY_LIMIT`)."""
        self._ready_since = 0.0
        """When `_ready` last went from empty to not: no later than its oldest row's lease."""
        self._handed: dict[int, Sequence[Row]] = {}
        """Batches given to senders and not yet back, by `id()`."""
        self._sending: set[int] = set()
        """`id`s of handed batches a sender has taken: their request may be out."""
        self._busy_lanes: set[tuple[str, str]] = set()
        """Lanes (`Transport.lane`) of batches handed out and not yet back: v1 sends one
        request per customer and event name at a time, the rest interleaved."""
        self._outage = 0
        """Consecutive turns whose batches all failed (see `_note_outage`)."""
        self._next_store = 0.0
        self._next_claim = 0.0
        self._retain = retain_delivered
        """Seconds delivered rows are kept (`math.inf`: never pruned)."""
        self._prune_every = PRUNE_INTERVAL
        self._next_prune = time.monotonic() + PRUNE_FIRST
        self._next_orphans = 0.0
        self._next_windows = 0.0
        self._next_replaced = time.monotonic() + REPLACED_CHECK
        self._progress: anyio.Event
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=self._run_thread, name="stripe-token-meter", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def paused(self) -> bool:
        return self.hold_until > time.time()

    def nudge(self) -> None:
        """Work is waiting (`flush()`): run a turn now instead of on the timer."""
        self.wake.set()
        self._rouse()

    def stop(self, deadline: float) -> None:
        """Store everything, deliver until `deadline` (monotonic), then end."""
        self.deadline = deadline
        self.stop_requested.set()
        self.wake.set()
        self._rouse()

    def _rouse(self) -> None:
        """Wake the idle loop from any thread (records arrived, flush, close)."""
        loop = self._event_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                loop.call_soon_threadsafe(self._set_progress)

    def _set_progress(self) -> None:
        self._progress.set()

    def _run_thread(self) -> None:
        """Runs the loop; if it crashes, runs it again after a backoff (counted, logged
        once a minute), so records keep moving into the outbox whatever went wrong."""
        crashes = 0
        while True:
            try:
                anyio.run(self._main)
                return
            except BaseException as exc:  # the thread must never die silently
                crashes += 1
                self._health.count("worker_restarts")
                self._health.note_error("worker_crashed", repr(exc))
                self._health.log_every(
                    "worker_crashed",
                    logging.ERROR,
                    f"stripe-token-meter: the delivery worker crashed ({exc!r}); it restarts "
                    "with backoff and records stay in the journal and outbox meanwhile",
                    exc,
                )
            if self.stop_requested.wait(backoff(crashes - 1, base=RESTART_BASE, cap=RESTART_CAP)):
                return  # closing: close() moves what is left into the outbox itself

    async def _main(self) -> None:
        self._progress = anyio.Event()
        self._event_loop = asyncio.get_running_loop()  # anyio runs on asyncio here
        self._intake.on_work = self._rouse
        transport = self._make_transport() if self._make_transport else None
        try:
            if transport is None:
                await self._loop(None, None)
                return
            self._outbox.reclaim_from_dead_processes(self.host)
            to_send, to_take = anyio.create_memory_object_stream[Sequence[Row]](
                transport.concurrency
            )
            async with anyio.create_task_group() as tg:
                with to_take:
                    for _ in range(transport.concurrency):
                        tg.start_soon(self._sender, transport, to_take.clone())
                with to_send:
                    await self._loop(transport, to_send)
                tg.cancel_scope.cancel()  # only requests still out past close()'s deadline
        finally:
            try:
                if self._done:  # answers that came back after the last turn
                    done, self._done = self._done, []
                    self._apply(done)
            finally:
                if self._handed:  # their rows go back now, not when their lease runs out
                    out = [r.id for k, b in self._handed.items() if k in self._sending for r in b]
                    self._ready.extend(
                        r for k, b in self._handed.items() if k not in self._sending for r in b
                    )
                    self._handed.clear()
                    self._busy_lanes.clear()
                    # Cancelled mid-request: Stripe may have recorded them (see mark_retry).
                    self._outbox.release(out, maybe_sent=True)
                self._release_ready()
            if transport is not None:
                with anyio.CancelScope(shield=True):
                    await transport.aclose()

    async def _loop(
        self, transport: Transport | None, to_send: MemoryObjectSendStream[Sequence[Row]] | None
    ) -> None:
        """Until stopped: store what was queued, apply what came back, keep senders fed.

        The outbox work runs on a helper thread, so the event loop keeps serving the
        requests in flight meanwhile (SQLite releases the GIL while it writes).
        """
        limiter = anyio.CapacityLimiter(1)
        while True:
            # A fresh event each turn: a set one left from a turn that did not idle would
            # make `_idle` spin until the store timer.
            self._progress = anyio.Event()
            done, self._done = self._done, []
            free = transport.concurrency - len(self._handed) if transport is not None else 0
            try:
                moved, batches, settled = await anyio.to_thread.run_sync(
                    self._db_step, transport, done, free, limiter=limiter
                )
            except Exception as exc:  # e.g. disk full, database locked: keep going
                self._done[:0] = done  # answers not yet applied: apply them next turn
                self._health.note_error("worker_error", repr(exc))
                if not isinstance(exc, OutboxUnavailable):  # the outbox logged that one
                    self._health.log_every(
                        f"turn:{type(exc).__name__}",
                        logging.ERROR,
                        "stripe-token-meter: delivery turn failed; retrying every second (events "
                        "stay in the journal and the outbox)",
                        exc,
                    )
                await anyio.sleep(1.0)
                continue
            if to_send is not None:
                for batch in batches:
                    self._handed[id(batch)] = batch
                    to_send.send_nowait(batch)
            if self.stop_requested.is_set():
                if transport is not None and time.monotonic() >= self.deadline:
                    return  # requests still out are cancelled; their rows are released
                if settled and not self._handed and not self._done:
                    return
            idle = not moved and not batches and not done
            if self._prune_due(idle) and await self._prune(limiter):
                continue  # a full chunk: the next one after another delivery turn
            if idle:
                await self._idle()

    def _prune_due(self, idle: bool) -> bool:
        """Whether to delete a chunk of old delivered rows now: when due and nothing is to
        be sent (no fresh rows waiting, nothing in flight, the turn found nothing), or, when
        steady traffic never leaves such a turn, once it is a whole interval overdue."""
        if math.isinf(self._retain) or self.stop_requested.is_set():
            return False
        now = time.monotonic()
        if now < self._next_prune:
            return False
        if idle and not self._ready and not self._handed:
            return True
        return now >= self._next_prune + self._prune_every

    async def _prune(self, limiter: anyio.CapacityLimiter) -> bool:
        """One `prune_delivered` chunk on the outbox thread; True if it was full (more may
        be left: the prune stays due). A failure is logged and delivery goes on."""
        cutoff = time.time() - self._retain
        try:
            n = await anyio.to_thread.run_sync(
                self._outbox.prune_delivered, cutoff, PRUNE_LIMIT, limiter=limiter
            )
        except Exception as exc:  # e.g. database locked for 30 s: try again next interval
            log.warning(
                "stripe-token-meter: deleting delivered events older than %.0f s failed (%r); "
                "delivery goes on, next try in %.0f s",
                self._retain,
                exc,
                self._prune_every,
            )
            n = 0
        if n >= PRUNE_LIMIT:
            return True
        self._next_prune = time.monotonic() + self._prune_every
        return False

    def _db_step(
        self,
        transport: Transport | None,
        done: list[tuple[Sequence[Row], list[Outcome]]],
        free: int,
    ) -> tuple[int, list[Sequence[Row]], bool]:
        """Outbox work of one turn: (records stored, batches for senders, nothing left here)."""
        now = time.monotonic()
        moved = 0
        self._housekeeping(now)
        intake = self._intake
        if now >= self._next_store or self.wake.is_set() or intake.backlog() >= WAKE_AT_QUEUED:
            self.wake.clear()
            # Fresh rows go straight to the senders, leased as they are stored, while
            # there is room; otherwise they wait in the outbox to be claimed.
            send_now = (
                transport is not None
                and len(self._ready) < READY_LIMIT
                and now < self.deadline
                and time.time() >= self.hold_until
            )
            moved, rows = intake.drain(DRAIN_LIMIT, self.owner if send_now else None)
            if rows:
                if not self._ready:
                    self._ready_since = now
                self._ready.extend(rows)
            if moved:
                self._next_claim = 0.0  # new rows: look for due ones now
            if moved < DRAIN_LIMIT:
                self._next_store = now + FLUSH_INTERVAL
        batches: list[Sequence[Row]] = []
        if transport is not None:
            if done:
                self._apply(done)
            batches = self._take(transport, free, now, force=bool(done))
        settled = (
            not moved and not self._ready and (transport is None or not self._outbox.has_pending())
            if self.stop_requested.is_set()
            else False
        )
        return moved, batches, settled

    def _housekeeping(self, now: float) -> None:
        """Journals of exited processes into the outbox; a deleted outbox file recreated."""
        if now >= self._next_replaced:
            self._next_replaced = now + REPLACED_CHECK
            if self._outbox.replaced():
                kept = self._outbox.recreate()
                message = (
                    f"the outbox file {self._outbox.path} was deleted or replaced while in use; "
                    f"it was written again with the {kept} events still waiting"
                )
                self._health.note_error("outbox_replaced", message)
                self._health.log_every(
                    "replaced", logging.WARNING, "stripe-token-meter: " + message
                )
        if now >= self._next_windows:
            self._next_windows = now + WINDOW_CHECK
            if self._intake.close_windows():
                self._next_claim = 0.0
        if now >= self._next_orphans and not self.stop_requested.is_set():
            self._next_orphans = now + ORPHAN_SCAN
            if self._intake.recover_orphans():
                self._next_claim = 0.0

    def _take(
        self, transport: Transport, free: int, now: float, force: bool
    ) -> list[Sequence[Row]]:
        """Batches for `free` idle senders: fresh rows first, then due rows claimed."""
        if now >= self.deadline or time.time() < self.hold_until:
            self._release_ready()  # held: another process may send them once due
            return []
        if self._ready and now - self._ready_since > self._lease / 2:
            self._release_ready()  # slow sends: hand them back while the lease still holds
        size = transport.batch_size
        if self._outage:  # one probe at a time: free only if nothing is out
            free = 1 if free == transport.concurrency else 0
        batches = self._pick(transport, free)
        free -= len(batches)
        if free <= 0 or (now < self._next_claim and not force and not batches):
            return batches
        if transport.lanes and len(self._ready) >= READY_LIMIT:
            return batches  # enough rows wait for their lane; claim more once they move
        try:
            rows = self._outbox.claim(self.owner, size * free, self._lease, api=self._intake.api)
            self._note_expired(self._outbox.take_expired())
        except Exception:
            self._unpick(transport, batches)  # not handed out: keep them for the next turn
            raise
        if not rows:
            # Nothing due: look again on the timer, or (nothing pending at all) on the
            # housekeeping one; a record or a flush wakes us earlier.
            wait = FLUSH_INTERVAL if self._outbox.has_pending() else IDLE_HOUSEKEEPING
            self._next_claim = now + wait
            return batches
        if not self._ready:
            self._ready_since = now
        self._ready.extend(rows)
        return batches + self._pick(transport, free)

    def _pick(self, transport: Transport, free: int) -> list[Sequence[Row]]:
        """Up to `free` batches from `_ready`, in order; with lanes (v1), a row whose lane
        has a request out waits (still leased) and later rows go first."""
        size = transport.batch_size
        ready = self._ready
        batches: list[Sequence[Row]] = []
        if not transport.lanes:
            while free > 0 and ready:
                batches.append([ready.popleft() for _ in range(min(size, len(ready)))])
                free -= 1
            return batches
        busy = self._busy_lanes
        waiting: collections.deque[Row] = collections.deque()
        while free > 0 and ready:
            row = ready.popleft()
            lane = transport.lane(row)
            if lane is not None and lane in busy:
                waiting.append(row)
                continue
            if lane is not None:
                busy.add(lane)
            batches.append([row])
            free -= 1
        if waiting:
            waiting.extend(ready)
            self._ready = waiting
        return batches

    def _unpick(self, transport: Transport, batches: list[Sequence[Row]]) -> None:
        """Batches `_pick` made that will not be sent after all: back to the front."""
        for batch in reversed(batches):
            self._ready.extendleft(reversed(batch))
            self._free_lanes(transport, batch)

    def _free_lanes(self, transport: Transport, batch: Sequence[Row]) -> None:
        if transport.lanes:
            for row in batch:
                lane = transport.lane(row)
                if lane is not None:
                    self._busy_lanes.discard(lane)

    def _note_expired(self, n: int) -> None:
        """Rows the claim found unconfirmed for nearly 24 h were dead-lettered, not sent
        again (Stripe would no longer catch the duplicate): say so."""
        if n:
            message = (
                f"{n} events were first sent more than {UNCONFIRMED_LIMIT / 3600:.0f} h ago "
                "without a confirmed answer from Stripe; a resend past Stripe's 24 h duplicate "
                "check could bill them twice, so they are dead-lettered: see "
                "`stripe-token-meter status`"
            )
            log.warning("stripe-token-meter: %s", message)
            self._health.note_error(UNCONFIRMED_CODE, message)

    def _release_ready(self) -> None:
        if self._ready:
            ids = [r.id for r in self._ready]
            self._ready.clear()
            self._outbox.release(ids)

    async def _sender(
        self, transport: Transport, to_take: MemoryObjectReceiveStream[Sequence[Row]]
    ) -> None:
        """Sends batches as they come; outcomes go back to the loop, which owns the outbox."""
        async with to_take:
            async for batch in to_take:
                self._sending.add(id(batch))  # left in place if this send is cancelled
                try:
                    outcomes = await transport.send(batch)
                except Exception as exc:  # a transport bug must not lose rows: retry them
                    outcomes = [Outcome(Verdict.RETRY, "internal_error", repr(exc))] * len(batch)
                self._sending.discard(id(batch))
                self._free_lanes(transport, batch)
                del self._handed[id(batch)]
                self._done.append((batch, outcomes))
                self._progress.set()

    async def _idle(self) -> None:
        """Sleep until woken (a batch comes back, records arrive, `flush()`/`close()`) or
        the next timer: the store timer while records wait or rows are out, the claim
        timer, the end of a hold, housekeeping. No polling: an idle meter wakes about once
        a second (`IDLE_HOUSEKEEPING`)."""
        now = time.monotonic()
        intake = self._intake
        if self._done or self.wake.is_set() or intake.backlog() >= WAKE_AT_QUEUED:
            return
        until = min(now + IDLE_HOUSEKEEPING, self._next_replaced, self._next_orphans)
        if intake.backlog() or self._ready or self._handed:
            until = min(until, self._next_store)
        if self._next_claim > now:
            until = min(until, self._next_claim)
        if not math.isinf(self._retain):
            until = min(until, self._next_prune)
        held = self.hold_until - time.time()
        if held > 0:
            until = min(until, now + held)
        if until > now:
            with anyio.move_on_after(until - now):
                await self._progress.wait()

    def _note_outage(self, answered: int, failed: int) -> None:
        """Whole batches failing (network, 5xx, 429) mean Stripe is down or pushing back:
        hold all sending, then probe with one batch at a time until one gets through.
        Meanwhile new records are only stored, not sent into the outage."""
        if answered:
            self._outage = 0
        elif failed:
            self._outage += 1
            hold = backoff(self._outage - 1, base=self._base_delay, cap=OUTAGE_PROBE)
            self.hold_until = max(self.hold_until, time.time() + hold)

    def _apply(self, results: list[tuple[Sequence[Row], list[Outcome]]]) -> None:
        delivered: list[int] = []
        dead: list[tuple[int, str, str]] = []
        paused: list[int] = []
        retry: dict[tuple[float, str, str, bool], list[int]] = {}
        answered = failed = 0
        for batch, outcomes in results:
            if all(o.verdict is Verdict.RETRY and not o.local for o in outcomes):
                failed += 1
            else:
                answered += 1
            for row, outcome in zip(batch, outcomes, strict=False):
                v = outcome.verdict
                if v is Verdict.DELIVERED:
                    delivered.append(row.id)
                elif v is Verdict.DEAD:
                    dead.append((row.id, outcome.code, outcome.message))
                elif v is Verdict.PAUSE:
                    paused.append(row.id)
                else:
                    delay = backoff(
                        row.attempts,
                        outcome.retry_after,
                        base=self._base_delay,
                        cap=self._max_delay,
                    )
                    if outcome.retry_after is not None:
                        self.hold_until = max(self.hold_until, time.time() + outcome.retry_after)
                    key = (round(delay, 1), outcome.code, outcome.message, outcome.maybe_sent)
                    retry.setdefault(key, []).append(row.id)
        self._note_outage(answered, failed)
        self._outbox.mark_delivered(delivered)
        self._outbox.mark_dead(dead)
        if delivered:  # first: a failure in the same turn stays the current error
            self._health.note_delivered(len(delivered))
        for (delay, code, message, maybe_sent), ids in retry.items():
            self._outbox.mark_retry(ids, delay, code, message, maybe_sent=maybe_sent)
            self._health.note_error(code, message, delivery=True)
        if dead:
            _, code, message = dead[-1]
            self._health.note_error(code, message, delivery=True)
        if paused:
            self._outbox.release(paused, AUTH_PAUSE)
            self.hold_until = time.time() + AUTH_PAUSE
            first = next(o for _, os_ in results for o in os_ if o.verdict is Verdict.PAUSE)
            log.error(
                "stripe-token-meter: Stripe refused the API key (%s: %s). Delivery is paused for "
                "%.0f s; %d events are kept in the outbox. Use a restricted key (rk_) with write "
                "access to billing meter events.",
                first.code,
                first.message,
                AUTH_PAUSE,
                len(paused),
            )
            self._health.note_error(first.code, first.message, delivery=True)
