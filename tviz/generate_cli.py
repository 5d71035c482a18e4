"""`tviz generate`: stream from the gateway and report what the user would want to know."""

from __future__ import annotations

import asyncio
import time

import grpc
from rich.console import Console

from tviz.client import aio_channel, auth_metadata
from tviz.errors import TvizError
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc


async def _generate(
    request: g.GenerateRequest, target: str, api_key: str | None, console: Console
) -> None:
    async with aio_channel(target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        last: g.GenerateChunk | None = None
        call = stub.Generate(request, metadata=auth_metadata(api_key))
        try:
            async for chunk in call:
                if chunk.token_ids and first is None:
                    first = time.perf_counter() - start
                tokens += len(chunk.token_ids)
                console.print(chunk.text, end="", soft_wrap=True, highlight=False, markup=False)
                last = chunk
        except grpc.aio.AioRpcError as err:
            raise TvizError(f"{err.code().name}: {err.details()}") from None
        elapsed = time.perf_counter() - start
        console.print()
        served = dict(await call.trailing_metadata() or ()).get("x-tviz-replica", "?")
        usage = last.usage if last is not None else g.Usage()
        rate = (
            tokens / (elapsed - first)
            if first is not None and elapsed > first and tokens > 1
            else 0.0
        )
        reason = g.FinishReason.Name(last.finish_reason) if last is not None else "?"
        console.print(
            f"[dim]TTFT {1000 * (first or 0):.0f} ms · {tokens} tokens · {rate:.1f} tokens/s · "
            f"{'cache hit' if usage.response_cache_hit else 'generated'} by {served} · "
            f"prompt {usage.prompt_tokens} (prefix-cached {usage.cached_tokens}) · "
            f"{reason}{' · context ' + usage.context_action if usage.context_action else ''}[/]"
        )


def run_generate(
    prompt: str, target: str, system: str | None, raw: bool, max_tokens: int, temperature: float,
    seed: int | None, no_cache: bool, api_key: str | None, console: Console,
) -> None:  # fmt: skip
    request = g.GenerateRequest(
        sampling=g.SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed),
        cache=g.CACHE_MODE_BYPASS if no_cache else g.CACHE_MODE_UNSPECIFIED,
    )
    if raw:
        request.prompt = prompt
    else:
        if system:
            request.chat.messages.add(role="system", content=system)
        request.chat.messages.add(role="user", content=prompt)
    asyncio.run(_generate(request, target, api_key, console))
