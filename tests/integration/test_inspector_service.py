"""The Inspector gRPC service on the real weights: every RPC, selections, bad input, limits."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest
import torch

from inspector.engine import InspectorEngine
from inspector.main import build
from inspector.metrics import InspectorMetrics
from tests.integration.conftest import inspector_settings
from tviz.client import aio_channel, auth_metadata
from tviz.config import ServerSettings, hash_api_key
from tviz.convert import from_tensor
from tviz.model.taps import collecting
from tviz.v1 import generation_pb2 as gen_pb
from tviz.v1 import inspector_pb2 as pb
from tviz.v1 import inspector_pb2_grpc, model_pb2, tensor_pb2

pytestmark = pytest.mark.integration

BANK = "The bank of the river flooded"


def prompt(text: str) -> pb.ModelInput:
    return pb.ModelInput(prompt=text)


async def collect(call: grpc.aio.UnaryStreamCall) -> tuple[object, list]:  # type: ignore[type-arg]
    header, items = None, []
    async for chunk in call:
        kind = chunk.WhichOneof("kind")
        if kind == "header":
            header = chunk.header
        else:
            items.append(getattr(chunk, kind))
    return header, items


@pytest.fixture
async def stub(inspector_target: str):  # type: ignore[no-untyped-def]
    async with aio_channel(inspector_target) as ch:
        yield inspector_pb2_grpc.InspectorStub(ch)


async def test_model_info_reports_the_manifest_digest(stub, engine: InspectorEngine) -> None:  # type: ignore[no-untyped-def]
    info = await stub.GetModelInfo(model_pb2.GetModelInfoRequest())
    assert info.weights_digest == engine.manifest.digest
    assert (info.num_layers, info.num_heads, info.num_kv_heads) == (30, 9, 3)
    assert info.engine == model_pb2.ENGINE_KIND_INSPECTOR and info.max_context == 1024


async def test_list_taps_is_discoverable(stub) -> None:  # type: ignore[no-untyped-def]
    resp = await stub.ListTaps(pb.ListTapsRequest())
    names = [t.name for t in resp.taps]
    assert names[0] == "embed" and names[-1] == "logits"
    assert "layers.29.attn.pattern" in names and len(names) == 2 + 1 + 30 * 18


async def test_inspect_attention_matches_hf(stub, model_dir) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    header, tensors = await collect(
        stub.Inspect(
            pb.InspectRequest(
                input=prompt(BANK),
                layers=[0, 5],
                taps=["attn.pattern"],
                dtype=tensor_pb2.DTYPE_FLOAT32,
            )
        )
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert [t.text for t in header.tokens] == [tok.decode([i]) for i in tok(BANK).input_ids]
    assert list(header.taps) == ["layers.0.attn.pattern", "layers.5.attn.pattern"]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(torch.tensor([tok(BANK).input_ids]), output_attentions=True).attentions
    for t in tensors:
        got = from_tensor(t.tensor)
        assert got.shape == (9, 6, 6)
        np.testing.assert_allclose(got, ref[t.layer][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


async def test_inspect_selects_heads_rows_and_defaults_to_float16(stub) -> None:  # type: ignore[no-untyped-def]
    header, tensors = await collect(
        stub.Inspect(
            pb.InspectRequest(input=prompt(BANK), layers=[5], heads=[2], query_rows=[3, 5])
        )
    )
    assert list(header.heads) == [2] and list(header.query_rows) == [3, 5]
    by_name = {t.name: t.tensor for t in tensors}
    assert set(by_name) == {
        f"layers.5.attn.{n}" for n in ("q_rot", "k_rot", "v", "scores", "masked_scores", "pattern")
    }
    pattern = by_name["layers.5.attn.pattern"]
    assert pattern.dtype == tensor_pb2.DTYPE_FLOAT16 and list(pattern.shape) == [1, 2, 6]
    assert list(by_name["layers.5.attn.k_rot"].shape) == [3, 6, 64]  # keys keep every position
    masked = from_tensor(by_name["layers.5.attn.masked_scores"])
    assert np.isneginf(masked[0, 0, 4]) and np.isfinite(masked[0, 1]).all()


async def test_concurrent_inspects_get_their_own_tensors(stub, engine: InspectorEngine) -> None:  # type: ignore[no-untyped-def]
    requests = [
        pb.InspectRequest(
            input=prompt(BANK), layers=[3], heads=[1], dtype=tensor_pb2.DTYPE_FLOAT32
        ),
        pb.InspectRequest(
            input=prompt("Hello there, general Kenobi"), layers=[7], taps=["mlp.act"]
        ),
        pb.InspectRequest(input=prompt(BANK + " again"), layers=[12, 13], taps=["attn.pattern"]),
        pb.InspectRequest(input=prompt("One two"), taps=["logits"], dtype=tensor_pb2.DTYPE_FLOAT32),
    ] * 2
    results = await asyncio.gather(*(collect(stub.Inspect(r)) for r in requests))
    for req, (header, tensors) in zip(requests, results, strict=True):
        assert [t.name for t in tensors] == list(header.taps)
        assert all(t.layer in req.layers for t in tensors if t.layer >= 0)
    _, first = results[0]
    expected = {}
    with torch.no_grad(), collecting(["layers.3.attn.pattern"]) as got:
        engine.model(torch.tensor([engine.tokenizer.encode(BANK)]))
        expected = got["layers.3.attn.pattern"][0, 1:2].numpy()
    pattern = next(t for t in first if t.name == "layers.3.attn.pattern")
    np.testing.assert_allclose(from_tensor(pattern.tensor), expected, atol=1e-6)


async def test_full_dump_over_4mb_streams(stub) -> None:  # type: ignore[no-untyped-def]
    text = " ".join(f"word{i}" for i in range(60))
    header, tensors = await collect(
        stub.Inspect(
            pb.InspectRequest(
                input=prompt(text), taps=["attn.pattern"], dtype=tensor_pb2.DTYPE_FLOAT32
            )
        )
    )
    total = sum(len(t.tensor.data) for t in tensors)
    assert len(tensors) == 30 and total > 4 * 1024 * 1024
    assert len(header.tokens) > 100


async def test_step_through_reaches_the_logits(stub) -> None:  # type: ignore[no-untyped-def]
    _, states = await collect(
        stub.StepThrough(
            pb.StepThroughRequest(input=prompt(BANK), layers=[0, 1], include_tensors=True)
        )
    )
    names = [s.name for s in states]
    assert names[0] == "embed" and names[-1] == "logits" and names[-2] == "final_norm"
    assert [s.index for s in states] == list(range(len(states)))
    assert len(names) == 1 + 2 * 18 + 2
    embed = states[0]
    assert list(embed.shape) == [6, 576]
    arr = from_tensor(embed.tensor).astype(np.float32)
    assert embed.summary.max == pytest.approx(arr.max(), abs=1e-2)
    logits = states[-1]
    assert len(logits.next_tokens) == 10
    probs = [t.probability for t in logits.next_tokens]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    masked = next(s for s in states if s.name == "layers.0.attn.masked_scores")
    assert math.isfinite(masked.summary.mean)


async def test_profile_reports_every_layer_and_records_histograms(stub) -> None:  # type: ignore[no-untyped-def]
    resp = await stub.Profile(pb.ProfileRequest(input=prompt(BANK), repeats=3))
    assert len(resp.layers) == 30 and resp.repeats == 3 and resp.num_tokens == 6
    assert all(layer.attention_ms > 0 and layer.mlp_ms > 0 for layer in resp.layers)
    parts = sum(layer.attention_ms + layer.mlp_ms for layer in resp.layers)
    assert parts < resp.total_ms * 1.5
    hist = InspectorMetrics.get().layer_latency.labels(layer="29", part="mlp")
    assert hist._sum.get() > 0  # type: ignore[attr-defined]


async def test_decode_trace_walks_the_cache(stub) -> None:  # type: ignore[no-untyped-def]
    chat = pb.ModelInput(
        chat=gen_pb.ChatMessages(
            messages=[gen_pb.ChatMessage(role="user", content="What is the capital of France?")]
        )
    )
    # the chat template without a generation prompt; add it as raw text instead
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    header, steps = await collect(
        stub.DecodeTrace(
            pb.DecodeTraceRequest(input=prompt(text), max_new_tokens=10, layers=[4], heads=[0, 8])
        )
    )
    n = len(header.tokens)
    assert "Paris" in "".join(s.token.text for s in steps)
    for i, s in enumerate(steps):
        assert s.cache_length == n + i
        (att,) = s.attention
        assert att.name == "layers.4.attn.pattern" and list(att.tensor.shape) == [2, n + i]
        np.testing.assert_allclose(from_tensor(att.tensor).astype(np.float32).sum(-1), 1, atol=2e-3)
    assert steps[1].cache_bytes > steps[0].cache_bytes
    assert steps[-1].last
    chat_header, _ = await collect(
        stub.DecodeTrace(pb.DecodeTraceRequest(input=chat, max_new_tokens=1))
    )
    assert chat_header.tokens[0].text == "<|im_start|>"


async def test_positional_encodings(stub, engine: InspectorEngine) -> None:  # type: ignore[no-untyped-def]
    resp = await stub.PositionalEncoding(pb.PositionalEncodingRequest(length=32, d_model=16))
    table = from_tensor(resp.sinusoidal)
    assert table.shape == (32, 16)
    assert table[5, 2] == pytest.approx(math.sin(5 / 10000 ** (2 / 16)), abs=1e-6)
    assert table[5, 3] == pytest.approx(math.cos(5 / 10000 ** (2 / 16)), abs=1e-6)
    assert from_tensor(resp.rope_inv_freq).shape == (32,)
    assert resp.rope_theta == 100000 and resp.head_dim == 64
    cos = from_tensor(resp.rope_cos)
    ref_cos, _ = engine.model.rope(32)
    np.testing.assert_array_equal(cos, ref_cos.numpy())
    sim = from_tensor(resp.rope_similarity)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.InspectRequest(input=prompt("")), "prompt is empty"),
        (pb.InspectRequest(), "set one of prompt"),
        (pb.InspectRequest(input=prompt("word " * 1100)), "limit is 1024"),
        (pb.InspectRequest(input=prompt(BANK), layers=[30]), "layers: 30"),
        (pb.InspectRequest(input=prompt(BANK), heads=[9]), "heads: 9"),
        (pb.InspectRequest(input=prompt(BANK), query_rows=[6]), "query_rows: 6"),
        (pb.InspectRequest(input=prompt(BANK), taps=["attn.nope"]), "attn.nope"),
        (pb.InspectRequest(input=prompt(BANK), dtype=7), "dtype: unknown value 7"),  # type: ignore[arg-type]
        (
            pb.InspectRequest(input=pb.ModelInput(token_ids=gen_pb.TokenIds(ids=[1, 99999]))),
            "99999",
        ),
    ],
)
async def test_bad_inspect_requests_are_invalid_argument(stub, request_, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub.Inspect(request_))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")


async def test_bad_requests_on_other_rpcs(stub) -> None:  # type: ignore[no-untyped-def]
    cases = [
        stub.PositionalEncoding(pb.PositionalEncodingRequest(length=0)),
        stub.Profile(pb.ProfileRequest(input=prompt(BANK), repeats=500)),
        stub.Profile(pb.ProfileRequest(input=prompt(""))),
    ]
    for call in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for stream in (
        stub.StepThrough(pb.StepThroughRequest(input=prompt(BANK), layers=[-1])),
        stub.DecodeTrace(pb.DecodeTraceRequest(input=prompt(BANK), max_new_tokens=1000)),
        stub.DecodeTrace(pb.DecodeTraceRequest(input=prompt(BANK), heads=[11])),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stream)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_api_keys_and_busy_server(engine: InspectorEngine) -> None:
    settings = inspector_settings(
        server=ServerSettings(port=0, api_key_hashes=[hash_api_key("inspect-me")]),
        max_concurrency=1,
        max_queue=0,
    )
    server = build(settings, engine)
    port = await server.start()
    await server.set_serving(True)
    try:
        async with aio_channel(f"127.0.0.1:{port}") as ch:
            stub = inspector_pb2_grpc.InspectorStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetModelInfo(model_pb2.GetModelInfoRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(
                    stub.Inspect(
                        pb.InspectRequest(input=prompt(BANK)), metadata=auth_metadata("nope")
                    )
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            md = auth_metadata("inspect-me")
            slow = stub.Profile(pb.ProfileRequest(input=prompt(BANK * 20), repeats=20), metadata=md)
            await asyncio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Profile(pb.ProfileRequest(input=prompt(BANK)), metadata=md)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "busy" in (err.value.details() or "")
            assert len((await slow).layers) == 30
    finally:
        await server.stop(0)


async def test_cancelled_stream_frees_the_worker(stub) -> None:  # type: ignore[no-untyped-def]
    call = stub.StepThrough(pb.StepThroughRequest(input=prompt(BANK * 30), include_tensors=True))
    async for _ in call:
        break
    call.cancel()
    # both workers are free again: two requests complete promptly
    infos = await asyncio.wait_for(
        asyncio.gather(
            *(stub.Profile(pb.ProfileRequest(input=prompt(BANK), repeats=1)) for _ in range(2))
        ),
        timeout=30,
    )
    assert all(len(i.layers) == 30 for i in infos)
