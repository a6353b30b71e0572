"""OpenAI's streaming format for the sampler's growing text: `chat.completion.chunk` / `text_completion` chunks
as server-sent events, the stream ending with `data: [DONE]`.

Text forced by the calculator travels in chunks of its own whose choice also carries
`"calculator": {"expr", "result"}` (an extra field OpenAI clients keep and ignore), so a client can mark it.
The last chunk of each choice has its `finish_reason` and all its `calculator_overrides`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

Piece = tuple[int, str, "dict[str, str] | None"]  # (choice index, text, calculator override or None)


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class TextStream:
    """The chunks of one streamed request with `choices` choices, for endpoint "chat" or "completions"."""

    def __init__(self, endpoint: str, model: str, choices: int, leading_space: bool = False) -> None:
        self.chat = endpoint == "chat"
        self.head = {"id": f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}",
                     "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": int(time.time()), "model": model}
        self.choices = choices
        # non-streamed completions put a space before the text (the prompt ends in "Answer:"); so does the stream
        self.pending_space = [leading_space] * choices

    def opening(self) -> list[dict[str, Any]]:
        if not self.chat:
            return []
        return [self._chunk(i, {"delta": {"role": "assistant", "content": ""}}) for i in range(self.choices)]

    def pieces(self, pieces: list[Piece]) -> list[dict[str, Any]]:
        """One chunk per choice and run of pieces with the same calculator mark, choices in order."""
        runs: dict[int, list[tuple[dict[str, str] | None, str]]] = {}
        for index, text, override in pieces:
            mine = runs.setdefault(index, [])
            if mine and mine[-1][0] == override:
                mine[-1] = (override, mine[-1][1] + text)
            else:
                mine.append((override, text))
        chunks = []
        for index in sorted(runs):
            for override, text in runs[index]:
                if self.pending_space[index] and text:
                    text, self.pending_space[index] = " " + text, False
                extra = {"calculator": override} if override else {}
                chunks.append(self._chunk(index, {"delta": {"content": text}} if self.chat else {"text": text},
                                          **extra))
        return chunks

    def closing(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._chunk(i, {"delta": {}} if self.chat else {"text": ""}, finish_reason=o["finish_reason"],
                            calculator_overrides=o["calculator_overrides"]) for i, o in enumerate(outputs)]

    def usage(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage}

    def _chunk(self, index: int, body: dict[str, Any], finish_reason: str | None = None,
               **extra: Any) -> dict[str, Any]:
        choice = {"index": index, **body, "logprobs": None, "finish_reason": finish_reason, **extra}
        return {**self.head, "choices": [choice]}
