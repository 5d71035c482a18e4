"""`tviz serve gateway`: the front door in front of the replicas."""

from __future__ import annotations

import asyncio
import logging

from gateway.metrics import GatewayMetrics
from gateway.router import Router
from gateway.service import GatewayServicer, tokenizer_digest
from gateway.settings import GatewaySettings
from gateway.store import SharedStore
from gateway.upstream import ReplicaPool
from tviz.model.tokenizer import Tokenizer
from tviz.server import GrpcServer

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        section = settings.gateway
        if not section.replicas and not section.replicas_dns:
            raise ValueError("configure gateway.replicas (host:port list) or gateway.replicas_dns")
        self.metrics = GatewayMetrics.get()
        directory = settings.model.directory
        tokenizer = Tokenizer(directory)
        self.store = SharedStore(
            section.redis_url, section.redis_prefix, section.redis_timeout_s,
            section.local_cache_entries, self.metrics,
        )  # fmt: skip
        self.pool = ReplicaPool(section, self.metrics)
        self.router = Router(section, self.pool, self.store, self.metrics)
        self.servicer = GatewayServicer(
            section, tokenizer, tokenizer_digest(directory), self.pool, self.router, self.store,
            self.metrics,
        )  # fmt: skip
        self.server = GrpcServer(section.server, [self.servicer.service()])

    async def start(self) -> int:
        await self.pool.start()
        port = await self.server.start()
        await self.server.set_serving(True)
        log.info(
            "gateway on port %d: %d replicas (%d healthy), routing %s, Redis %s",
            port, len(self.pool.upstreams), len(self.pool.available()),
            self.router.settings.routing, "on" if self.store.redis is not None else "off",
        )  # fmt: skip
        return port

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)
        await self.pool.stop()
        await self.store.close()


async def serve(settings: GatewaySettings) -> None:
    gateway = Gateway(settings)
    await gateway.start()
    await gateway.server.wait_for_signal()
    await gateway.stop()


def main(settings: GatewaySettings | None = None) -> None:
    from tviz.logs import setup_logging

    settings = settings or GatewaySettings()
    setup_logging(settings.log)
    asyncio.run(serve(settings))
