"""Inspector costs, side by side in one run.

1. A full attention dump (all 30 layers × 9 heads, 128 tokens: q, k, v after RoPE, scores,
   masked scores and pattern) over gRPC, against a plain forward of tviz's model and against HF
   transformers' forward with output_attentions=True.
2. Greedy decoding of 256 tokens with the KV cache against recomputing the whole sequence
   at every step.

    .venv/bin/python -m benchmarks.bench_inspector [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio

import torch

from benchmarks.common import interleaved, write_table
from inspector.engine import InspectorEngine
from inspector.main import build
from inspector.settings import InspectorSection, InspectorSettings
from tviz.client import aio_channel
from tviz.config import ModelSettings, ServerSettings
from tviz.model.taps import collecting
from tviz.v1 import inspector_pb2, inspector_pb2_grpc


async def dump_benchmark(engine: InspectorEngine, repeats: int) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        str(ModelSettings().directory), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    text = " ".join(f"token{i}" for i in range(200))
    ids = engine.tokenizer.encode(text)[:128]
    tokens = torch.tensor([ids])
    settings = InspectorSettings(inspector=InspectorSection(server=ServerSettings(port=0)))
    server = build(settings, engine)
    port = await server.start()
    await server.set_serving(True)
    channel = aio_channel(f"127.0.0.1:{port}")
    stub = inspector_pb2_grpc.InspectorStub(channel)
    request = inspector_pb2.InspectRequest(input=inspector_pb2.ModelInput(token_ids={"ids": ids}))
    received = {"bytes": 0}

    async def grpc_dump() -> None:
        total = 0
        async for chunk in stub.Inspect(request):
            if chunk.HasField("tensor"):
                total += len(chunk.tensor.tensor.data)
        received["bytes"] = total

    def plain() -> None:
        with torch.inference_mode():
            engine.model(tokens)

    def captured() -> None:
        names = [f"layers.{i}.attn.pattern" for i in range(engine.cfg.n_layers)]
        with torch.inference_mode(), collecting(names):
            engine.model(tokens)

    def hf_attn() -> None:
        with torch.inference_mode():
            hf(tokens, output_attentions=True)

    times = await interleaved(
        {
            "tviz forward (fused attention)": plain,
            "tviz forward capturing every pattern (in-process)": captured,
            "HF forward, output_attentions=True (eager)": hf_attn,
            "tviz Inspect over gRPC, full dump, float16": grpc_dump,
        },
        repeats,
    )
    await channel.close()
    await server.stop(0)
    write_table(
        "inspector_dump",
        "Full attention dump vs plain forward (128 tokens, 30 layers × 9 heads)",
        times,
        "tviz forward (fused attention)",
        notes=f"The gRPC dump streams {received['bytes'] / 1e6:.1f} MB of float16 tensors "
        "(q/k/v after RoPE, scores, masked scores, pattern for every layer).",
    )


async def decode_benchmark(engine: InspectorEngine, repeats: int, n_new: int = 256) -> None:
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "Tell me a long story."}])
    model = engine.model

    def with_cache() -> list[int]:
        cache = model.new_cache(1, len(prompt) + n_new)
        x, out = torch.tensor([prompt]), []
        with torch.inference_mode():
            for _ in range(n_new):
                nxt = int(model(x, cache=cache, last_only=True)[0, -1].argmax())
                out.append(nxt)
                x = torch.tensor([[nxt]])
        return out

    def without_cache() -> list[int]:
        seq = list(prompt)
        with torch.inference_mode():
            for _ in range(n_new):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        return seq[len(prompt) :]

    assert with_cache()[:32] == without_cache()[:32], "cached and uncached decoding disagree"
    times = await interleaved(
        {"decode with KV cache": with_cache, "decode recomputing without cache": without_cache},
        repeats,
        warmup=0,
    )
    tok_s = {k: n_new / (sum(v) / len(v)) for k, v in times.items()}
    write_table(
        "inspector_decode",
        f"Greedy decoding of {n_new} tokens: KV cache vs recomputation",
        times,
        "decode with KV cache",
        notes="Throughput: "
        + ", ".join(f"{k}: {v:.1f} tokens/s" for k, v in tok_s.items())
        + f". Prompt {len(prompt)} tokens.",
        unit_scale=1.0,
        unit="s",
    )


async def run(args: argparse.Namespace) -> None:
    engine = InspectorEngine(ModelSettings(), max_tokens=1024)
    await dump_benchmark(engine, args.repeats)
    await decode_benchmark(engine, args.decode_repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-repeats", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
