"""Positional encodings for teaching and comparison: the classic sinusoidal table and the
model's RoPE, each with a position-to-position similarity that makes it readable."""

from __future__ import annotations

import torch

from tviz.model.transformer import rope_inv_freq, rope_tables


def sinusoidal_table(length: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)). (length, d)"""
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)  # (ceil(d/2),)
    angle = pos / base ** (two_i / d)  # (L, ceil(d/2))
    table = torch.zeros(length, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d // 2])
    return table.float()


def cosine_similarity_matrix(rows: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every pair of rows. (L, L)"""
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def rope_similarity(length: int, head_dim: int, theta: float) -> torch.Tensor:
    """mean_f cos((i - j) * f): the dot product of a fixed unit vector rotated to positions i
    and j, averaged over RoPE's frequency pairs. Depends only on i - j. (L, L)"""
    inv_freq = rope_inv_freq(head_dim, theta).double()
    pos = torch.arange(length, dtype=torch.float64)
    delta = pos[:, None] - pos[None, :]  # (L, L)
    return torch.cos(delta[..., None] * inv_freq).mean(-1).float()


def rope(length: int, head_dim: int, theta: float) -> dict[str, torch.Tensor]:
    cos, sin = rope_tables(length, head_dim, theta)
    return {
        "inv_freq": rope_inv_freq(head_dim, theta),
        "cos": cos,
        "sin": sin,
        "similarity": rope_similarity(length, head_dim, theta),
    }
