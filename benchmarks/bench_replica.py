"""Replica throughput and time to first token, side by side in one run.

For 1, 8 and 32 concurrent streams of 64 tokens each:
  * through the gRPC replica (`tviz serve replica`, vLLM engine, separate process),
  * vLLM's AsyncLLM in-process (the same engine arguments, no gRPC),
  * HF transformers `generate` (static batch, same prompts),
  * tviz's reference engine through gRPC.

    .venv/bin/python -m benchmarks.bench_replica [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from benchmarks.common import RESULTS, machine
from tests.conftest import free_port
from tviz.client import aio_channel
from tviz.config import ModelSettings
from tviz.model.tokenizer import Tokenizer
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc

NEW_TOKENS = 64
console = Console()


def prompts(tok: Tokenizer, n: int) -> list[list[int]]:
    topics = [
        "a lighthouse",
        "the ocean",
        "a robot",
        "winter",
        "a library",
        "mountains",
        "a city",
        "rain",
    ]
    return [
        tok.encode_chat(
            [{"role": "user", "content": f"Write a long story about {topics[i % 8]} ({i})."}]
        )
        for i in range(n)
    ]


async def wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica exited with {proc.returncode}")
        try:
            async with aio_channel(target) as ch:
                r = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except Exception:
            pass
        await asyncio.sleep(1)
    raise TimeoutError(target)


async def grpc_run(target: str, batch: list[list[int]]) -> tuple[int, list[float], float]:
    async with aio_channel(target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        start = time.perf_counter()

        async def one(ids: list[int]) -> tuple[int, float]:
            req = g.GenerateRequest(
                token_ids=g.TokenIds(ids=ids),
                sampling=g.SamplingParams(temperature=0, max_tokens=NEW_TOKENS),
            )
            first, n = 0.0, 0
            async for chunk in stub.Generate(req):
                if not first and chunk.token_ids:
                    first = time.perf_counter() - start
                n += len(chunk.token_ids)
            return n, first

        results = await asyncio.gather(*(one(ids) for ids in batch))
        return sum(n for n, _ in results), [f for _, f in results], time.perf_counter() - start


async def inproc_run(llm, batch: list[list[int]]) -> tuple[int, list[float], float]:  # type: ignore[no-untyped-def]
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        temperature=0, max_tokens=NEW_TOKENS, output_kind=RequestOutputKind.DELTA
    )
    start = time.perf_counter()

    async def one(i: int, ids: list[int]) -> tuple[int, float]:
        first, n = 0.0, 0
        async for out in llm.generate(
            TokensPrompt(prompt_token_ids=ids), params, f"bench-{time.time()}-{i}"
        ):
            if not first and out.outputs[0].token_ids:
                first = time.perf_counter() - start
            n += len(out.outputs[0].token_ids)
        return n, first

    results = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(batch)))
    return sum(n for n, _ in results), [f for _, f in results], time.perf_counter() - start


def hf_run(model, tok: Tokenizer, batch: list[list[int]]) -> tuple[int, list[float], float]:  # type: ignore[no-untyped-def]
    width = max(len(b) for b in batch)
    pad = tok.hf.pad_token_id
    ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch])  # left padding
    mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=pad,
        )
    elapsed = time.perf_counter() - start
    n = int((out[:, width:] != pad).sum())
    return n, [], elapsed  # generate returns everything at once: no streaming TTFT


async def run(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    directory = ModelSettings().directory
    tok = Tokenizer(directory)
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    targets: dict[str, str] = {}
    env = {**os.environ, "TVIZ_REPLICA__KV_CACHE_SPACE_GIB": "2"}
    cli = Path(sys.executable).parent / "tviz"
    for engine in ("vllm", "reference"):
        port = free_port()
        with (logs / f"replica-{engine}.log").open("wb") as out:
            procs[engine] = subprocess.Popen(
                [str(cli), "serve", "replica", "--port", str(port), "--engine", engine],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        targets[engine] = f"127.0.0.1:{port}"
    try:
        console.print("starting vLLM in-process and two replica processes …")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args,
            AsyncEngineArgs(
                model=str(directory),
                dtype="float32",
                max_model_len=2048,
                enforce_eager=True,
                enable_prefix_caching=True,
                max_num_seqs=64,
                seed=0,
            ),
        )
        for t, p in zip(targets.values(), procs.values(), strict=True):
            await wait_serving(t, p)
        hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        # warm every path once
        warm = prompts(tok, 2)
        await inproc_run(llm, warm)
        for t in targets.values():
            await grpc_run(t, warm)
        hf_run(hf, tok, warm)

        rows: list[tuple[int, str, float, float | None]] = []
        for n in args.streams:
            batch = prompts(tok, n)
            cases = {
                "gRPC replica (vLLM)": lambda b=batch: grpc_run(targets["vllm"], b),
                "AsyncLLM in-process": lambda b=batch: inproc_run(llm, b),
                "HF generate (static batch)": lambda b=batch: asyncio.to_thread(hf_run, hf, tok, b),
            }
            if n <= args.reference_max:
                cases["gRPC replica (reference engine)"] = lambda b=batch: grpc_run(
                    targets["reference"], b
                )
            results: dict[str, list[tuple[int, list[float], float]]] = {k: [] for k in cases}
            for r in range(args.rounds):
                for name, fn in cases.items():
                    console.print(f"{n} streams, round {r + 1}: {name}")
                    results[name].append(await fn())
            for name, res in results.items():
                tok_s = statistics.median(tokens / wall for tokens, _, wall in res)
                ttfts = [f for _, firsts, _ in res for f in firsts]
                rows.append((n, name, tok_s, statistics.median(ttfts) if ttfts else None))
        llm.shutdown()
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()

    lines = [
        f"### Replica throughput and TTFT ({NEW_TOKENS} new tokens per stream, greedy)",
        "",
        f"Machine: {machine()}. Median of {args.rounds} interleaved rounds.",
        "",
        "| streams | path | tokens/s | ratio to in-process AsyncLLM | median TTFT ms |",
        "|---:|---|---:|---:|---:|",
    ]
    base = {n: t for n, name, t, _ in rows if name == "AsyncLLM in-process"}
    for n, name, tok_s, ttft in rows:
        ttft_ms = "-" if ttft is None else f"{ttft * 1000:.0f}"
        lines.append(f"| {n} | {name} | {tok_s:.1f} | {tok_s / base[n]:.2f}× | {ttft_ms} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "replica.md").write_text(text)
    console.print(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--reference-max", type=int, default=8, help="largest N for the reference engine"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
