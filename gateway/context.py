"""Context strategy for conversations longer than the model's context.

reject: INVALID_ARGUMENT. truncate: drop the oldest turns (the system prompt and the last
`keep_last` turns stay) until it fits. summarize: replace the older turns with a summary the
model writes, then truncate if that is still not enough.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tviz.errors import InvalidArgument
from tviz.generation import GenerationInput, Message, Sampling
from tviz.model.tokenizer import Tokenizer

Summarizer = Callable[[str, int], Awaitable[str]]

SUMMARY_PROMPT = (
    "Summarize the following conversation in at most three sentences. Keep names, numbers "
    "and decisions.\n\n{transcript}"
)


@dataclass
class PreparedPrompt:
    ids: list[int]
    action: str = ""  # "", "truncated", "summarized"
    turns_affected: int = 0


class ContextStrategy:
    def __init__(self, tokenizer: Tokenizer, keep_last: int, summary_max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.keep_last = keep_last
        self.summary_max_tokens = summary_max_tokens

    def _encode(self, messages: list[Message]) -> list[int]:
        return self.tokenizer.encode_chat(
            [m.model_dump() for m in messages], add_generation_prompt=True
        )

    async def prepare(
        self,
        inp: GenerationInput,
        sampling: Sampling,
        strategy: str,
        max_context: int,
        summarize: Summarizer,
    ) -> PreparedPrompt:
        reserve = sampling.max_tokens or 1

        def fits(ids: list[int]) -> bool:
            return len(ids) + reserve <= max_context

        if not inp.chat:
            ids = (
                self.tokenizer.encode(inp.prompt) if inp.prompt is not None else list(inp.token_ids)
            )
            if not fits(ids):
                raise self._too_long(len(ids), reserve, max_context, "prompt")
            return PreparedPrompt(ids)
        messages = list(inp.chat)
        ids = self._encode(messages)
        if fits(ids):
            return PreparedPrompt(ids)
        if strategy == "reject":
            raise self._too_long(len(ids), reserve, max_context, "conversation")
        system = messages[:1] if messages[0].role == "system" else []
        rest = messages[len(system) :]
        keep, older = rest[-self.keep_last :], rest[: -self.keep_last]
        if not older:
            raise self._too_long(len(ids), reserve, max_context, "last turns")
        if strategy == "summarize":
            summary = await self._summarize(older, max_context, summarize)
            note = f"Summary of the earlier conversation: {summary.strip()}"
            base = system[0].content + "\n\n" if system else ""
            merged = [Message(role="system", content=base + note)]
            ids = self._encode(merged + keep)
            if fits(ids):
                return PreparedPrompt(ids, "summarized", len(older))
            raise self._too_long(len(ids), reserve, max_context, "summarized conversation")
        dropped = 0
        while older and not fits(ids):
            older.pop(0)
            dropped += 1
            ids = self._encode(system + older + keep)
        if not fits(ids):
            raise self._too_long(len(ids), reserve, max_context, "last turns")
        return PreparedPrompt(ids, "truncated", dropped)

    async def _summarize(
        self, older: list[Message], max_context: int, summarize: Summarizer
    ) -> str:
        lines = [f"{m.role}: {m.content}" for m in older]
        budget = max_context - self.summary_max_tokens - 64
        # Keep the most recent part of the transcript that fits the summarizing call.
        while lines:
            prompt = SUMMARY_PROMPT.format(transcript="\n".join(lines))
            if len(self._encode([Message(role="user", content=prompt)])) <= budget:
                return await summarize(prompt, self.summary_max_tokens)
            lines.pop(0)
        raise InvalidArgument("chat: a single older turn is too long to summarize")

    @staticmethod
    def _too_long(n: int, reserve: int, max_context: int, what: str) -> InvalidArgument:
        return InvalidArgument(
            f"input: the {what} has {n} tokens; with max_tokens {reserve} it exceeds the context "
            f"of {max_context} (context_strategy truncate or summarize can shorten a chat)"
        )
