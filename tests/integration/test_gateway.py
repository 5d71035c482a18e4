"""The gateway with two real replicas (vLLM and the reference engine) and a real Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from gateway.main import Gateway
from gateway.settings import GatewaySection, GatewaySettings
from tests.conftest import free_port
from tests.integration.test_replica_lifecycle import SERVING, spawn_replica, wait_for
from tviz.client import aio_channel, auth_metadata
from tviz.config import ServerSettings, hash_api_key
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc

pytestmark = pytest.mark.integration


class RedisServer:
    """A redis-server of our own on a free port, so a test may stop and restart it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def gateway_settings(
    replicas: list[str], redis_url: str | None, **section: object
) -> GatewaySettings:
    server = section.pop("server", ServerSettings(port=0, max_message_bytes=4 * 1024 * 1024))
    return GatewaySettings(
        gateway=GatewaySection(
            server=server, replicas=replicas, redis_url=redis_url,  # type: ignore[arg-type]
            redis_prefix=f"tviz-test-{uuid.uuid4().hex[:8]}", health_interval_s=0.5, **section,  # type: ignore[arg-type]
        )
    )  # fmt: skip


async def started(settings: GatewaySettings) -> Gateway:
    gateway = Gateway(settings)
    await gateway.start()
    gateway.target = f"127.0.0.1:{gateway.server.port}"  # type: ignore[attr-defined]
    return gateway


@pytest.fixture(scope="module")
async def gateway(vllm_replica, reference_replica, redis_server) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    gw = await started(
        gateway_settings(
            [vllm_replica.target, reference_replica.target], redis_server.url, routing="round_robin"
        )
    )
    yield gw
    await gw.stop(0)


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[generation_pb2_grpc.GenerationStub]:
    async with aio_channel(gateway.target) as ch:  # type: ignore[attr-defined]
        yield generation_pb2_grpc.GenerationStub(ch)


def question(
    text: str, max_tokens: int = 12, cache: int = 0, **sampling: object
) -> g.GenerateRequest:
    return g.GenerateRequest(
        chat=g.ChatMessages(messages=[g.ChatMessage(role="user", content=text)]),
        sampling=g.SamplingParams(**{"temperature": 0.0, "max_tokens": max_tokens, **sampling}),  # type: ignore[arg-type]
        cache=cache,  # type: ignore[arg-type]
    )


async def collect(stub, request, **kw):  # type: ignore[no-untyped-def]
    call = stub.Generate(request, **kw)
    chunks = [c async for c in call]
    served = dict(await call.trailing_metadata() or ()).get("x-tviz-replica", "")
    return chunks, served


def served_total(*replicas) -> int:  # type: ignore[no-untyped-def]
    return sum(r.servicer.served for r in replicas)


async def test_france_end_to_end_through_the_gateway(stub, vllm_replica) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):  # round robin: one of the two goes through vLLM
        chunks, served = await collect(
            stub, question("What is the capital of France?", cache=g.CACHE_MODE_BYPASS)
        )
        assert "Paris" in "".join(c.text for c in chunks)
        if served == vllm_replica.target:
            break
    assert served == vllm_replica.target


async def test_repeated_request_is_served_from_the_cache(
    stub, vllm_replica, reference_replica
) -> None:  # type: ignore[no-untyped-def]
    req = question(f"Name a colour. ({uuid.uuid4().hex[:6]})")
    first, served1 = await collect(stub, req)
    before = served_total(vllm_replica, reference_replica)
    second, served2 = await collect(stub, req)
    assert served_total(vllm_replica, reference_replica) == before  # no second upstream request
    assert served1 != "cache" and served2 == "cache"
    assert [(c.text, list(c.token_ids)) for c in first] == [
        (c.text, list(c.token_ids)) for c in second
    ]
    assert not first[-1].usage.response_cache_hit and second[-1].usage.response_cache_hit
    _, served3 = await collect(
        stub, g.GenerateRequest(chat=req.chat, sampling=req.sampling, cache=g.CACHE_MODE_BYPASS)
    )
    assert served3 != "cache" and served_total(vllm_replica, reference_replica) == before + 1


async def test_identical_concurrent_requests_share_one_generation(
    stub, vllm_replica, reference_replica
) -> None:  # type: ignore[no-untyped-def]
    req = question(f"Tell me about rivers. ({uuid.uuid4().hex[:6]})", max_tokens=16)
    before = served_total(vllm_replica, reference_replica)
    results = await asyncio.gather(*(collect(stub, req) for _ in range(10)))
    assert served_total(vllm_replica, reference_replica) == before + 1
    texts = {"".join(c.text for c in chunks) for chunks, _ in results}
    assert len(texts) == 1


async def test_sampled_requests_are_not_cached(stub, vllm_replica, reference_replica) -> None:  # type: ignore[no-untyped-def]
    req = g.GenerateRequest(
        prompt="Once upon a time", sampling=g.SamplingParams(temperature=0.9, max_tokens=4)
    )
    before = served_total(vllm_replica, reference_replica)
    await collect(stub, req)
    await collect(stub, req)
    assert served_total(vllm_replica, reference_replica) == before + 2


