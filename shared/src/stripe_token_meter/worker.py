"""The background delivery loop: a daemon thread running its own anyio event loop.

It never touches the host's event loop (LiteLLM may log after the host's loop ended).
Each turn: move queued records into the outbox, claim due rows, send them concurrently,
then mark each delivered, retried later, paused or dead-lettered.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio

from .outbox import Outbox, Row
from .retry import Outcome, Verdict, backoff
from .transport import Transport

if TYPE_CHECKING:
    from .meter import TokenMeter

log = logging.getLogger("stripe_token_meter")

IDLE_POLL = 0.02
FLUSH_INTERVAL = 0.2
"""Records wait in memory at most this long (the kill -9 window), unless flush() wakes us."""
WAKE_AT_QUEUED = 1000
"""...or this many are queued. Draining every small batch at once cost callers GIL time."""
AUTH_PAUSE = 30.0


class Worker:
    """Owns delivery for one `TokenMeter` in one process."""

    def __init__(
        self,
        meter: TokenMeter,
        outbox: Outbox,
        make_transport: Callable[[], Transport] | None,
        *,
        lease_seconds: float = 30.0,
        max_retry_delay: float = 60.0,
        retry_base_delay: float = 0.5,
    ) -> None:
        self._meter = meter
        self._outbox = outbox
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

    def _run_thread(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as exc:  # the thread must never die silently
            log.exception("stripe-token-meter worker stopped: %s", exc)
            self._meter._note_error("worker_crashed", repr(exc))

    async def _main(self) -> None:
        transport = self._make_transport() if self._make_transport else None
        try:
            if transport is not None:
                self._outbox.reclaim_from_dead_processes(self.host)
            while True:
                try:
                    moved, sent = await self._turn(transport)
                except Exception as exc:  # e.g. disk full, database locked: keep going
                    log.exception("stripe-token-meter: delivery turn failed; retrying in 1 s")
                    self._meter._note_error("worker_error", repr(exc))
                    moved, sent = 0, False
                    await anyio.sleep(1.0)
                stopping = self.stop_requested.is_set()
                if stopping and not moved and not sent:
                    if transport is None or time.monotonic() >= self.deadline:
                        break
                    if not self._outbox.has_pending():
                        break
                if not moved and not sent:
                    await self._idle(stopping)
        finally:
            if transport is not None:
                with anyio.CancelScope(shield=True):
                    await transport.aclose()

    async def _turn(self, transport: Transport | None) -> tuple[int, bool]:
        """One turn: store what was queued, then send one round of due rows."""
        moved = self._meter._drain_queue()
        sent = False
        if transport is not None and time.monotonic() < self.deadline:
            sent = await self._deliver(transport)
        return moved, sent

    async def _idle(self, stopping: bool) -> None:
        end = time.monotonic() + (0.05 if stopping else FLUSH_INTERVAL)
        q = self._meter._queue
        while time.monotonic() < end:
            if self.wake.is_set() or q.qsize() >= WAKE_AT_QUEUED:
                break
            await anyio.sleep(IDLE_POLL)
        self.wake.clear()

    async def _deliver(self, transport: Transport) -> bool:
        if time.time() < self.hold_until:
            return False
        rows = self._outbox.claim(
            self.owner, transport.batch_size * transport.concurrency, self._lease
        )
        if not rows:
            return False
        batches = [
            rows[i : i + transport.batch_size] for i in range(0, len(rows), transport.batch_size)
        ]
        results: list[tuple[Sequence[Row], list[Outcome]]] = []

        async def send(batch: Sequence[Row]) -> None:
            try:
                outcomes = await transport.send(batch)
            except Exception as exc:  # a transport bug must not lose rows: retry them
                outcomes = [Outcome(Verdict.RETRY, "internal_error", repr(exc))] * len(batch)
            results.append((batch, outcomes))

        async with anyio.create_task_group() as tg:
            for batch in batches:
                tg.start_soon(send, batch)
        self._apply(results)
        return True

    def _apply(self, results: list[tuple[Sequence[Row], list[Outcome]]]) -> None:
        delivered: list[int] = []
        dead: list[tuple[int, str, str]] = []
        paused: list[int] = []
        retry: dict[tuple[float, str, str], list[int]] = {}
        for batch, outcomes in results:
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
                    key = (round(delay, 1), outcome.code, outcome.message)
                    retry.setdefault(key, []).append(row.id)
        self._outbox.mark_delivered(delivered)
        self._outbox.mark_dead(dead)
        for (delay, code, message), ids in retry.items():
            self._outbox.mark_retry(ids, delay, code, message)
            self._meter._note_error(code, message)
        if dead:
            _, code, message = dead[-1]
            self._meter._note_error(code, message)
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
            self._meter._note_error(first.code, first.message)
        self._meter._delivered_in_process += len(delivered)
