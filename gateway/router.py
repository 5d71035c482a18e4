"""Routing policies: round robin, least loaded, and prefix affinity.

prefix_affinity hashes the request's leading token blocks and sends equal prefixes to the same
replica, so vLLM's prefix cache there gets the hits. The replica is picked by rendezvous
(highest-random-weight) hashing with a load bound, and the choice is stored in Redis so every
gateway process routes a given prefix the same way.
"""

from __future__ import annotations

import hashlib
import itertools
from array import array

from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySection
from gateway.store import SharedStore
from gateway.upstream import ReplicaPool, Upstream
from tviz.errors import Unavailable


def prefix_hash(ids: list[int], block: int, blocks: int) -> str | None:
    """Hash of the first `blocks` full blocks of `block` tokens (None if not even one)."""
    n = min(blocks, len(ids) // block) * block
    if n == 0:
        return None
    return hashlib.sha256(array("l", ids[:n]).tobytes()).hexdigest()[:32]


def rendezvous(key: str, targets: list[str]) -> list[str]:
    """Targets ordered by their hash with `key`: stable when other targets come and go."""
    return sorted(
        targets, key=lambda t: hashlib.sha256(f"{key}|{t}".encode()).digest(), reverse=True
    )


class Router:
    def __init__(
        self,
        settings: GatewaySection,
        pool: ReplicaPool,
        store: SharedStore,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.store = store
        self.metrics = metrics
        self._rr = itertools.count()

    async def choose(self, ids: list[int], exclude: set[str]) -> Upstream:
        candidates = [u for u in self.pool.available() if u.target not in exclude]
        if not candidates:
            raise Unavailable("no healthy replica available")
        policy = self.settings.routing
        if policy == "round_robin":
            chosen = candidates[next(self._rr) % len(candidates)]
        elif policy == "least_loaded":
            chosen = self._least_loaded(candidates)
        else:
            chosen = await self._affinity(ids, candidates)
        self.metrics.routing.labels(policy=policy, replica=chosen.target).inc()
        return chosen

    def _least_loaded(self, candidates: list[Upstream]) -> Upstream:
        start = next(self._rr)  # rotate among equals
        ordered = candidates[start % len(candidates) :] + candidates[: start % len(candidates)]
        return min(ordered, key=lambda u: u.load)

    async def _affinity(self, ids: list[int], candidates: list[Upstream]) -> Upstream:
        h = prefix_hash(ids, self.settings.prefix_block_tokens, self.settings.prefix_blocks)
        if h is None:
            return self._least_loaded(candidates)
        by_target = {u.target: u for u in candidates}
        total = sum(u.inflight for u in self.pool.upstreams.values())
        bound = self.settings.load_bound * (total + 1) / len(candidates)

        def fits(u: Upstream) -> bool:
            return u.inflight < bound

        key = self.store.key("affinity", h)
        ttl = self.settings.affinity_ttl_s
        stored = await self.store.get(key)
        if stored is not None:
            current = by_target.get(stored.decode())
            if current is not None and fits(current):
                return current
        ranked = [by_target[t] for t in rendezvous(h, list(by_target))]
        chosen = next((u for u in ranked if fits(u)), min(ranked, key=lambda u: u.load))
        if stored is None:
            winner = await self.store.set_nx(key, chosen.target.encode(), ttl)
            if (
                winner is not None
                and winner.decode() in by_target
                and fits(by_target[winner.decode()])
            ):
                return by_target[winner.decode()]  # another gateway decided first
        else:
            await self.store.set(key, chosen.target.encode(), ttl)  # the old one left or is full
        return chosen
