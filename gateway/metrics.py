"""All Prometheus metrics of the gateway (tviz_gateway_*)."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.request_seconds = Histogram(
            "tviz_gateway_request_seconds", "Generate latency, request to last chunk",
            ["cache"], buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.ttft_seconds = Histogram(
            "tviz_gateway_ttft_seconds", "Time to the first token seen by the client",
            ["cache"], buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.requests = Counter("tviz_gateway_requests", "Generate calls by status", ["code"])
        self.tokens = Counter("tviz_gateway_tokens", "Tokens streamed to clients", ["kind"])
        self.cache = Counter(
            "tviz_gateway_cache", "Response cache outcomes", ["result"]
        )  # hit, miss, shared, store, bypass, error
        self.routing = Counter("tviz_gateway_routing", "Routing decisions", ["policy", "replica"])
        self.retries = Counter("tviz_gateway_retries", "Requests retried on another replica")
        self.upstream_errors = Counter(
            "tviz_gateway_upstream_errors", "Errors from replicas by status", ["replica", "code"]
        )
        self.inflight = Gauge(
            "tviz_gateway_inflight", "Requests in flight per replica", ["replica"]
        )
        self.replica_up = Gauge(
            "tviz_gateway_replica_up", "1 when the replica is healthy and its circuit closed",
            ["replica"],
        )  # fmt: skip
        self.redis_errors = Counter("tviz_gateway_redis_errors", "Redis operations that failed")
        self.rate_limited = Counter("tviz_gateway_rate_limited", "Requests refused by rate limit")
        self.context_actions = Counter(
            "tviz_gateway_context_actions", "Context strategy applied", ["action"]
        )

    @classmethod
    @functools.cache
    def get(cls) -> GatewayMetrics:
        """One set per process: prometheus_client registers collectors globally."""
        return cls()
