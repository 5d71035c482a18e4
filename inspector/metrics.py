"""All Prometheus metrics of the inspector (tviz_inspector_*)."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

# Sub-millisecond to seconds: one layer of a small model on a CPU is ~0.1-5 ms.
LAYER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class InspectorMetrics:
    @classmethod
    @functools.cache
    def get(cls) -> InspectorMetrics:
        """One set per process: prometheus_client registers collectors globally."""
        return cls()

    def __init__(self) -> None:
        self.layer_latency = Histogram(
            "tviz_inspector_layer_latency_seconds",
            "Latency of one layer's attention or MLP sub-block, measured by Profile",
            ["layer", "part"],
            buckets=LAYER_BUCKETS,
        )
        self.request_latency = Histogram(
            "tviz_inspector_request_seconds",
            "Inspector RPC latency, first byte to last",
            ["rpc"],
            buckets=REQUEST_BUCKETS,
        )
        self.requests = Counter(
            "tviz_inspector_requests", "Inspector RPCs by final status", ["rpc", "code"]
        )
        self.tokens = Counter("tviz_inspector_tokens", "Input tokens processed", ["rpc"])
        self.bytes_sent = Counter(
            "tviz_inspector_tensor_bytes", "Tensor bytes streamed to clients", ["rpc"]
        )
        self.running = Gauge("tviz_inspector_running", "Model jobs running now")
        self.queued = Gauge("tviz_inspector_queued", "Model jobs waiting for a slot")

    def observe_profile(self, samples: list[dict[str, float]]) -> None:
        for sample in samples:
            for label, ms in sample.items():
                if label.startswith("layers."):
                    _, layer, part = label.split(".")
                    self.layer_latency.labels(layer=layer, part=part).observe(ms / 1000)
