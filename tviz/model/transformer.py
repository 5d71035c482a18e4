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
    """Pre-allocated keys and values for every layer: (layers, B, K, max_len, E) each.

    Each batch row is a slot with its own filled length, so sequences of different lengths
    can decode together (the reference engine's batching). A forward pass names the rows it
    runs on; rows that share a length take the contiguous fast path.
    """

    def __init__(
        self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * batch  # positions filled, per row
        self.max_len = max_len

    @property
    def length(self) -> int:
        """Filled positions of row 0 (the single-sequence case)."""
        return self.lengths[0]

    def reset(self, row: int) -> None:
        self.lengths[row] = 0

    @property
    def nbytes(self) -> int:
        """Bytes holding filled positions (both K and V, all layers, all rows)."""
        per_pos = self.k[:, 0, :, 0].numel() * self.k.element_size() * 2
        return per_pos * sum(self.lengths)


@dataclass(frozen=True)
class Positions:
    """Where the new tokens of one forward pass sit: per batch row, its cache row and start."""

    rows: list[int]
    starts: list[int]

    @property
    def uniform(self) -> bool:
        return len(set(self.starts)) <= 1

    def row_index(self) -> slice | torch.Tensor:
        """A slice when the rows are contiguous (no copy), else an index tensor."""
        r0 = self.rows[0]
        if self.rows == list(range(r0, r0 + len(self.rows))):
            return slice(r0, r0 + len(self.rows))
        return torch.tensor(self.rows)

    def mask(self, T: int, S: int, device: torch.device) -> torch.Tensor:
        """True where query t of row b may attend to key s: s <= start_b + t. (B, 1, T, S)"""
        starts = torch.tensor(self.starts, device=device)[:, None]  # (B, 1)
        q_pos = starts + torch.arange(T, device=device)[None, :]  # (B, T)
        k_pos = torch.arange(S, device=device)
        return (k_pos[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, T, S)


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
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        pos: Positions | None,
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

        mask: torch.Tensor | None = None  # None = plain causal from position 0
        if cache is not None and pos is not None:
            k, v = self._cache_update(cache, pos, k, v)  # (B, K, S, E)
            if pos.starts[0] > 0 or not pos.uniform:
                mask = pos.mask(T, k.shape[2], q.device)

        if needs_explicit_attention(self.layer):
            y = self._explicit(q, k, v, mask)
        else:
            # Fast path: fused attention.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=(mask is None and T > 1), scale=self.scale,
                enable_gqa=cfg.n_kv_heads != cfg.n_heads,
            )  # fmt: skip  # (B, H, T, E)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_heads * cfg.head_dim)
        return tap(self._name("attn.out"), self.o_proj(y))

    def _cache_update(
        self, cache: KVCache, pos: Positions, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values of this layer; return every cached one. (B, K, S, E)"""
        rows = pos.row_index()
        T = k.shape[2]
        if pos.uniform:
            start, end = pos.starts[0], pos.starts[0] + T
            cache.k[self.layer, rows, :, start:end] = k
            cache.v[self.layer, rows, :, start:end] = v
            return cache.k[self.layer, rows, :, :end], cache.v[self.layer, rows, :, :end]
        # Rows at different lengths: one new token each, written at its own position.
        assert T == 1, "rows at different positions decode one token at a time"
        row_t = torch.tensor(pos.rows) if isinstance(rows, slice) else rows
        start_t = torch.tensor(pos.starts)
        cache.k[self.layer, row_t, :, start_t] = k[:, :, 0]
        cache.v[self.layer, row_t, :, start_t] = v[:, :, 0]
        end = max(pos.starts) + 1
        return cache.k[self.layer, rows, :, :end], cache.v[self.layer, rows, :, :end]

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention written out step by step, so every intermediate can be tapped."""
        g = self.cfg.group_size
        k = k.repeat_interleave(g, dim=1)  # (B, H, S, E): each KV head serves g query heads
        v = v.repeat_interleave(g, dim=1)
        T, S = q.shape[2], k.shape[2]
        scores = tap(self._name("attn.scores"), (q @ k.transpose(-2, -1)) * self.scale)  # (B,H,T,S)
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        masked = scores.masked_fill(~mask, float("-inf"))
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
        pos: Positions | None,
        clock: Clock,
    ) -> torch.Tensor:
        name = lambda short: layer_tap(self.layer, short)  # noqa: E731
        h = tap(name("attn_norm"), self.input_layernorm(x))
        x = tap(name("resid_mid"), x + self.self_attn(h, cos, sin, cache, pos))
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
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        """Logits for `tokens` (B, T). Returns (B, T, V), or (B, 1, V) with last_only.

        With a cache, the tokens continue each row's cached sequence; `rows` names the cache
        rows the batch rows use (default 0..B-1). Rows at different lengths take T == 1.
        """
        B, T = tokens.shape
        pos = None
        if cache is not None:
            rows = rows if rows is not None else list(range(B))
            pos = Positions(rows, [cache.lengths[r] for r in rows])
            end = max(pos.starts) + T
            if end > cache.max_len:
                raise ValueError(f"{end} positions exceed the cache's {cache.max_len}")
            cos_all, sin_all = self.rope(end)
            if pos.uniform:
                cos, sin = cos_all[pos.starts[0] : end], sin_all[pos.starts[0] : end]  # (T, E)
            else:
                if T != 1:
                    raise ValueError("rows at different positions decode one token at a time")
                idx = torch.tensor(pos.starts, device=cos_all.device)
                cos, sin = (
                    cos_all[idx][:, None, None, :],
                    sin_all[idx][:, None, None, :],
                )  # (B,1,1,E)
        else:
            if self.cfg.max_position < T:
                raise ValueError(f"{T} positions exceed the model's {self.cfg.max_position}")
            cos, sin = self.rope(T)
        x = tap("embed", self.embed_tokens(tokens))  # (B, T, D)
        clock("embed")
        for block in self.layers:
            x = block(x, cos, sin, cache, pos, clock)
        if cache is not None and pos is not None:
            for r in pos.rows:
                cache.lengths[r] += T
        if last_only and not tap_enabled("final_norm") and not tap_enabled("logits"):
            x = x[:, -1:]
        x = tap("final_norm", self.norm(x))
        logits = tap("logits", self.lm_head(x))  # (B, T, V)
        clock("head")
        return logits
