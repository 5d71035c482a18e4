"""The grpc.aio server factory: health, reflection, error mapping, API keys, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.helpers.factory_server import SERVICE, build
from tviz.client import aio_channel
from tviz.config import ServerSettings, hash_api_key


def _echo(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    return channel.unary_unary(f"/{SERVICE}/Echo")


@pytest.fixture
async def server_port() -> AsyncIterator[int]:
    server = build(ServerSettings(port=0, api_key_hashes=[hash_api_key("k1")]))
    port = await server.start()
    await server.set_serving(True)
    yield port
    await server.stop(0)


async def test_health_and_reflection_in_process(server_port: int) -> None:
    async with aio_channel(f"127.0.0.1:{server_port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        resp = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        names = set()
        async for r in stub.ServerReflectionInfo(iter([req])):
            names |= {s.name for s in r.list_services_response.service}
        assert {
            SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names


async def test_api_key_required(server_port: int) -> None:
    async with aio_channel(f"127.0.0.1:{server_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _echo(ch)(b"hi")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "x-api-key" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _echo(ch)(b"hi", metadata=(("x-api-key", "wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await _echo(ch)(b"hi", metadata=(("x-api-key", "k1"),)) == b"hi"
        bearer = (("authorization", "Bearer k1"),)
        assert await _echo(ch)(b"hi", metadata=bearer) == b"hi"


async def test_errors_map_to_status_without_leaking(server_port: int) -> None:
    md = (("x-api-key", "k1"),)
    async with aio_channel(f"127.0.0.1:{server_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _echo(ch)(b"invalid", metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "payload" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _echo(ch)(b"boom", metadata=md)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (err.value.details() or "")


def test_sigterm_drains_in_flight_call_then_exits() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.factory_server", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        port = int(line.split()[1])

        async def scenario() -> None:
            async with aio_channel(f"127.0.0.1:{port}") as ch:
                health = health_pb2_grpc.HealthStub(ch)
                resp = await health.Check(health_pb2.HealthCheckRequest())
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
                slow = asyncio.ensure_future(_echo(ch)(b"sleep1.0"))
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                # The call in flight when SIGTERM arrived still completes.
                assert await slow == b"sleep1.0"

        asyncio.run(scenario())
        start = time.monotonic()
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - start < 10
    finally:
        proc.kill()
