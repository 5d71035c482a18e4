"""The replica on a real vLLM engine (and the reference engine as its parity check)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest

from tviz.client import aio_channel
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc, model_pb2

pytestmark = pytest.mark.integration

FRANCE = g.ChatMessages(
    messages=[g.ChatMessage(role="user", content="What is the capital of France?")]
)


def greedy(max_tokens: int = 24, **kw: object) -> g.SamplingParams:
    return g.SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


async def run(stub, request, **kw):  # type: ignore[no-untyped-def]
    chunks = [c async for c in stub.Generate(request, **kw)]
    return "".join(c.text for c in chunks), chunks


@pytest.fixture
async def stub(vllm_replica):  # type: ignore[no-untyped-def]
    async with aio_channel(vllm_replica.target) as ch:
        yield generation_pb2_grpc.GenerationStub(ch)


async def wait_idle(engine, timeout: float = 10.0) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while engine.num_unfinished() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return int(engine.num_unfinished())


async def test_streamed_greedy_answer_contains_paris(stub, vllm_replica) -> None:  # type: ignore[no-untyped-def]
    call = stub.Generate(g.GenerateRequest(chat=FRANCE, sampling=greedy()))
    metadata = dict(await call.initial_metadata())
    chunks = [c async for c in call]
    text = "".join(c.text for c in chunks)
    assert "Paris" in text
    assert len(chunks) > 1  # streamed, not one blob
    last = chunks[-1]
    assert last.finish_reason == g.FINISH_REASON_STOP
    assert last.usage.prompt_tokens == 37 and last.usage.completion_tokens == sum(
        len(c.token_ids) for c in chunks
    )
    assert chunks[0].request_id
    assert metadata["x-tviz-replica"] and "x-tviz-running" in metadata


async def test_model_info_digest_matches_the_inspector(stub, engine) -> None:  # type: ignore[no-untyped-def]
    info = await stub.GetModelInfo(model_pb2.GetModelInfoRequest())
    assert info.weights_digest == engine.digest
    assert info.engine == model_pb2.ENGINE_KIND_VLLM and info.max_context == 2048
    assert info.kv_cache_tokens > 10_000


async def test_prefix_cache_hits_are_reported(stub) -> None:  # type: ignore[no-untyped-def]
    system = "You are a careful assistant. " * 20
    msgs = [g.ChatMessage(role="system", content=system), g.ChatMessage(role="user", content="Hi")]
    req = g.GenerateRequest(chat=g.ChatMessages(messages=msgs), sampling=greedy(4))
    await run(stub, req)
    _, chunks = await run(stub, req)
    usage = chunks[-1].usage
    assert usage.cached_tokens >= 100 and usage.prompt_tokens > usage.cached_tokens


async def test_eight_concurrent_streams_all_finish(stub) -> None:  # type: ignore[no-untyped-def]
    requests = [
        g.GenerateRequest(
            prompt=f"List {i + 2} colours:",
            sampling=g.SamplingParams(temperature=0.7, seed=i, max_tokens=12),
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*(run(stub, r) for r in requests))
    for _, chunks in results:
        assert chunks[-1].finish_reason in (g.FINISH_REASON_LENGTH, g.FINISH_REASON_STOP)
        assert 1 <= chunks[-1].usage.completion_tokens <= 12


async def test_seeded_sampling_is_reproducible(stub) -> None:  # type: ignore[no-untyped-def]
    req = g.GenerateRequest(
        prompt="A short poem:", sampling=g.SamplingParams(temperature=1.0, seed=7, max_tokens=16)
    )
    a, _ = await run(stub, req)
    b, _ = await run(stub, req)
    assert a == b


async def test_stop_strings_and_logprobs(stub) -> None:  # type: ignore[no-untyped-def]
    req = g.GenerateRequest(
        chat=FRANCE, sampling=greedy(24, stop=["Paris"], logprobs=True, top_logprobs=3)
    )
    text, chunks = await run(stub, req)
    assert "Paris" not in text and chunks[-1].finish_reason == g.FINISH_REASON_STOP_STRING
    lps = [p for c in chunks for p in c.logprobs]
    assert lps and all(len(p.top) == 3 and p.chosen.logprob <= 0 for p in lps)
    assert all(p.chosen.logprob >= p.top[0].logprob - 1e-4 for p in lps)  # greedy picks the top


async def test_cancelled_stream_is_aborted_in_the_engine(stub, vllm_replica) -> None:  # type: ignore[no-untyped-def]
    call = stub.Generate(g.GenerateRequest(prompt="Count forever: 1, 2, 3,", sampling=greedy(1500)))
    async for _ in call:
        break
    assert vllm_replica.engine.num_unfinished() == 1
    call.cancel()
    assert await wait_idle(vllm_replica.engine) == 0


async def test_expired_deadline_is_aborted_in_the_engine(stub, vllm_replica) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run(
            stub,
            g.GenerateRequest(prompt="Count forever: 1, 2, 3,", sampling=greedy(1500)),
            timeout=1.5,
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await wait_idle(vllm_replica.engine) == 0


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (
            g.GenerateRequest(prompt="hi", sampling=g.SamplingParams(temperature=-1)),
            "INVALID_ARGUMENT",
            "temperature",
        ),
        (
            g.GenerateRequest(prompt="hi", sampling=g.SamplingParams(temperature=float("nan"))),
            "INVALID_ARGUMENT",
            "temperature",
        ),
        (
            g.GenerateRequest(prompt="hi", sampling=g.SamplingParams(top_p=0)),
            "INVALID_ARGUMENT",
            "top_p",
        ),
        (
            g.GenerateRequest(prompt="hi", sampling=g.SamplingParams(top_p=1.5)),
            "INVALID_ARGUMENT",
            "top_p",
        ),
        (
            g.GenerateRequest(prompt="hi", sampling=g.SamplingParams(max_tokens=0)),
            "INVALID_ARGUMENT",
            "max_tokens",
        ),
        (
            g.GenerateRequest(prompt="hi", sampling=g.SamplingParams(max_tokens=5000)),
            "INVALID_ARGUMENT",
            "max_tokens",
        ),
        (
            g.GenerateRequest(prompt="hi", sampling=g.SamplingParams(stop=[""])),
            "INVALID_ARGUMENT",
            "stop",
        ),
        (g.GenerateRequest(prompt="word " * 2100), "INVALID_ARGUMENT", "context limit is 2048"),
        (g.GenerateRequest(token_ids=g.TokenIds(ids=[1, 10**6])), "INVALID_ARGUMENT", "token_ids"),
        (g.GenerateRequest(), "INVALID_ARGUMENT", "input"),
        (
            g.GenerateRequest(
                chat=g.ChatMessages(messages=[g.ChatMessage(role="robot", content="x")])
            ),
            "INVALID_ARGUMENT",
            "role",
        ),
        (g.GenerateRequest(prompt="hi", model="gpt-17"), "NOT_FOUND", "gpt-17"),
    ],
)
async def test_bad_requests(stub, request_, code: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run(stub, request_)
    assert err.value.code().name == code
    assert needle in (err.value.details() or "")


async def test_metrics_include_vllm_and_replica_series(stub) -> None:  # type: ignore[no-untyped-def]
    await run(stub, g.GenerateRequest(prompt="Hello", sampling=greedy(4)))
    text = generate_latest(REGISTRY).decode()
    for name in (
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "tviz_replica_requests_total",
        "tviz_replica_active_streams",
    ):
        assert name in text, name


async def test_reference_engine_matches_vllm(stub, reference_replica) -> None:  # type: ignore[no-untyped-def]
    """Greedy tokens equal; chosen-token logprobs within 0.02 (float32 kernels differ)."""
    prompts = [
        g.GenerateRequest(chat=FRANCE, sampling=greedy(16, logprobs=True)),
        g.GenerateRequest(
            prompt="The three primary colours are", sampling=greedy(16, logprobs=True)
        ),
        g.GenerateRequest(prompt="def add(a, b):\n", sampling=greedy(16, logprobs=True)),
    ]
    async with aio_channel(reference_replica.target) as ch:
        ref = generation_pb2_grpc.GenerationStub(ch)
        for req in prompts:
            _, ours = await run(ref, req)
            _, theirs = await run(stub, req)
            ids_ref = [t for c in ours for t in c.token_ids]
            ids_vllm = [t for c in theirs for t in c.token_ids]
            assert ids_ref == ids_vllm
            lp_ref = [p.chosen.logprob for c in ours for p in c.logprobs]
            lp_vllm = [p.chosen.logprob for c in theirs for p in c.logprobs]
            assert max(abs(a - b) for a, b in zip(lp_ref, lp_vllm, strict=True)) < 0.02


async def test_reference_engine_batches_and_aborts(reference_replica) -> None:  # type: ignore[no-untyped-def]
    """Concurrent greedy streams (decoded in one batch) equal the same requests run alone."""
    prompts = ["The sky is", "Water boils at", "My favourite book is", "In 1969, humans"]
    reqs = [g.GenerateRequest(prompt=p, sampling=greedy(10)) for p in prompts]
    async with aio_channel(reference_replica.target) as ch:
        ref = generation_pb2_grpc.GenerationStub(ch)
        alone = [(await run(ref, r))[0] for r in reqs]
        together = [t for t, _ in await asyncio.gather(*(run(ref, r) for r in reqs))]
        assert together == alone
        call = ref.Generate(g.GenerateRequest(prompt="Count: 1, 2,", sampling=greedy(500)))
        async for _ in call:
            break
        call.cancel()
        assert await wait_idle(reference_replica.engine) == 0
