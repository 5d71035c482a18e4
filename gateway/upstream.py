"""The replicas behind the gateway: discovery, health, circuit breaking, reported load."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySection
from tviz.client import aio_channel
from tviz.errors import Unavailable
from tviz.v1 import generation_pb2_grpc, model_pb2

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Upstream:
    target: str
    channel: grpc.aio.Channel
    stub: generation_pb2_grpc.GenerationStub
    health: health_pb2_grpc.HealthStub
    inflight: int = 0
    reported_running: int = 0
    reported_waiting: int = 0
    healthy: bool = False
    failures: int = 0
    circuit_open: bool = False
    info: model_pb2.ModelInfo | None = field(default=None)

    @property
    def available(self) -> bool:
        return self.healthy and not self.circuit_open

    @property
    def load(self) -> int:
        """What least-loaded routing minimises: work in the replica plus its queue."""
        return max(self.inflight, self.reported_running) + self.reported_waiting


class ReplicaPool:
    def __init__(self, settings: GatewaySection, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.upstreams: dict[str, Upstream] = {}
        self._task: asyncio.Task[None] | None = None

    # -- membership --------------------------------------------------------------------------
    async def _resolve(self) -> list[str]:
        if not self.settings.replicas_dns:
            return list(self.settings.replicas)
        host, _, port = self.settings.replicas_dns.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve %s: %s", self.settings.replicas_dns, exc)
            return list(self.upstreams)
        targets = set()
        for family, *_, addr in infos:
            ip = str(addr[0])
            port_n = int(addr[1])
            targets.add(f"[{ip}]:{port_n}" if family == socket.AF_INET6 else f"{ip}:{port_n}")
        return sorted(targets)

    async def refresh_members(self) -> None:
        targets = await self._resolve()
        for target in targets:
            if target not in self.upstreams:
                ch = aio_channel(target)
                self.upstreams[target] = Upstream(
                    target,
                    ch,
                    generation_pb2_grpc.GenerationStub(ch),
                    health_pb2_grpc.HealthStub(ch),
                )
                log.info("replica %s added", target)
        for target in set(self.upstreams) - set(targets):
            upstream = self.upstreams.pop(target)
            await upstream.channel.close()
            self.metrics.replica_up.labels(replica=target).set(0)
            log.info("replica %s removed", target)

    # -- health ------------------------------------------------------------------------------
    async def check(self, upstream: Upstream) -> None:
        try:
            resp = await upstream.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            healthy = resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            healthy = False
        if healthy and upstream.info is None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                upstream.info = await upstream.stub.GetModelInfo(
                    model_pb2.GetModelInfoRequest(), timeout=5
                )
        if healthy and upstream.circuit_open:
            log.info("replica %s answers SERVING again: closing its circuit", upstream.target)
            upstream.circuit_open, upstream.failures = False, 0
        if healthy != upstream.healthy:
            log.info("replica %s is %s", upstream.target, "healthy" if healthy else "unhealthy")
        upstream.healthy = healthy
        self.metrics.replica_up.labels(replica=upstream.target).set(1 if upstream.available else 0)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(u) for u in list(self.upstreams.values())))

    async def _loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            ticks += 1
            if (
                self.settings.replicas_dns
                and ticks * self.settings.health_interval_s >= self.settings.dns_refresh_s
            ):
                ticks = 0
                await self.refresh_members()
            await self.check_all()

    async def start(self) -> None:
        await self.refresh_members()
        await self.check_all()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for u in self.upstreams.values():
            await u.channel.close()

    # -- outcomes ----------------------------------------------------------------------------
    def record_success(self, upstream: Upstream) -> None:
        upstream.failures = 0

    def record_failure(self, upstream: Upstream) -> None:
        upstream.failures += 1
        if upstream.failures >= self.settings.circuit_failures and not upstream.circuit_open:
            log.warning(
                "replica %s failed %d times: opening its circuit",
                upstream.target,
                upstream.failures,
            )
            upstream.circuit_open = True
            self.metrics.replica_up.labels(replica=upstream.target).set(0)
        # Whatever the count, re-check its health soon rather than trust it blindly.
        upstream.healthy = False
        asyncio.get_running_loop().create_task(self.check(upstream))

    def record_load(self, upstream: Upstream, metadata: grpc.aio.Metadata | None) -> None:
        if not metadata:
            return
        md = dict(metadata)
        with contextlib.suppress(KeyError, ValueError):
            upstream.reported_running = int(md["x-tviz-running"])
            upstream.reported_waiting = int(md["x-tviz-waiting"])

    def available(self) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.available]

    def model_info(self) -> model_pb2.ModelInfo:
        """What the healthy replicas serve (they must agree on the weights)."""
        infos = [u.info for u in self.available() if u.info is not None]
        if not infos:
            raise Unavailable("no healthy replica")
        digests = {i.weights_digest for i in infos}
        if len(digests) > 1:
            log.error("replicas serve different weights: %s", sorted(digests))
        return infos[0]
