"""The replica's own metrics (tviz_replica_*). vLLM's `vllm:*` metrics share the registry."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram


class ReplicaMetrics:
    def __init__(self) -> None:
        self.active_streams = Gauge("tviz_replica_active_streams", "Generate streams open now")
        self.requests = Counter(
            "tviz_replica_requests", "Generate calls by final gRPC status", ["code"]
        )
        self.stream_seconds = Histogram(
            "tviz_replica_stream_seconds",
            "Generate stream duration at the gRPC layer",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.healthy = Gauge("tviz_replica_healthy", "1 when the last engine probe succeeded")
        self.probe_seconds = Histogram(
            "tviz_replica_probe_seconds",
            "Time of the periodic one-token engine probe",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    @classmethod
    @functools.cache
    def get(cls) -> ReplicaMetrics:
        """One set per process: prometheus_client registers collectors globally."""
        return cls()
