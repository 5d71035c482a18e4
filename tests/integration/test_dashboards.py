"""Every Grafana panel's query returns data from a real Prometheus scraping the running stack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port
from tests.integration.test_gateway import gateway_settings, started
from tviz import monitoring
from tviz.client import aio_channel
from tviz.metrics_http import start_metrics_server
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc, inspector_pb2, inspector_pb2_grpc

pytestmark = pytest.mark.integration


def query(port: int, expr: str) -> list[dict]:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def has_data(result: list[dict]) -> bool:  # type: ignore[type-arg]
    return any(not math.isnan(float(r["value"][1])) for r in result)


async def load(stub, replica_stub, inspector, seconds: float) -> None:  # type: ignore[no-untyped-def]
    system = "You answer questions about the tviz project in one short sentence. " * 10
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        cached = g.GenerateRequest(
            prompt="Name a fruit:", sampling=g.SamplingParams(temperature=0.0, max_tokens=6)
        )
        shared = g.GenerateRequest(
            chat=g.ChatMessages(messages=[g.ChatMessage(role="system", content=system), g.ChatMessage(role="user", content=f"Question {i}?")]),
            sampling=g.SamplingParams(temperature=0.0, max_tokens=6), cache=g.CACHE_MODE_BYPASS,
        )  # fmt: skip
        for req in (cached, shared):
            [c async for c in stub.Generate(req)]
        for bad_stub in (stub, replica_stub):
            bad = g.GenerateRequest(prompt="x", sampling=g.SamplingParams(top_p=2))
            with contextlib.suppress(grpc.aio.AioRpcError):
                [c async for c in bad_stub.Generate(bad)]
        await inspector.Profile(
            inspector_pb2.ProfileRequest(
                input=inspector_pb2.ModelInput(prompt="Hello there"), repeats=1
            )
        )
        [
            c
            async for c in inspector.Inspect(
                inspector_pb2.InspectRequest(
                    input=inspector_pb2.ModelInput(prompt="Hi"), layers=[0]
                )
            )
        ]


async def test_every_dashboard_panel_has_data(
    vllm_replica, inspector_target: str, tmp_path: Path, artifacts: Path
) -> None:  # type: ignore[no-untyped-def]
    if monitoring.prometheus_binary() is None:
        pytest.fail("prometheus is missing: scripts/test.sh installs Debian's prometheus package")
    metrics_port, prom_port = free_port(), free_port()
    # This process runs the replica, the gateway and the inspector: one endpoint serves them all.
    metrics = start_metrics_server(metrics_port)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        monitoring.prometheus_config({"tviz": [f"127.0.0.1:{metrics_port}"]}, interval_s=1)
    )
    gw = await started(gateway_settings([vllm_replica.target], None))
    with (artifacts / "prometheus.log").open("wb") as log:
        prom = subprocess.Popen(
            monitoring.command(config, tmp_path / "data", prom_port),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with (
            aio_channel(gw.target) as ch,
            aio_channel(vllm_replica.target) as rch,
            aio_channel(inspector_target) as ich,
        ):  # type: ignore[attr-defined]
            await asyncio.sleep(3)
            await load(
                generation_pb2_grpc.GenerationStub(ch),
                generation_pb2_grpc.GenerationStub(rch),
                inspector_pb2_grpc.InspectorStub(ich),
                15,
            )
        await asyncio.sleep(2)
        queries = monitoring.dashboard_queries()
        assert len(queries) >= 17
        missing: list[str] = []
        deadline = time.monotonic() + 30
        while True:
            missing = [
                f"{panel}: {expr}"
                for panel, exprs in queries.items()
                for expr in exprs
                if not has_data(query(prom_port, expr))
            ]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        assert not missing, "panels without data:\n" + "\n".join(missing)
    finally:
        metrics.shutdown()
        prom.terminate()
        prom.wait(timeout=20)
        await gw.stop(0)
