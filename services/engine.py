"""The engine interface the replica's servicer talks to (vLLM or tviz's reference engine)."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tviz.generation import Delta, Sampling


@dataclass(frozen=True)
class Load:
    """What a router needs without waiting for a scrape."""

    running: int
    waiting: int


class EngineDead(Exception):
    """The engine cannot serve any more requests."""


class Engine(abc.ABC):
    kind: int  # model_pb2.EngineKind
    version: str
    max_model_len: int

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; returns when the engine can serve."""

    @abc.abstractmethod
    def generate(
        self, prompt_ids: list[int], sampling: Sampling, max_tokens: int, request_id: str
    ) -> AsyncIterator[Delta]:
        """Stream deltas; the last one carries finish_reason and usage. Cancelling the
        iteration (client gone, deadline) must abort the request inside the engine."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None: ...

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise EngineDead when the engine is gone."""

    @abc.abstractmethod
    def load(self) -> Load: ...

    @abc.abstractmethod
    def num_unfinished(self) -> int:
        """Requests the engine still tracks (0 after every stream ended or was aborted)."""

    @property
    @abc.abstractmethod
    def kv_cache_tokens(self) -> int: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...
