"""LLM streams: a call whose span exits before its End event. No llama_index imports.

The LLM span exits as soon as the generator is returned; the End event comes when the
stream is consumed. Such a call is kept until its End event, an `ExceptionEvent` (the
consumer stopped early or the stream failed) or the generator's garbage collection.
Chunks are never billed one by one: the usage the provider reported on them is kept
(merged) and billed once. Calls an async stream's generator makes while being iterated
(`CustomLLM.astream_chat` runs `stream_chat` there) get the consumer's span as parent,
not the stream's: they are recognised by the stream's generator frame being on the
calling stack (`running_stream`).
"""

from __future__ import annotations

import sys
import weakref
from collections import deque
from collections.abc import Iterable
from types import AsyncGeneratorType, FrameType, GeneratorType
from typing import TYPE_CHECKING, Any, Final

from stripe_token_meter.provider_usage import UsageReport as Found

if TYPE_CHECKING:
    from ._billing import Call

_STREAMS: Final = (GeneratorType, AsyncGeneratorType)  # neither can be subclassed


def is_stream(result: Any) -> bool:
    """Whether an LLM method returned a stream (= `inspect.isgenerator` or `isasyncgen`)."""
    return type(result) in _STREAMS


class Collected:
    """Weakref callback of a stream's generator. It may run inside any allocation (GC), so
    it only notes the call; the tracker's next entry finishes the stream (`Tracker._reap`)."""

    __slots__ = ("dead", "span_id")

    def __init__(self, dead: deque[str], span_id: str) -> None:
        self.dead = dead
        self.span_id = span_id

    def __call__(self, _ref: weakref.ref[Any]) -> None:
        self.dead.append(self.span_id)


def watch(call: Call, generator: Any, dead: deque[str]) -> None:
    """Mark `call` a pending stream; its id lands in `dead` once `generator` is collected."""
    call.stream = True
    call.gen = weakref.ref(generator, Collected(dead, call.id))


def add_chunk(call: Call, found: Found | None, model: str | None) -> None:
    """One streamed chunk of `call`, with the usage (and model) it reported, if any."""
    call.chunks += 1
    if found is not None:
        call.chunk = merge(call.chunk, found)
        if call.chunk_model is None:
            call.chunk_model = model


def merge(old: Found | None, new: Found) -> Found:
    """Usage across a stream's chunks: Anthropic splits it (input first, output last),
    so its fields merge; every other shape reports running totals, so the latest wins."""
    if old is not None and old[0] == new[0] == "anthropic":
        return "anthropic", {**old[1], **new[1]}
    return new


def _gen_frame(gen: Any) -> FrameType | None:
    frame = getattr(gen, "gi_frame", None)
    if frame is None:
        frame = getattr(gen, "ag_frame", None)
    return frame if isinstance(frame, FrameType) else None


def running_stream(streams: Iterable[Call], call: Call) -> Call | None:
    """The pending stream (other than `call`) whose generator is running this code, if any."""
    frames: dict[int, Call] = {}
    for s in streams:
        gen = s.gen() if s.gen is not None else None
        # Only a generator executing right now (in some thread) can be on this stack.
        if gen is None or not (
            getattr(gen, "gi_running", False) or getattr(gen, "ag_running", False)
        ):
            continue
        frame = _gen_frame(gen)
        if frame is not None and s is not call and not s.done:
            frames[id(frame)] = s
    if not frames:
        return None
    f: FrameType | None = sys._getframe(1)
    while f is not None:
        found = frames.get(id(f))
        if found is not None:
            return found
        f = f.f_back
    return None
