"""What the inspector computes, independent of gRPC.

Every method is synchronous and runs in a worker thread; streaming methods hand each result to
an `emit` callback as soon as it exists, so a large capture never sits in memory whole.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tviz.config import ModelSettings
from tviz.errors import InvalidArgument
from tviz.model import positional
from tviz.model.config import ModelConfig
from tviz.model.taps import (
    HEAD_TAPS,
    QUERY_ROW_DIM,
    all_taps,
    capturing,
    describe,
    layer_tap,
    resolve_selection,
    split_name,
)
from tviz.model.tokenizer import Tokenizer
from tviz.model.transformer import Transformer
from tviz.model.weights import load_manifest


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str


# What to run: exactly one of these (validated in convert.py).
ModelInputValue = str | list[ChatTurn] | list[int]


@dataclass
class TapItem:
    """One captured tensor (batch dimension dropped, selection applied)."""

    name: str
    layer: int
    tensor: torch.Tensor


@dataclass
class StateItem:
    index: int
    name: str
    layer: int
    description: str
    tensor: torch.Tensor
    next_tokens: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class DecodeItem:
    step: int
    token_id: int
    token_text: str
    cache_length: int
    cache_bytes: int
    attention: list[TapItem]
    step_ms: float
    last: bool


@dataclass
class Prepared:
    """A validated input: its token ids and each token's text."""

    ids: list[int]
    texts: list[str]


@dataclass
class ProfileResult:
    attention_ms: list[float]
    mlp_ms: list[float]
    embed_ms: float
    head_ms: float
    total_ms: float
    num_tokens: int
    repeats: int
    threads: int
    samples: list[dict[str, float]]  # every timed pass, for the metrics


Emit = Callable[[object], None]


