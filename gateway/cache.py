"""The response cache's keys and records, and sharing one generation among identical requests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import struct
from collections.abc import AsyncIterator, Callable

from tviz.generation import Sampling
from tviz.v1 import generation_pb2


def cache_key(
    weights_digest: str, tokenizer_digest: str, model: str, tenant: str, prompt_ids: list[int],
    sampling: Sampling, max_tokens: int,
) -> str:  # fmt: skip
    """Everything that decides a deterministic response.

    The prompt enters as token ids after the chat template and the context strategy, so the
    normalized messages, the template and the tokenizer are all covered; the tokenizer digest
    is included as well so a template change can never alias an old entry.
    """
    payload = {
        "weights": weights_digest,
        "tokenizer": tokenizer_digest,
        "model": model,
        "tenant": tenant,
        "prompt": prompt_ids,
        "sampling": sampling.model_dump(mode="json"),
        "max_tokens": max_tokens,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def encode_chunks(chunks: list[generation_pb2.GenerateChunk]) -> bytes:
    """Length-prefixed serialized chunks: the stream replays with its original boundaries."""
    parts = []
    for chunk in chunks:
        data = chunk.SerializeToString()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def decode_chunks(blob: bytes) -> list[generation_pb2.GenerateChunk]:
    chunks, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        chunks.append(generation_pb2.GenerateChunk.FromString(blob[offset : offset + size]))
        offset += size
    return chunks


class Flight:
    """One upstream generation that any number of identical requests subscribe to.

    The generation runs in its own task, so one subscriber leaving does not stop it for the
    others; when the last subscriber leaves before the end, it is cancelled (and the replica
    aborts it).
    """

    def __init__(self, run: Callable[[], AsyncIterator[generation_pb2.GenerateChunk]]) -> None:
        self.chunks: list[generation_pb2.GenerateChunk] = []
        self.done = False
        self.error: BaseException | None = None
        self.subscribers = 0
        self.served_by: list[str] = []  # replicas tried, the last one served
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._pump(run))

    async def _pump(self, run: Callable[[], AsyncIterator[generation_pb2.GenerateChunk]]) -> None:
        try:
            async for chunk in run():
                async with self._changed:
                    self.chunks.append(chunk)
                    self._changed.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            async with self._changed:
                self.done = True
                self._changed.notify_all()

    async def subscribe(self) -> AsyncIterator[generation_pb2.GenerateChunk]:
        self.subscribers += 1
        seen = 0
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(
                        lambda seen=seen: len(self.chunks) > seen or self.done  # type: ignore[misc]
                    )
                    new = self.chunks[seen:]
                    finished = self.done
                for chunk in new:
                    yield chunk
                seen += len(new)
                if finished and seen == len(self.chunks):
                    if self.error is not None:
                        raise self.error
                    return
        finally:
            self.subscribers -= 1
            if self.subscribers == 0 and not self.done:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
