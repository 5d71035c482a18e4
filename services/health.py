"""Engine health: a periodic one-token probe with a timeout tells a hung engine from a busy one.

A busy engine still admits the probe into its next batch and answers within seconds; a hung or
dead one does not answer at all. The result drives grpc.health.v1 for the whole server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from services.engine import Engine
from services.metrics import ReplicaMetrics
from tviz.generation import Sampling

log = logging.getLogger(__name__)

PROBE_SAMPLING = Sampling(temperature=0.0, max_tokens=1)


class HealthProber:
    def __init__(
        self,
        engine: Engine,
        set_serving: Callable[[bool], Awaitable[None]],
        probe_ids: list[int],
        interval_s: float,
        timeout_s: float,
        metrics: ReplicaMetrics,
    ) -> None:
        self.engine = engine
        self.set_serving = set_serving
        self.probe_ids = probe_ids
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.healthy: bool | None = None
        self._count = 0

    async def probe_once(self) -> bool:
        self._count += 1
        request_id = f"tviz-health-probe-{self._count}"
        start = time.perf_counter()
        try:
            await self.engine.check_health()

            async def one_token() -> None:
                async for _ in self.engine.generate(self.probe_ids, PROBE_SAMPLING, 1, request_id):
                    pass

            await asyncio.wait_for(one_token(), self.timeout_s)
            ok = True
        except Exception as exc:
            if self.healthy is not False:
                log.error("engine probe failed: %s", exc or type(exc).__name__)
            ok = False
        self.metrics.probe_seconds.observe(time.perf_counter() - start)
        if ok != self.healthy:
            log.info("engine is %s", "healthy: SERVING" if ok else "unhealthy: NOT_SERVING")
            await self.set_serving(ok)
        self.healthy = ok
        self.metrics.healthy.set(1 if ok else 0)
        return ok

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe_once()
