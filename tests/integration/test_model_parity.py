"""Parity of tviz's transformer with HF transformers on the real default weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tviz.model.taps import collecting
from tviz.model.tokenizer import Tokenizer
from tviz.model.transformer import Transformer, rope_tables

pytestmark = pytest.mark.integration

PROMPTS = [
    "The bank of the river flooded",
    "What is the capital of France? The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Attention is all you need, said the paper, and the field listened." * 3,
]


@pytest.fixture(scope="module")
def models(model_dir: Path) -> tuple[Transformer, torch.nn.Module, Tokenizer]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return Transformer.from_pretrained(model_dir), hf, Tokenizer(model_dir)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_and_attention_match_hf(
    models: tuple[Transformer, torch.nn.Module, Tokenizer], prompt: str
) -> None:
    ours, hf, tok = models
    ids = torch.tensor([tok.encode(prompt)])
    n = ours.cfg.n_layers
    with torch.no_grad():
        ref = hf(ids, output_attentions=True)
        with collecting([f"layers.{i}.attn.pattern" for i in range(n)]) as got:
            explicit = ours(ids)
        fast = ours(ids)
    assert (explicit - ref.logits).abs().max().item() < 1e-3
    assert (fast - ref.logits).abs().max().item() < 1e-3
    for i in range(n):
        assert (got[f"layers.{i}.attn.pattern"] - ref.attentions[i]).abs().max().item() < 1e-5


def test_rope_tables_equal_hf(models: tuple[Transformer, torch.nn.Module, Tokenizer]) -> None:
    ours, hf, _ = models
    cos_hf, sin_hf = hf.model.rotary_emb(torch.zeros(1, 1), torch.arange(512)[None])
    cos, sin = rope_tables(512, ours.cfg.head_dim, ours.cfg.rope_theta)
    assert torch.equal(cos, cos_hf[0]) and torch.equal(sin, sin_hf[0])
    cos_m, _ = ours.rope(512)
    assert torch.equal(cos_m, cos)


def test_greedy_decoding_with_cache_matches_hf_generate(
    models: tuple[Transformer, torch.nn.Module, Tokenizer],
) -> None:
    ours, hf, tok = models
    ids = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
        cache = ours.new_cache(1, len(ids) + 12)
        x, out = torch.tensor([ids]), []
        for _ in range(12):
            nxt = int(ours(x, cache=cache, last_only=True)[0, -1].argmax())
            out.append(nxt)
            x = torch.tensor([[nxt]])
    expected = ref[0, len(ids) :].tolist()  # HF stops at EOS
    assert out[: len(expected)] == expected
    assert "Paris" in tok.decode(out)
