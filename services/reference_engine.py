"""tviz's own transformer as a serving engine: KV cache, batched decoding, vLLM-like sampling.

It runs where vLLM is not installed (or when configured) and is the parity reference for vLLM.
One scheduler task admits waiting requests into free cache rows (a prefill each), then runs one
batched decode step for every active row, so sequences of different lengths decode together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.engine import Engine, EngineDead, Load
from tviz import __version__
from tviz.generation import Delta, FinishReason, PositionLogprobs, Sampling, TokenLogprob
from tviz.model.tokenizer import Tokenizer
from tviz.model.transformer import KVCache, Transformer
from tviz.v1 import model_pb2

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Seq:
    request_id: str
    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    out: asyncio.Queue[Delta | BaseException] = field(default_factory=asyncio.Queue)
    generator: torch.Generator | None = None
    row: int = -1
    completion: list[int] = field(default_factory=list)
    emitted_text: str = ""
    aborted: bool = False
    finished: bool = False


def sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    """One token from (V,) logits: greedy at temperature 0, else temperature/top-k/top-p."""
    if s.temperature == 0.0:
        return int(logits.argmax())
    logits = logits.float() / s.temperature
    if s.top_k > 0:
        kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) > s.top_p  # keep the first token always
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


class ReferenceEngine(Engine):
    kind = model_pb2.ENGINE_KIND_REFERENCE

    def __init__(self, model_dir: Path, max_model_len: int, dtype: str, max_batch: int) -> None:
        self.version = f"tviz-reference {__version__} / torch {torch.__version__}"
        self.max_model_len = max_model_len
        self.max_batch = min(max_batch, 8)  # each row holds max_model_len positions of KV
        self._dir = model_dir
        self._dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self._waiting: deque[_Seq] = deque()
        self._active: dict[int, _Seq] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reference")
        self.model: Transformer | None = None
        self.cache: KVCache | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.model = await loop.run_in_executor(
            self._executor, lambda: Transformer.from_pretrained(self._dir, self._dtype)
        )
        self.tokenizer = Tokenizer(self._dir)
        self.eos = self.model.cfg.eos_token_id
        self.cache = self.model.new_cache(self.max_batch, self.max_model_len)
        self._task = asyncio.create_task(self._schedule())
        log.info(
            "reference engine ready: batch %d × %d positions", self.max_batch, self.max_model_len
        )

    @property
    def kv_cache_tokens(self) -> int:
        return self.max_batch * self.max_model_len

    # -- requests ----------------------------------------------------------------------------
    async def generate(
        self, prompt_ids: list[int], sampling: Sampling, max_tokens: int, request_id: str
    ) -> AsyncIterator[Delta]:
        if self._task is None or self._task.done():
            raise EngineDead("reference engine is not running")
        seq = _Seq(request_id, list(prompt_ids), sampling, max_tokens)
        if sampling.seed is not None:
            seq.generator = torch.Generator().manual_seed(sampling.seed)
        self._waiting.append(seq)
        self._wake.set()
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.finished:  # the client went away: abort inside the engine
                seq.aborted = True
                with contextlib.suppress(ValueError):
                    self._waiting.remove(seq)

    async def abort(self, request_id: str) -> None:
        for seq in [*self._waiting, *self._active.values()]:
            if seq.request_id == request_id:
                seq.aborted = True

    async def check_health(self) -> None:
        if self._task is None:
            raise EngineDead("reference engine not started")
        if self._task.done():
            exc = self._task.exception() if not self._task.cancelled() else None
            raise EngineDead(f"scheduler stopped: {exc!r}")

    def load(self) -> Load:
        return Load(running=len(self._active), waiting=len(self._waiting))

    def num_unfinished(self) -> int:
        return len(self._active) + len(self._waiting)

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for seq in [*self._waiting, *self._active.values()]:
            seq.out.put_nowait(EngineDead("engine shut down"))
        self._executor.shutdown(wait=False)

    # -- the scheduler -----------------------------------------------------------------------
    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_aborted()
            if not self._active and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            free = [r for r in range(self.max_batch) if r not in self._active]
            while free and self._waiting:
                seq = self._waiting.popleft()
                seq.row = free.pop(0)
                self._active[seq.row] = seq
                logits = await loop.run_in_executor(self._executor, self._prefill, seq)
                self._advance(seq, logits)
            self._drop_aborted()
            if self._active:
                batch = list(self._active.values())
                logits = await loop.run_in_executor(self._executor, self._decode, batch)
                for seq, row_logits in zip(batch, logits, strict=True):
                    self._advance(seq, row_logits)

    def _drop_aborted(self) -> None:
        for row, seq in list(self._active.items()):
            if seq.aborted or seq.finished:
                del self._active[row]

    def _prefill(self, seq: _Seq) -> torch.Tensor:
        assert self.model is not None and self.cache is not None
        self.cache.reset(seq.row)
        with torch.inference_mode():
            out = self.model(
                torch.tensor([seq.prompt]), cache=self.cache, rows=[seq.row], last_only=True
            )
        return out[0, -1]

    def _decode(self, batch: list[_Seq]) -> torch.Tensor:
        assert self.model is not None and self.cache is not None
        tokens = torch.tensor([[seq.completion[-1]] for seq in batch])
        with torch.inference_mode():
            out = self.model(tokens, cache=self.cache, rows=[s.row for s in batch], last_only=True)
        return out[:, -1]  # (B, V)

    def _advance(self, seq: _Seq, logits: torch.Tensor) -> None:
        """Sample the next token of `seq`, detokenize, check stops, hand the delta over."""
        if seq.aborted:
            return
        token = sample(logits, seq.sampling, seq.generator)
        seq.completion.append(token)
        delta = Delta(text="", token_ids=[token])
        if seq.sampling.logprobs:
            delta.logprobs = [self._logprobs(logits, token, seq.sampling.top_logprobs)]
        finish: FinishReason | None = None
        text = self.tokenizer.decode(seq.completion)
        if token == self.eos:
            finish = "stop"
        elif len(seq.completion) >= seq.max_tokens:
            finish = "length"
        for stop in seq.sampling.stop:
            at = text.find(stop, max(0, len(seq.emitted_text) - len(stop)))
            if at >= 0:
                text, finish = text[:at], "stop_string"
                break
        if finish is None:
            # Hold back an incomplete UTF-8 character and a possible stop-string prefix.
            hold = max((len(s) - 1 for s in seq.sampling.stop), default=0)
            safe = text.rstrip("\ufffd")
            text = safe[: len(safe) - hold] if hold else safe
        delta.text = text[len(seq.emitted_text) :] if text.startswith(seq.emitted_text) else ""
        seq.emitted_text += delta.text
        if finish is not None:
            seq.finished = True
            delta.finish_reason = finish
            delta.prompt_tokens = len(seq.prompt)
            delta.completion_tokens = len(seq.completion)
        seq.out.put_nowait(delta)

    def _logprobs(self, logits: torch.Tensor, token: int, top: int) -> PositionLogprobs:
        lp = torch.log_softmax(logits.float(), -1)
        texts = self.tokenizer.token_texts
        chosen = TokenLogprob(token, float(lp[token]), texts([token])[0])
        alts = []
        if top:
            values, ids = lp.topk(top)
            alts = [
                TokenLogprob(int(i), float(v), t)
                for i, v, t in zip(ids, values, texts(ids.tolist()), strict=True)
            ]
        return PositionLogprobs(chosen=chosen, top=alts)
