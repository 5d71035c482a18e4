"""Named activation taps, enabled per request through a context variable.

The model calls `tap(name, tensor)` at every interesting point; it costs one ContextVar lookup
when nothing is being captured. A request opens `capturing(selection, sink)` around its forward
pass; only the names the selection accepts reach the sink. A ContextVar, not a global hook, so
concurrent requests (each in its own thread or task) never see each other's tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from tviz.errors import InvalidArgument

# Per-layer taps in execution order, with what each holds. Shapes drop the batch dimension;
# T = query positions, S = key positions (cache + new), H = query heads, K = KV heads.
LAYER_TAPS: dict[str, str] = {
    "attn_norm": "RMSNorm of the residual stream before attention (T, d_model)",
    "attn.q": "queries before RoPE (H, T, head_dim)",
    "attn.k": "keys before RoPE (K, T, head_dim)",
    "attn.v": "values (K, T, head_dim)",
    "attn.q_rot": "queries after RoPE (H, T, head_dim)",
    "attn.k_rot": "keys after RoPE (K, T, head_dim)",
    "attn.scores": "scaled scores q·k/sqrt(head_dim) before the causal mask (H, T, S)",
    "attn.masked_scores": "scaled scores after the causal mask, -inf above the diagonal (H, T, S)",
    "attn.pattern": "attention probabilities, softmax of the masked scores (H, T, S)",
    "attn.head_out": "each head's output, pattern @ v (H, T, head_dim)",
    "attn.out": "attention output after o_proj (T, d_model)",
    "resid_mid": "residual stream after attention (T, d_model)",
    "mlp_norm": "RMSNorm of the residual stream before the MLP (T, d_model)",
    "mlp.gate": "gate projection (T, d_ff)",
    "mlp.up": "up projection (T, d_ff)",
    "mlp.act": "SiLU(gate) * up (T, d_ff)",
    "mlp.down": "MLP output after down projection (T, d_model)",
    "resid_post": "residual stream after the block (T, d_model)",
}
# Taps that need the explicit (slow) attention path.
EXPLICIT_ATTENTION_TAPS = ("attn.scores", "attn.masked_scores", "attn.pattern", "attn.head_out")
GLOBAL_TAPS_BEFORE: dict[str, str] = {"embed": "token embeddings (T, d_model)"}
GLOBAL_TAPS_AFTER: dict[str, str] = {
    "final_norm": "final RMSNorm of the residual stream (T, d_model)",
    "logits": "next-token logits (T, vocab)",
}
# Taps that carry a head dimension first (selectable by head).
HEAD_TAPS = ("attn.q", "attn.q_rot", *EXPLICIT_ATTENTION_TAPS)
# Dimension (batch dropped) that indexes query positions, for row selection; key/value taps
# index key positions and are never row-selected.
QUERY_ROW_DIM: dict[str, int | None] = {
    short: (1 if short in HEAD_TAPS else None if short in ("attn.k", "attn.k_rot", "attn.v") else 0)
    for short in [*LAYER_TAPS, *GLOBAL_TAPS_BEFORE, *GLOBAL_TAPS_AFTER]
}
# The default Inspect selection: what an attention map needs.
ATTENTION_SET = (
    "attn.q_rot",
    "attn.k_rot",
    "attn.v",
    "attn.scores",
    "attn.masked_scores",
    "attn.pattern",
)


def layer_tap(layer: int, short: str) -> str:
    return f"layers.{layer}.{short}"


def all_taps(n_layers: int) -> list[tuple[str, str]]:
    """Every tap name with its description, in execution order."""
    names = list(GLOBAL_TAPS_BEFORE.items())
    for i in range(n_layers):
        names += [(layer_tap(i, short), desc) for short, desc in LAYER_TAPS.items()]
    names += list(GLOBAL_TAPS_AFTER.items())
    return names


def describe(name: str) -> str:
    _, short = split_name(name)
    return {**GLOBAL_TAPS_BEFORE, **LAYER_TAPS, **GLOBAL_TAPS_AFTER}[short]


def split_name(name: str) -> tuple[int, str]:
    """'layers.3.attn.pattern' -> (3, 'attn.pattern'); 'logits' -> (-1, 'logits')."""
    if name.startswith("layers."):
        _, idx, short = name.split(".", 2)
        return int(idx), short
    return -1, name


def resolve_selection(
    requested: list[str], layers: list[int], n_layers: int, default: tuple[str, ...] = ATTENTION_SET
) -> list[str]:
    """Turn requested names or prefixes, within the selected layers, into full tap names.

    A request item may be a full name ("layers.2.attn.pattern", "logits"), a prefix of full
    names ("layers.2.mlp", "layers.4"), or a per-layer short name or prefix ("attn.pattern",
    "mlp") applied to every selected layer. Unknown names are rejected.
    """
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise InvalidArgument(f"layers: {layer} is out of range (model has {n_layers} layers)")
    layer_set = sorted(set(layers)) if layers else list(range(n_layers))
    every = [name for name, _ in all_taps(n_layers)]
    chosen: set[str] = set()
    for item in requested or list(default):
        item = item.strip().rstrip(".")
        hits = [n for n in every if n == item or n.startswith(item + ".")]
        short_hits = [
            layer_tap(i, s)
            for i in layer_set
            for s in LAYER_TAPS
            if s == item or s.startswith(item + ".")
        ]
        if not hits and not short_hits:
            raise InvalidArgument(f"taps: unknown tap {item!r} (ListTaps lists the names)")
        for name in hits:
            layer, _ = split_name(name)
            if layer < 0 or layer in layer_set:
                chosen.add(name)
        chosen.update(short_hits)
    if not chosen:
        raise InvalidArgument("taps: the selection matches no tap in the selected layers")
    return [n for n in every if n in chosen]


Sink = Callable[[str, torch.Tensor], None]


@dataclass
class Capture:
    """What one request wants: exact tap names (or everything), and where tensors go."""

    names: frozenset[str] | None  # None = every tap
    sink: Sink
    explicit_layers: frozenset[int] = field(default_factory=frozenset)

    def wants(self, name: str) -> bool:
        return self.names is None or name in self.names

    def needs_explicit(self, layer: int) -> bool:
        return self.names is None or layer in self.explicit_layers


_current: ContextVar[Capture | None] = ContextVar("tviz_capture", default=None)


def tap(name: str, x: torch.Tensor) -> torch.Tensor:
    """Hand `x` to the active capture when it asked for `name`; returns `x` unchanged."""
    cap = _current.get()
    if cap is not None and cap.wants(name):
        cap.sink(name, x.detach())
    return x


def tap_enabled(name: str) -> bool:
    """Lets the model skip building a tensor nobody asked for."""
    cap = _current.get()
    return cap is not None and cap.wants(name)


def needs_explicit_attention(layer: int) -> bool:
    cap = _current.get()
    return cap is not None and cap.needs_explicit(layer)


@contextmanager
def capturing(names: list[str] | None, sink: Sink) -> Iterator[Capture]:
    """Capture `names` (None = all taps) into `sink` for the forward passes inside."""
    explicit: set[int] = set()
    for name in names or ():
        layer, short = split_name(name)
        if short in EXPLICIT_ATTENTION_TAPS:
            explicit.add(layer)
    cap = Capture(None if names is None else frozenset(names), sink, frozenset(explicit))
    token = _current.set(cap)
    try:
        yield cap
    finally:
        _current.reset(token)


@contextmanager
def collecting(names: list[str] | None) -> Iterator[dict[str, torch.Tensor]]:
    """Capture into a dict (name -> tensor, execution order)."""
    store: dict[str, torch.Tensor] = {}

    def sink(name: str, x: torch.Tensor) -> None:
        store[name] = x

    with capturing(names, sink):
        yield store
