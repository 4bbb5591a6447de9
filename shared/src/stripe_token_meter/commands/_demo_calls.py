"""Shared shape of one framework's demo run, and the usage each fake call reports.

Why: the three framework modules only differ in how they call their framework; the token
counts (cache hits after the first call, reasoning on streamed calls) are decided here so
the demo's customers have distinct, realistic bills.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class FrameworkUnavailable(Exception):
    """The framework or its adapter is not installed: the demo skips it and says how to fix."""


@dataclass(frozen=True)
class CallUsage:
    """Inclusive OpenAI-style counts one fake call reports (cached in prompt, reasoning in completion)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass
class FrameworkRun:
    """What a framework function did: LLM calls made (streamed ones included) and time."""

    framework: str
    customer_id: str
    calls: int = 0
    streamed: int = 0
    seconds: float = 0.0
    models: list[str] = field(default_factory=list)


def plain_usage(i: int, prompt: int, completion: int, cached: int) -> CallUsage:
    """A chat call: the prompt grows a little each turn; from the 2nd call its prefix is cached."""
    p = prompt + 37 * i
    return CallUsage(p, completion + 11 * i, cached if i else 0, 0)


def reasoning_usage(i: int, prompt: int, completion: int, reasoning: int) -> CallUsage:
    """A streamed call to a reasoning model: completion includes its reasoning tokens."""
    return CallUsage(prompt + 23 * i, completion + 17 * i, 0, reasoning + 13 * i)


def split(calls: int) -> tuple[int, int]:
    """(plain, streamed): about a third of the calls are streamed, at least one of each."""
    if calls <= 1:
        return calls, 0
    streamed = max(1, calls // 3)
    return calls - streamed, streamed
