"""Calling a LlamaIndex LLM by method name: every sync, async and streaming entry point."""

from __future__ import annotations

import asyncio
from typing import Any

METHODS = [
    "chat",
    "complete",
    "stream_chat",
    "stream_complete",
    "achat",
    "acomplete",
    "astream_chat",
    "astream_complete",
]


def run_llm(llm: Any, method: str, messages: list[Any], prompt: str = "hello") -> None:
    """One call of `method`, streams consumed to the end."""
    if method == "chat":
        llm.chat(messages)
    elif method == "complete":
        llm.complete(prompt)
    elif method == "stream_chat":
        for _ in llm.stream_chat(messages):
            pass
    elif method == "stream_complete":
        for _ in llm.stream_complete(prompt):
            pass
    else:

        async def go() -> None:
            if method == "achat":
                await llm.achat(messages)
            elif method == "acomplete":
                await llm.acomplete(prompt)
            elif method == "astream_chat":
                async for _ in await llm.astream_chat(messages):
                    pass
            else:
                async for _ in await llm.astream_complete(prompt):
                    pass

        asyncio.run(go())