async def test_bad_requests_pass_through_as_invalid_argument(stub) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, question("hi", temperature=-1.0))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in (
        err.value.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, g.GenerateRequest(prompt="hi", model="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancel_through_the_gateway_aborts_in_the_engine(
    stub, vllm_replica, reference_replica
) -> None:  # type: ignore[no-untyped-def]
    req = g.GenerateRequest(
        prompt="Count: 1, 2, 3,", sampling=g.SamplingParams(temperature=0.5, max_tokens=1000)
    )
    call = stub.Generate(req)
    async for _ in call:
        break
    call.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        vllm_replica.engine.num_unfinished() or reference_replica.engine.num_unfinished()
    ):
        await asyncio.sleep(0.05)
    assert (
        vllm_replica.engine.num_unfinished() == 0 and reference_replica.engine.num_unfinished() == 0
    )


def long_conversation(turns: int = 24) -> list[g.ChatMessage]:
    msgs = [g.ChatMessage(role="system", content="You are a terse assistant.")]
    for i in range(turns):
        msgs.append(
            g.ChatMessage(
                role="user",
                content=f"Fact {i}: " + "the quick brown fox jumps over the lazy dog " * 12,
            )
        )
        msgs.append(g.ChatMessage(role="assistant", content=f"Noted fact {i}."))
    msgs.append(g.ChatMessage(role="user", content="What was fact 0 about?"))
    return msgs


async def test_context_strategies(stub) -> None:  # type: ignore[no-untyped-def]
    chat = g.ChatMessages(messages=long_conversation())
    sampling = g.SamplingParams(temperature=0.0, max_tokens=8)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub, g.GenerateRequest(chat=chat, sampling=sampling))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "context" in (
        err.value.details() or ""
    )

    truncated, _ = await collect(
        stub,
        g.GenerateRequest(
            chat=chat, sampling=sampling, context_strategy=g.CONTEXT_STRATEGY_TRUNCATE
        ),
    )
    usage = truncated[-1].usage
    assert usage.context_action == "truncated" and usage.turns_affected > 0
    assert usage.prompt_tokens + 8 <= 2048

    summarized, _ = await collect(
        stub,
        g.GenerateRequest(
            chat=chat, sampling=sampling, context_strategy=g.CONTEXT_STRATEGY_SUMMARIZE
        ),
    )
    usage = summarized[-1].usage
    assert (
        usage.context_action == "summarized"
        and usage.turns_affected == len(long_conversation()) - 1 - 2
    )
    assert usage.prompt_tokens < 1000


