"""The architecture of a Llama-family model, read from an HF config.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tviz.errors import WeightsError
from tviz.model.weights import read_config

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int  # width of the residual stream
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (grouped-query attention)
    head_dim: int
    d_ff: int  # MLP hidden width
    rope_theta: float
    norm_eps: float
    max_position: int
    tie_embeddings: bool
    qkv_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @property
    def group_size(self) -> int:
        """Query heads that share one KV head."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_hf(cls, raw: dict) -> ModelConfig:
        model_type = raw.get("model_type", "")
        if model_type not in SUPPORTED_TYPES:
            raise WeightsError(
                f"model_type {model_type!r} is not a Llama-family architecture "
                f"(supported: {', '.join(SUPPORTED_TYPES)})"
            )
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise WeightsError(f"RoPE scaling {rope.get('rope_type')!r} is not supported")
        theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        n_heads = raw["num_attention_heads"]
        eos = raw.get("eos_token_id")
        return cls(
            vocab_size=raw["vocab_size"],
            d_model=raw["hidden_size"],
            n_layers=raw["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=raw.get("num_key_value_heads", n_heads),
            head_dim=raw.get("head_dim") or raw["hidden_size"] // n_heads,
            d_ff=raw["intermediate_size"],
            rope_theta=float(theta),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position=raw.get("max_position_embeddings", 2048),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=bool(raw.get("attention_bias", model_type == "qwen2")),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )

    @classmethod
    def from_dir(cls, directory: Path) -> ModelConfig:
        return cls.from_hf(read_config(directory))
