"""tviz's transformer against HF transformers on a tiny random Llama (fast, no real weights)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tviz.errors import InvalidArgument
from tviz.model.positional import cosine_similarity_matrix, rope_similarity, sinusoidal_table
from tviz.model.taps import all_taps, collecting, resolve_selection
from tviz.model.transformer import Transformer, rope_tables


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=5000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
    )  # fmt: skip
    hf = LlamaForCausalLM(cfg).eval()
    hf.config._attn_implementation = "eager"
    path = tmp_path_factory.mktemp("tiny")
    hf.save_pretrained(path)
    return path, hf


def test_logits_and_patterns_match_hf(tiny: tuple[Path, torch.nn.Module]) -> None:
    path, hf = tiny
    model = Transformer.from_pretrained(path)
    ids = torch.randint(0, 101, (2, 17))
    names = [f"layers.{i}.attn.pattern" for i in range(3)]
    with torch.no_grad():
        ref = hf(ids, output_attentions=True)
        with collecting(names) as got:
            explicit = model(ids)
        fast = model(ids)
    assert (explicit - ref.logits).abs().max() < 1e-5
    assert (fast - ref.logits).abs().max() < 1e-4
    for i in range(3):
        assert (got[f"layers.{i}.attn.pattern"] - ref.attentions[i]).abs().max() < 1e-6


def test_rope_tables_match_hf(tiny: tuple[Path, torch.nn.Module]) -> None:
    _, hf = tiny
    x = torch.zeros(1, 20, 64)
    cos_hf, sin_hf = hf.model.rotary_emb(x, torch.arange(20)[None])
    cos, sin = rope_tables(20, 16, 5000.0)
    assert torch.equal(cos, cos_hf[0]) and torch.equal(sin, sin_hf[0])


def test_kv_cache_decoding_equals_recomputing(tiny: tuple[Path, torch.nn.Module]) -> None:
    model = Transformer.from_pretrained(tiny[0])
    ids = torch.randint(0, 101, (1, 9))
    cache = model.new_cache(1, 20)
    with torch.no_grad():
        full = model(ids)
        part = model(ids[:, :5], cache=cache)
        rest = [model(ids[:, i : i + 1], cache=cache) for i in range(5, 9)]
        # several new tokens at once after a filled cache (causal mask with an offset)
        cache2 = model.new_cache(1, 20)
        model(ids[:, :4], cache=cache2)
        chunk = model(ids[:, 4:], cache=cache2)
    stepped = torch.cat([part, *rest], dim=1)
    assert (stepped - full).abs().max() < 1e-4
    assert (chunk - full[:, 4:]).abs().max() < 1e-4
    assert cache.length == 9


def test_every_tap_fires_in_execution_order(tiny: tuple[Path, torch.nn.Module]) -> None:
    model = Transformer.from_pretrained(tiny[0])
    with torch.no_grad(), collecting(None) as got:
        model(torch.randint(0, 101, (1, 6)))
    assert list(got) == [name for name, _ in all_taps(3)]
    assert got["layers.1.attn.pattern"].shape == (1, 4, 6, 6)
    assert torch.isneginf(got["layers.1.attn.masked_scores"][0, 0, 0, 1])
    assert got["layers.2.attn.k"].shape == (1, 2, 6, 16)


def test_concurrent_captures_stay_separate(tiny: tuple[Path, torch.nn.Module]) -> None:
    model = Transformer.from_pretrained(tiny[0])
    results: dict[int, dict[str, torch.Tensor]] = {}
    barrier = threading.Barrier(4)

    def worker(k: int) -> None:
        ids = torch.full((1, 4 + k), k)
        barrier.wait()
        for _ in range(5):
            with torch.no_grad(), collecting([f"layers.{k % 3}.attn.pattern"]) as got:
                model(ids)
        results[k] = dict(got)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in results.items():
        assert list(got) == [f"layers.{k % 3}.attn.pattern"]
        assert got[f"layers.{k % 3}.attn.pattern"].shape[-1] == 4 + k


def test_selection_resolves_prefixes_and_rejects_unknown_names() -> None:
    assert resolve_selection(["attn.pattern"], [1], 3) == ["layers.1.attn.pattern"]
    mlp = resolve_selection(["layers.2.mlp"], [], 3)
    assert mlp == [f"layers.2.mlp.{p}" for p in ("gate", "up", "act", "down")]
    assert resolve_selection(["logits", "embed"], [0], 3) == ["embed", "logits"]
    with pytest.raises(InvalidArgument, match=r"attn\.patern"):
        resolve_selection(["attn.patern"], [], 3)
    with pytest.raises(InvalidArgument, match="layers: 7"):
        resolve_selection([], [7], 3)


def test_sinusoidal_table_matches_the_formula() -> None:
    d, table = 10, sinusoidal_table(50, 10)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert table[pos, 2 * i].item() == pytest.approx(
                torch.tensor(angle).sin().item(), abs=1e-6
            )
            assert table[pos, 2 * i + 1].item() == pytest.approx(
                torch.tensor(angle).cos().item(), abs=1e-6
            )
    odd = sinusoidal_table(5, 7)
    assert odd.shape == (5, 7) and odd[3, 6].item() == pytest.approx(
        torch.tensor(3 / 10000 ** (6 / 7)).sin().item(), abs=1e-6
    )
    sim = cosine_similarity_matrix(table)
    assert torch.allclose(sim.diagonal(), torch.ones(50), atol=1e-5)


def test_rope_similarity_depends_only_on_distance() -> None:
    sim = rope_similarity(12, 16, 10000.0)
    assert torch.allclose(sim.diagonal(), torch.ones(12))
    assert torch.allclose(sim.diagonal(3), torch.full((9,), sim[0, 3].item()), atol=1e-6)
    assert torch.allclose(sim, sim.T)


def test_rows_at_different_lengths_decode_together(tiny: tuple[Path, torch.nn.Module]) -> None:
    model = Transformer.from_pretrained(tiny[0])
    a, b = torch.randint(0, 101, (1, 7)), torch.randint(0, 101, (1, 3))
    cache = model.new_cache(4, 32)
    with torch.no_grad():
        model(a, cache=cache, rows=[2])
        model(b, cache=cache, rows=[0])
        assert cache.lengths == [3, 0, 7, 0]
        step = model(torch.tensor([[5], [9]]), cache=cache, rows=[2, 0])  # (2, 1, V)
        alone_a = model(torch.cat([a, torch.tensor([[5]])], 1))[:, -1]
        alone_b = model(torch.cat([b, torch.tensor([[9]])], 1))[:, -1]
        with collecting(["layers.1.attn.pattern"]) as got:
            model(torch.tensor([[1], [2]]), cache=cache, rows=[0, 2])
    assert (step[0, -1] - alone_a[0]).abs().max() < 1e-4
    assert (step[1, -1] - alone_b[0]).abs().max() < 1e-4
    pattern = got["layers.1.attn.pattern"]  # (2, H, 1, S): row 0 sees 5 keys, row 1 sees 9
    assert pattern.shape[-1] == 9
    assert torch.all(pattern[0, :, 0, 5:] == 0) and torch.all(pattern[1, :, 0] > 0)
    assert cache.lengths == [5, 0, 9, 0]


def test_bfloat16_weights_track_float32(tiny: tuple[Path, torch.nn.Module]) -> None:
    full = Transformer.from_pretrained(tiny[0], dtype=torch.float32)
    half = Transformer.from_pretrained(tiny[0], dtype=torch.bfloat16)
    assert half.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 101, (1, 12))
    with torch.no_grad():
        a, b = full(ids), half(ids).float()
    assert torch.isfinite(b).all()
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
