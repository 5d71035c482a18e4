"""A Llama-family transformer in readable PyTorch, instrumented with named taps.

RMSNorm, HF's rotate-half RoPE, grouped-query attention, a SwiGLU MLP and (optionally) tied
embeddings. Parameter names follow HF's LlamaForCausalLM without the `model.` prefix, so an HF
directory loads without any permutation. Built on the meta device and filled from the
safetensors files with `assign=True`.

Shapes: B batch, T new positions, S key positions (cache + new), D d_model, H query heads,
K KV heads, E head_dim, F d_ff, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tviz.errors import WeightsError
from tviz.model.config import ModelConfig
from tviz.model.taps import layer_tap, needs_explicit_attention, tap, tap_enabled
from tviz.model.weights import weight_files

Clock = Callable[[str], None]


def _no_clock(_: str) -> None:
    return None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back, as HF does, so bfloat16 matches too.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(-2i/E) for i in [0, E/2): the rotation speed of each pair of dimensions."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)  # (E/2,)


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin in the rotate-half layout: both halves share a frequency. (length, E) each."""
    inv_freq = rope_inv_freq(head_dim, theta)
    positions = torch.arange(length, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]  # (length, E/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (length, E)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (B, H, T, E); cos, sin (T, E)
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Pre-allocated keys and values for every layer: (layers, B, K, max_len, E) each."""

    def __init__(
        self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled
        self.max_len = max_len

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, K, T, E) keys/values of `layer`; return all of them so far."""
        start, end = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    @property
    def nbytes(self) -> int:
        """Bytes holding filled positions (both K and V, all layers)."""
        per_pos = self.k[:, :, :, :1].numel() * self.k.element_size() * 2
        return per_pos * self.length


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        H, K, E, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
        self.q_proj = nn.Linear(D, H * E, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(D, K * E, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(D, K * E, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * E, D, bias=False)
        self.scale = 1.0 / math.sqrt(E)

    def _name(self, short: str) -> str:
        return layer_tap(self.layer, short)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, E)
        k = self.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # (B, K, T, E)
        v = self.v_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)  # (B, K, T, E)
        tap(self._name("attn.q"), q)
        tap(self._name("attn.k"), k)
        tap(self._name("attn.v"), v)
        q = tap(self._name("attn.q_rot"), apply_rope(q, cos, sin))
        k = tap(self._name("attn.k_rot"), apply_rope(k, cos, sin))

        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(self.layer, k, v)  # (B, K, S, E)
        S = k.shape[2]

        if needs_explicit_attention(self.layer):
            y = self._explicit(q, k, v, start)
        else:
            # Fast path: fused attention. Causal only matters when several new queries attend.
            mask = None
            if T > 1 and start > 0:
                mask = self._causal_mask(T, S, start, q.device)
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=(T > 1 and start == 0),
                scale=self.scale,
                enable_gqa=cfg.n_kv_heads != cfg.n_heads,
            )  # (B, H, T, E)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim)
        return tap(self._name("attn.out"), self.o_proj(y))

    @staticmethod
    def _causal_mask(T: int, S: int, start: int, device: torch.device) -> torch.Tensor:
        q_pos = torch.arange(start, start + T, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        return k_pos <= q_pos  # (T, S), True = may attend

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Attention written out step by step, so every intermediate can be tapped."""
        g = self.cfg.group_size
        k = k.repeat_interleave(g, dim=1)  # (B, H, S, E): each KV head serves g query heads
        v = v.repeat_interleave(g, dim=1)
        T, S = q.shape[2], k.shape[2]
        scores = tap(self._name("attn.scores"), (q @ k.transpose(-2, -1)) * self.scale)  # (B,H,T,S)
        allowed = self._causal_mask(T, S, start, q.device)
        masked = scores.masked_fill(~allowed, float("-inf"))
        tap(self._name("attn.masked_scores"), masked)
        pattern = torch.softmax(masked, dim=-1, dtype=torch.float32).to(q.dtype)
        tap(self._name("attn.pattern"), pattern)
        return tap(self._name("attn.head_out"), pattern @ v)  # (B, H, T, E)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = lambda short: layer_tap(self.layer, short)  # noqa: E731
        gate = tap(name("mlp.gate"), self.gate_proj(x))  # (B, T, F)
        up = tap(name("mlp.up"), self.up_proj(x))
        act = tap(name("mlp.act"), F.silu(gate) * up)
        return tap(name("mlp.down"), self.down_proj(act))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg, layer)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        clock: Clock,
    ) -> torch.Tensor:
        name = lambda short: layer_tap(self.layer, short)  # noqa: E731
        h = tap(name("attn_norm"), self.input_layernorm(x))
        x = tap(name("resid_mid"), x + self.self_attn(h, cos, sin, cache))
        clock(name("attn"))
        h = tap(name("mlp_norm"), self.post_attention_layernorm(x))
        x = tap(name("resid_post"), x + self.mlp(h))
        clock(name("mlp"))
        return x


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # (B, T, V), or (B, 1, V) with last_only


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, directory: Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> Transformer:
        """Build on the meta device, then assign the tensors of the safetensors files."""
        cfg = ModelConfig.from_dir(directory)
        with torch.device("meta"):
            model = cls(cfg)
        state: dict[str, torch.Tensor] = {}
        for file in weight_files(directory):
            try:
                tensors = load_file(file, device=device)
            except Exception as exc:  # safetensors raises several types for a damaged file
                raise WeightsError(f"weight file {file} cannot be read: {exc}") from None
            for name, tensor in tensors.items():
                state[name.removeprefix("model.")] = tensor.to(dtype)
        if cfg.tie_embeddings:
            state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))  # type: ignore[arg-type]
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        if missing:
            raise WeightsError(
                f"weights in {directory} lack {missing[:3]} ({len(missing)} missing)"
            )
        unexpected = sorted(set(state) - expected)
        for name in unexpected:
            del state[name]  # e.g. rotary_emb.inv_freq from old exports
        model.load_state_dict(state, assign=True, strict=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        return model.eval()

    # -- positional encoding -------------------------------------------------------------------
    def rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for positions [0, length), cached, in the parameters' dtype. (length, E)"""
        if self._rope is None or self._rope[0].shape[0] < length:
            size = max(length, min(self.cfg.max_position, 4096))
            cos, sin = rope_tables(size, self.cfg.head_dim, self.cfg.rope_theta)
            device = self.embed_tokens.weight.device
            self._rope = (cos.to(device), sin.to(device))
        dtype = self.embed_tokens.weight.dtype
        return self._rope[0][:length].to(dtype), self._rope[1][:length].to(dtype)

    # -- forward -------------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int) -> KVCache:
        w = self.embed_tokens.weight
        return KVCache(self.cfg, batch, max_len, w.dtype, w.device)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        clock: Clock = _no_clock,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for `tokens` (B, T), continuing after `cache` when given. Returns (B, T, V)."""
        T = tokens.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > (cache.max_len if cache is not None else self.cfg.max_position):
            raise ValueError(f"{start + T} positions exceed the model's or the cache's length")
        cos, sin = self.rope(start + T)
        cos, sin = cos[start:], sin[start:]  # (T, E)
        x = tap("embed", self.embed_tokens(tokens))  # (B, T, D)
        clock("embed")
        for block in self.layers:
            x = block(x, cos, sin, cache, clock)
        if cache is not None:
            cache.advance(T)
        if last_only and not tap_enabled("final_norm") and not tap_enabled("logits"):
            x = x[:, -1:]
        x = tap("final_norm", self.norm(x))
        logits = tap("logits", self.lm_head(x))  # (B, T, V)
        clock("head")
        return logits