class InspectorEngine:
    def __init__(
        self, model_settings: ModelSettings, max_tokens: int, dtype: torch.dtype = torch.float32
    ) -> None:
        directory: Path = model_settings.directory
        self.manifest = load_manifest(directory, verify=model_settings.verify)
        self.name = model_settings.display_name
        self.cfg: ModelConfig = ModelConfig.from_dir(directory)
        self.model = Transformer.from_pretrained(directory, dtype=dtype)
        self.tokenizer = Tokenizer(directory)
        self.max_tokens = min(max_tokens, self.cfg.max_position)
        self.taps = all_taps(self.cfg.n_layers)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    # -- input -------------------------------------------------------------------------------
    def prepare(self, value: ModelInputValue, extra_positions: int = 0) -> Prepared:
        if isinstance(value, str):
            if not value.strip():
                raise InvalidArgument("input.prompt: the prompt is empty")
            ids = self.tokenizer.encode(value)
        elif value and isinstance(value[0], ChatTurn):
            turns = [{"role": t.role, "content": t.content} for t in value]
            ids = self.tokenizer.encode_chat(turns, add_generation_prompt=False)
        else:
            ids = [int(i) for i in value]  # type: ignore[arg-type]
            for i in ids:
                if not 0 <= i < self.cfg.vocab_size:
                    top = self.cfg.vocab_size - 1
                    raise InvalidArgument(
                        f"input.token_ids: {i} is outside the vocabulary (0..{top})"
                    )
        if not ids:
            raise InvalidArgument("input: no tokens to run")
        limit = self.max_tokens - extra_positions
        if len(ids) > limit:
            raise InvalidArgument(
                f"input: the prompt has {len(ids)} tokens; the limit is {limit}"
                + (
                    f" ({self.max_tokens} minus {extra_positions} to generate)"
                    if extra_positions
                    else ""
                )
            )
        return Prepared(ids, self.tokenizer.token_texts(ids))

    def _check_heads(self, heads: Sequence[int], field_name: str = "heads") -> list[int]:
        for h in heads:
            if not 0 <= h < self.cfg.n_heads:
                raise InvalidArgument(
                    f"{field_name}: {h} is out of range (model has {self.cfg.n_heads} heads)"
                )
        return sorted(set(heads)) or list(range(self.cfg.n_heads))

    def _check_layers(self, layers: Sequence[int]) -> list[int]:
        for layer in layers:
            if not 0 <= layer < self.cfg.n_layers:
                raise InvalidArgument(
                    f"layers: {layer} is out of range (model has {self.cfg.n_layers} layers)"
                )
        return sorted(set(layers))

    # -- Inspect -----------------------------------------------------------------------------
    def plan_inspect(
        self,
        prepared: Prepared,
        layers: Sequence[int],
        heads: Sequence[int],
        rows: Sequence[int],
        taps: Sequence[str],
    ) -> tuple[list[str], list[int], list[int], list[int]]:
        """Validate a capture request: (tap names, layers, heads, query rows)."""
        layer_list = self._check_layers(layers) or list(range(self.cfg.n_layers))
        head_list = self._check_heads(heads)
        T = len(prepared.ids)
        for r in rows:
            if not 0 <= r < T:
                raise InvalidArgument(f"query_rows: {r} is out of range (the input has {T} tokens)")
        row_list = sorted(set(rows)) or list(range(T))
        names = resolve_selection(list(taps), layer_list, self.cfg.n_layers)
        return names, layer_list, head_list, row_list

    def inspect(
        self,
        prepared: Prepared,
        names: list[str],
        heads: list[int],
        rows: list[int],
        emit: Callable[[TapItem], None],
    ) -> float:
        """Run one forward pass, emitting each requested tap; returns the pass's milliseconds."""
        head_idx = torch.tensor(heads)
        row_idx = torch.tensor(rows)
        all_heads = len(heads) == self.cfg.n_heads
        all_rows = len(rows) == len(prepared.ids)

        def sink(name: str, x: torch.Tensor) -> None:
            layer, short = split_name(name)
            x = x[0]  # drop the batch dimension
            if short in HEAD_TAPS and not all_heads:
                x = x.index_select(0, head_idx)
            row_dim = QUERY_ROW_DIM[short]
            if row_dim is not None and not all_rows:
                x = x.index_select(row_dim, row_idx)
            emit(TapItem(name, layer, x))

        tokens = torch.tensor([prepared.ids])
        start = time.perf_counter()
        with torch.inference_mode(), capturing(names, sink):
            self.model(tokens)
        return (time.perf_counter() - start) * 1000

    # -- StepThrough -------------------------------------------------------------------------
    def step_through(
        self,
        prepared: Prepared,
        layers: Sequence[int],
        top_k: int,
        emit: Callable[[StateItem], None],
    ) -> None:
        layer_set = set(self._check_layers(layers) or range(self.cfg.n_layers))
        if not 1 <= top_k <= 100:
            raise InvalidArgument(f"top_k: {top_k} must be between 1 and 100")
        names = [n for n, _ in self.taps if split_name(n)[0] in layer_set or split_name(n)[0] < 0]
        counter = 0

        def sink(name: str, x: torch.Tensor) -> None:
            nonlocal counter
            layer, _ = split_name(name)
            x = x[0]
            item = StateItem(counter, name, layer, describe(name), x)
            if name == "logits":
                probs = torch.softmax(x[-1].float(), dim=-1)
                p, idx = probs.topk(top_k)
                texts = self.tokenizer.token_texts(idx.tolist())
                item.next_tokens = list(zip(idx.tolist(), texts, p.tolist(), strict=True))
            counter += 1
            emit(item)

        with torch.inference_mode(), capturing(names, sink):
            self.model(torch.tensor([prepared.ids]))

    # -- Profile -----------------------------------------------------------------------------
    def profile(self, prepared: Prepared, repeats: int, warmup: int) -> ProfileResult:
        if not 1 <= repeats <= 50:
            raise InvalidArgument(f"repeats: {repeats} must be between 1 and 50")
        if not 0 <= warmup <= 10:
            raise InvalidArgument(f"warmup: {warmup} must be between 0 and 10")
        tokens = torch.tensor([prepared.ids])
        sync = torch.cuda.synchronize if tokens.is_cuda else (lambda: None)
        samples: list[dict[str, float]] = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                marks: list[tuple[str, float]] = []

                def clock(label: str, marks: list[tuple[str, float]] = marks) -> None:
                    sync()
                    marks.append((label, time.perf_counter()))

                start = time.perf_counter()
                self.model(tokens, clock=clock)  # no capture active: the fast path
                if i < warmup:
                    continue
                sample: dict[str, float] = {}
                prev = start
                for label, t in marks:
                    sample[label] = (t - prev) * 1000
                    prev = t
                sample["total"] = (prev - start) * 1000
                samples.append(sample)

        def median(key: str) -> float:
            return statistics.median(s[key] for s in samples)

        n = self.cfg.n_layers
        return ProfileResult(
            attention_ms=[median(layer_tap(i, "attn")) for i in range(n)],
            mlp_ms=[median(layer_tap(i, "mlp")) for i in range(n)],
            embed_ms=median("embed"),
            head_ms=median("head"),
            total_ms=median("total"),
            num_tokens=len(prepared.ids),
            repeats=repeats,
            threads=torch.get_num_threads(),
            samples=samples,
        )

    # -- DecodeTrace -------------------------------------------------------------------------
    def decode_trace(
        self,
        prepared: Prepared,
        max_new_tokens: int,
        layers: Sequence[int],
        heads: Sequence[int],
        emit: Callable[[DecodeItem], None],
    ) -> None:
        layer_list = self._check_layers(layers)
        head_list = self._check_heads(heads)
        head_idx = torch.tensor(head_list)
        names = [layer_tap(i, "attn.pattern") for i in layer_list]
        cache = self.model.new_cache(1, len(prepared.ids) + max_new_tokens)
        tokens = torch.tensor([prepared.ids])
        for step in range(max_new_tokens):
            captured: list[TapItem] = []

            def sink(name: str, x: torch.Tensor, captured: list[TapItem] = captured) -> None:
                # (B, H, T, S) -> the newest query row, selected heads: (heads, S)
                row = x[0, :, -1].index_select(0, head_idx)
                captured.append(TapItem(name, split_name(name)[0], row))

            start = time.perf_counter()
            with torch.inference_mode(), capturing(names, sink):
                logits = self.model(tokens, cache=cache, last_only=True)
            next_id = int(logits[0, -1].argmax())
            elapsed = (time.perf_counter() - start) * 1000
            last = next_id == self.cfg.eos_token_id or step == max_new_tokens - 1
            emit(
                DecodeItem(
                    step=step,
                    token_id=next_id,
                    token_text=self.tokenizer.token_texts([next_id])[0],
                    cache_length=cache.length,
                    cache_bytes=cache.nbytes,
                    attention=captured,
                    step_ms=elapsed,
                    last=last,
                )
            )
            if last:
                break
            tokens = torch.tensor([[next_id]])

    # -- PositionalEncoding ------------------------------------------------------------------
    MAX_PE_LENGTH = 2048

    def positional_encoding(self, length: int, d: int, base: float) -> dict[str, torch.Tensor]:
        if not 1 <= length <= self.MAX_PE_LENGTH:
            raise InvalidArgument(f"length: {length} must be between 1 and {self.MAX_PE_LENGTH}")
        d = d or self.cfg.d_model
        if not 2 <= d <= 8192:
            raise InvalidArgument(f"d_model: {d} must be between 2 and 8192")
        if not base > 1:
            raise InvalidArgument(f"base: {base} must be greater than 1")
        table = positional.sinusoidal_table(length, d, base)
        rope = positional.rope(length, self.cfg.head_dim, self.cfg.rope_theta)
        return {
            "sinusoidal": table,
            "sinusoidal_similarity": positional.cosine_similarity_matrix(table),
            "rope_inv_freq": rope["inv_freq"],
            "rope_cos": rope["cos"],
            "rope_sin": rope["sin"],
            "rope_similarity": rope["similarity"],
        }