async def test_prefix_affinity_across_two_gateway_processes(
    vllm_replica, reference_replica, redis_server, artifacts: Path
) -> None:  # type: ignore[no-untyped-def]
    replicas = [vllm_replica.target, reference_replica.target]
    settings = gateway_settings(replicas, redis_server.url, routing="prefix_affinity")
    gw = await started(settings)
    port2 = free_port()
    env = {
        **os.environ,
        "TVIZ_GATEWAY__REDIS_URL": redis_server.url,
        "TVIZ_GATEWAY__REDIS_PREFIX": settings.gateway.redis_prefix,
    }
    cli = Path(sys.executable).parent / "tviz"
    with (artifacts / "gateway-2.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(cli), "serve", "gateway", "--port", str(port2), "--replicas", ",".join(replicas), "--routing", "prefix_affinity"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        await wait_for(f"127.0.0.1:{port2}", SERVING, timeout=60)
        systems = [
            f"You are assistant number {k}. " + "Answer briefly and politely, citing sources. " * 8
            for k in range(3)
        ]
        for k, system in enumerate(systems):
            chosen = set()
            for i in range(4):
                req = g.GenerateRequest(
                    chat=g.ChatMessages(messages=[g.ChatMessage(role="system", content=system), g.ChatMessage(role="user", content=f"Question {i}?")]),
                    sampling=g.SamplingParams(temperature=0.0, max_tokens=2), cache=g.CACHE_MODE_BYPASS,
                )  # fmt: skip
                target = gw.target if (i + k) % 2 == 0 else f"127.0.0.1:{port2}"  # type: ignore[attr-defined]
                async with aio_channel(target) as ch:
                    _, served = await collect(generation_pb2_grpc.GenerationStub(ch), req)
                chosen.add(served)
            assert len(chosen) == 1, f"prefix {k} went to {chosen}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        await gw.stop(0)


async def test_sigkilled_replica_is_routed_around(redis_server, artifacts: Path) -> None:  # type: ignore[no-untyped-def]
    ports = [free_port(), free_port()]
    procs = [
        spawn_replica("reference", p, artifacts / f"gw-kill-replica-{i}.log")
        for i, p in enumerate(ports)
    ]
    targets = [f"127.0.0.1:{p}" for p in ports]
    gw = None
    try:
        for t in targets:
            await wait_for(t, SERVING, timeout=120)
        gw = await started(gateway_settings(targets, redis_server.url, routing="round_robin"))
        async with aio_channel(gw.target) as ch:  # type: ignore[attr-defined]
            stub = generation_pb2_grpc.GenerationStub(ch)
            req = g.GenerateRequest(
                prompt="Hello", sampling=g.SamplingParams(temperature=0.5, max_tokens=3)
            )
            assert {(await collect(stub, req))[1] for _ in range(4)} == set(targets)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            results = [await collect(stub, req) for _ in range(6)]
            assert {served for _, served in results} == {targets[1]}
            assert all(chunks[-1].finish_reason for chunks, _ in results)
    finally:
        if gw is not None:
            await gw.stop(0)
        for p in procs:
            p.kill()


async def test_redis_outage_degrades_to_uncached_and_recovers(
    vllm_replica, reference_replica
) -> None:  # type: ignore[no-untyped-def]
    own = RedisServer()
    own.start()
    gw = await started(gateway_settings([reference_replica.target], own.url))
    try:
        async with aio_channel(gw.target) as ch:  # type: ignore[attr-defined]
            stub = generation_pb2_grpc.GenerationStub(ch)
            req = question(f"Say yes. ({uuid.uuid4().hex[:6]})", max_tokens=3)
            _, served = await collect(stub, req)
            assert served != "cache" and (await collect(stub, req))[1] == "cache"
            own.stop()
            fresh = question(f"Say no. ({uuid.uuid4().hex[:6]})", max_tokens=3)
            chunks, _ = await collect(stub, fresh)
            assert chunks[-1].finish_reason
            assert not gw.store.shared
            own.start()  # same port: the client reconnects on its own
            chunks, _ = await collect(
                stub, question(f"Say maybe. ({uuid.uuid4().hex[:6]})", max_tokens=3)
            )
            assert chunks[-1].finish_reason and gw.store.shared
            assert own.client().keys(f"{gw.store.prefix}:cache:*")
    finally:
        await gw.stop(0)
        own.stop()


async def test_api_keys_rate_limit_and_admission(reference_replica, redis_server) -> None:  # type: ignore[no-untyped-def]
    server = ServerSettings(port=0, api_key_hashes=[hash_api_key("alice"), hash_api_key("bob")])
    gw = await started(
        gateway_settings(
            [reference_replica.target],
            redis_server.url,
            server=server,
            rate_limit_per_s=0.2,
            rate_limit_burst=2,
        )
    )
    try:
        async with aio_channel(gw.target) as ch:  # type: ignore[attr-defined]
            stub = generation_pb2_grpc.GenerationStub(ch)
            req = g.GenerateRequest(
                prompt="Hi", sampling=g.SamplingParams(temperature=0.7, max_tokens=2)
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub, req, metadata=auth_metadata("mallory"))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub, req)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for _ in range(2):
                await collect(stub, req, metadata=auth_metadata("alice"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub, req, metadata=auth_metadata("alice"))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in" in (
                err.value.details() or ""
            )
            await collect(stub, req, metadata=auth_metadata("bob"))  # a separate bucket per key
    finally:
        await gw.stop(0)
    gw = await started(gateway_settings([reference_replica.target], None, max_inflight=1))
    try:
        async with aio_channel(gw.target) as ch:  # type: ignore[attr-defined]
            stub = generation_pb2_grpc.GenerationStub(ch)
            slow = asyncio.ensure_future(
                collect(
                    stub,
                    g.GenerateRequest(
                        prompt="Count:", sampling=g.SamplingParams(temperature=0.5, max_tokens=60)
                    ),
                )
            )
            await asyncio.sleep(0.5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(
                    stub, g.GenerateRequest(prompt="Hi", sampling=g.SamplingParams(max_tokens=2))
                )
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await slow)[0][-1].finish_reason
    finally:
        await gw.stop(0)


async def test_refresh_local_cache_dns_and_request_size(reference_replica) -> None:  # type: ignore[no-untyped-def]
    port = reference_replica.target.rsplit(":", 1)[1]
    # DNS discovery (a headless Service in Kubernetes): "localhost" resolves to the replica
    settings = gateway_settings([], None)
    section = settings.gateway.model_copy(
        update={"replicas": [], "replicas_dns": f"localhost:{port}"}
    )
    gw = await started(settings.model_copy(update={"gateway": section}))
    try:
        assert f"127.0.0.1:{port}" in gw.pool.upstreams
        async with aio_channel(gw.target) as ch:  # type: ignore[attr-defined]
            stub = generation_pb2_grpc.GenerationStub(ch)
            req = question(f"Pick a number. ({uuid.uuid4().hex[:6]})", max_tokens=3)
            before = reference_replica.servicer.served
            await collect(stub, req)
            assert (await collect(stub, req))[1] == "cache"  # no Redis: the in-process LRU answers
            refresh = g.GenerateRequest(
                chat=req.chat, sampling=req.sampling, cache=g.CACHE_MODE_REFRESH
            )
            assert (await collect(stub, refresh))[1] != "cache"
            assert reference_replica.servicer.served == before + 2
            assert (await collect(stub, req))[1] == "cache"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub, g.GenerateRequest(prompt="x" * (5 * 1024 * 1024)))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await gw.stop(0)
