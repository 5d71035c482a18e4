"""Static heatmaps for the CLI (the web visualizer draws its own)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def attention_heatmaps(
    patterns: np.ndarray,
    tokens: Sequence[str],
    query_rows: Sequence[int],
    heads: Sequence[int],
    layer: int,
    out: Path,
) -> None:
    """Write one labelled heatmap per head of `patterns` (heads, rows, keys) to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = patterns.shape[0]
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    size = max(4.0, 0.35 * len(tokens) + 2)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    labels = [repr(t)[1:-1] for t in tokens]
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        im = ax.imshow(patterns[k], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(f"layer {layer} · head {heads[k]}")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(query_rows)), [labels[r] for r in query_rows], fontsize=8)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
