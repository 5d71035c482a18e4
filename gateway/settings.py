"""The gateway's configuration (TVIZ_GATEWAY__*)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tviz.config import CommonSettings, ServerSettings

Policy = Literal["round_robin", "least_loaded", "prefix_affinity"]
ContextStrategyName = Literal["reject", "truncate", "summarize"]


class GatewaySection(BaseModel):
    server: ServerSettings = Field(
        default_factory=lambda: ServerSettings(port=50050, max_message_bytes=4 * 1024 * 1024),
        description="max_message_bytes is also the largest request accepted.",
    )
    replicas: list[str] = Field(default_factory=list, description="Static host:port list.")
    replicas_dns: str = Field(
        default="", description="host:port of a headless Service; re-resolved periodically."
    )
    dns_refresh_s: float = Field(default=10.0, gt=0)
    routing: Policy = "least_loaded"
    redis_url: str | None = Field(
        default="redis://127.0.0.1:6379/0", description="Unset: in-process cache and limits."
    )
    redis_prefix: str = Field(default="tviz", description="Namespace of every Redis key.")
    redis_timeout_s: float = Field(default=0.5, gt=0)
    cache_ttl_s: int = Field(default=3600, ge=1)
    local_cache_entries: int = Field(default=1024, ge=1)
    max_inflight: int = Field(
        default=256, ge=1, description="Admission bound; more → RESOURCE_EXHAUSTED."
    )
    retries: int = Field(
        default=2, ge=0, description="Other replicas tried before the first token."
    )
    circuit_failures: int = Field(default=3, ge=1, description="Failures that open a circuit.")
    health_interval_s: float = Field(default=2.0, gt=0)
    prefix_block_tokens: int = Field(default=16, ge=1)
    prefix_blocks: int = Field(default=4, ge=1, description="Leading blocks that pick a replica.")
    affinity_ttl_s: int = Field(default=600, ge=1)
    load_bound: float = Field(default=1.5, ge=1.0, description="Consistent hashing load bound.")
    rate_limit_per_s: float | None = Field(
        default=None, gt=0, description="Per API key; unset = off."
    )
    rate_limit_burst: int = Field(default=20, ge=1)
    context_strategy: ContextStrategyName = Field(
        default="reject", description="Used when a request leaves it unspecified."
    )
    summary_max_tokens: int = Field(default=128, ge=16)
    keep_last_turns: int = Field(default=2, ge=1, description="Turns never truncated/summarized.")

    @model_validator(mode="after")
    def _some_replicas(self) -> GatewaySection:
        if self.replicas and self.replicas_dns:
            raise ValueError("set gateway.replicas or gateway.replicas_dns, not both")
        return self


class GatewaySettings(CommonSettings):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
