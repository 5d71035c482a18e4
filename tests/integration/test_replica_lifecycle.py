"""Replica processes (`tviz serve replica`): health transitions and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port
from tviz.client import aio_channel
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def spawn_replica(engine: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TVIZ_REPLICA__PROBE_INTERVAL_S": "0.5",
        "TVIZ_REPLICA__PROBE_TIMEOUT_S": "3",
        "TVIZ_REPLICA__KV_CACHE_SPACE_GIB": "1",
        "TVIZ_REPLICA__SERVER__GRACE_SECONDS": "30",
    }
    cli = Path(sys.executable).parent / "tviz"
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(cli), "serve", "replica", "--port", str(port), "--engine", engine],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip


async def health(target: str) -> int | None:
    try:
        async with aio_channel(target) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            return int(resp.status)
    except grpc.aio.AioRpcError:
        return None


async def wait_for(target: str, status: int, timeout: float, seen: list[int] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = await health(target)
        if seen is not None and current is not None and (not seen or seen[-1] != current):
            seen.append(current)
        if current == status:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{target} did not reach status {status} in {timeout} s (seen {seen})")


def engine_core(proc: subprocess.Popen[bytes]) -> psutil.Process:
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
                return child
        except psutil.Error:
            continue
    raise AssertionError("no vLLM EngineCore process found")


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            for child in psutil.Process(p.pid).children(recursive=True):
                child.kill()
            p.kill()


async def test_vllm_health_follows_the_engine(tmp_path: Path, reaper, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = spawn_replica("vllm", port, artifacts / "replica-health.log")
    reaper.append(proc)
    seen: list[int] = []
    await wait_for(target, SERVING, timeout=300, seen=seen)
    assert seen[0] == NOT_SERVING, "health must say NOT_SERVING while the engine loads"

    core = engine_core(proc)
    core.send_signal(signal.SIGSTOP)  # a hung engine: alive, but it never answers
    try:
        await wait_for(target, NOT_SERVING, timeout=20)
    finally:
        core.send_signal(signal.SIGCONT)
    await wait_for(target, SERVING, timeout=20)

    core.kill()  # a dead engine
    await wait_for(target, NOT_SERVING, timeout=30)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


async def test_sigterm_drains_in_flight_streams(reaper, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = spawn_replica("reference", port, artifacts / "replica-drain.log")
    reaper.append(proc)
    await wait_for(target, SERVING, timeout=120)
    async with aio_channel(target) as ch:
        stub = generation_pb2_grpc.GenerationStub(ch)
        req = g.GenerateRequest(
            prompt="Count: 1, 2, 3,", sampling=g.SamplingParams(temperature=0, max_tokens=40)
        )
        call = stub.Generate(req)
        chunks = []
        async for chunk in call:
            chunks.append(chunk)
            if len(chunks) == 1:
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                async with aio_channel(target) as ch2:
                    late = generation_pb2_grpc.GenerationStub(ch2).Generate(req)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        async for _ in late:
                            pass
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert chunks[-1].finish_reason == g.FINISH_REASON_LENGTH
        assert chunks[-1].usage.completion_tokens == 40
    assert proc.wait(timeout=30) == 0
