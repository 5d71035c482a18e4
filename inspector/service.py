"""The Inspector gRPC servicer: translates transport, runs the engine off the event loop."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import torch

from inspector import convert
from inspector.engine import DecodeItem, InspectorEngine, StateItem, TapItem
from inspector.metrics import InspectorMetrics
from tviz import __version__
from tviz.convert import model_info, to_tensor
from tviz.errors import InvalidArgument, to_status
from tviz.server import Service
from tviz.v1 import inspector_pb2, inspector_pb2_grpc, model_pb2, tensor_pb2
from tviz.workers import Limiter, run_in_thread, stream_from_thread

SERVICE_NAME = inspector_pb2.DESCRIPTOR.services_by_name["Inspector"].full_name
F16, F32 = tensor_pb2.DTYPE_FLOAT16, tensor_pb2.DTYPE_FLOAT32


class InspectorServicer(inspector_pb2_grpc.InspectorServicer):
    def __init__(
        self,
        engine: InspectorEngine,
        metrics: InspectorMetrics,
        max_concurrency: int,
        max_queue: int,
        max_message_bytes: int,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.limiter = Limiter(max_concurrency, max_queue, what="inspector")
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="inspector"
        )
        self.max_message_bytes = max_message_bytes

    def service(self) -> Service:
        return Service(
            SERVICE_NAME,
            lambda server: inspector_pb2_grpc.add_InspectorServicer_to_server(self, server),
        )

    # -- plumbing ----------------------------------------------------------------------------
    def _gauges(self) -> None:
        self.metrics.running.set(self.limiter.running)
        self.metrics.queued.set(self.limiter.waiting)

    def _record(self, rpc: str, start: float, exc: BaseException | None) -> None:
        code = grpc.StatusCode.OK if exc is None else to_status(exc, log_unexpected=False)[0]
        self.metrics.requests.labels(rpc=rpc, code=code.name).inc()
        self.metrics.request_latency.labels(rpc=rpc).observe(time.perf_counter() - start)

    async def _unary(self, rpc: str, fn: Callable[[], object]) -> object:
        start, error = time.perf_counter(), None
        try:
            async with self.limiter.slot():
                self._gauges()
                return await run_in_thread(self.executor, fn)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._gauges()
            self._record(rpc, start, error)

    async def _stream(
        self, rpc: str, work: Callable[[Callable[[object], None]], None]
    ) -> AsyncIterator[object]:
        start, error = time.perf_counter(), None
        try:
            async with self.limiter.slot():
                self._gauges()
                async for item in stream_from_thread(self.executor, work):
                    if isinstance(item, inspector_pb2.InspectChunk) and item.HasField("tensor"):
                        self.metrics.bytes_sent.labels(rpc=rpc).inc(len(item.tensor.tensor.data))
                    yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._gauges()
            self._record(rpc, start, error)

    def _header(self, ids: list[int], texts: list[str], **kw: Any) -> inspector_pb2.InspectHeader:
        return inspector_pb2.InspectHeader(
            tokens=convert.tokens(ids, texts), weights_digest=self.engine.digest, **kw
        )

    # -- RPCs --------------------------------------------------------------------------------
    async def Inspect(self, request, context):
        dtype = convert.request_dtype(request.dtype, F16)
        value = convert.model_input(request.input)

        def work(emit: Callable[[object], None]) -> None:
            prepared = self.engine.prepare(value)
            self.metrics.tokens.labels(rpc="Inspect").inc(len(prepared.ids))
            names, layers, heads, rows = self.engine.plan_inspect(
                prepared, request.layers, request.heads, request.query_rows, request.taps
            )
            header = self._header(
                prepared.ids,
                prepared.texts,
                layers=layers,
                heads=heads,
                query_rows=rows,
                taps=names,
            )
            emit(inspector_pb2.InspectChunk(header=header))

            def on_tap(item: TapItem) -> None:
                # Converted to wire bytes in the worker and streamed while the pass goes on.
                convert.check_size(item.name, item.tensor, dtype, self.max_message_bytes)
                emit(inspector_pb2.InspectChunk(tensor=convert.tap_tensor(item, dtype)))

            self.engine.inspect(prepared, names, heads, rows, on_tap)

        async for chunk in self._stream("Inspect", work):
            yield chunk

    async def StepThrough(self, request, context):
        dtype = convert.request_dtype(request.dtype, F16)
        value = convert.model_input(request.input)
        top_k = request.top_k or 10

        def work(emit: Callable[[object], None]) -> None:
            prepared = self.engine.prepare(value)
            self.metrics.tokens.labels(rpc="StepThrough").inc(len(prepared.ids))
            emit(inspector_pb2.StepThroughChunk(header=self._header(prepared.ids, prepared.texts)))

            def on_state(item: StateItem) -> None:
                if request.include_tensors:
                    convert.check_size(item.name, item.tensor, dtype, self.max_message_bytes)
                state = convert.step_state(item, request.include_tensors, dtype)
                emit(inspector_pb2.StepThroughChunk(state=state))

            self.engine.step_through(prepared, request.layers, top_k, on_state)

        async for chunk in self._stream("StepThrough", work):
            yield chunk

    async def DecodeTrace(self, request, context):
        dtype = convert.request_dtype(request.dtype, F16)
        value = convert.model_input(request.input)
        n = request.max_new_tokens or 16
        if not 1 <= n <= 256:
            raise InvalidArgument(f"max_new_tokens: {n} must be between 1 and 256")

        def work(emit: Callable[[object], None]) -> None:
            prepared = self.engine.prepare(value, extra_positions=n)
            self.metrics.tokens.labels(rpc="DecodeTrace").inc(len(prepared.ids))
            emit(inspector_pb2.DecodeTraceChunk(header=self._header(prepared.ids, prepared.texts)))

            def on_step(item: DecodeItem) -> None:
                emit(inspector_pb2.DecodeTraceChunk(step=convert.decode_step(item, dtype)))

            self.engine.decode_trace(prepared, n, request.layers, request.heads, on_step)

        async for chunk in self._stream("DecodeTrace", work):
            yield chunk

    async def Profile(self, request, context):
        value = convert.model_input(request.input)
        repeats = request.repeats or 5

        def work() -> inspector_pb2.ProfileResponse:
            prepared = self.engine.prepare(value)
            warmup = request.warmup if request.HasField("warmup") else 1
            result = self.engine.profile(prepared, repeats, warmup)
            self.metrics.observe_profile(result.samples)
            return inspector_pb2.ProfileResponse(
                layers=[
                    inspector_pb2.LayerLatency(layer=i, attention_ms=a, mlp_ms=m)
                    for i, (a, m) in enumerate(zip(result.attention_ms, result.mlp_ms, strict=True))
                ],
                embed_ms=result.embed_ms,
                head_ms=result.head_ms,
                total_ms=result.total_ms,
                num_tokens=result.num_tokens,
                repeats=result.repeats,
                threads=result.threads,
            )

        return await self._unary("Profile", work)

    async def PositionalEncoding(self, request, context):
        dtype = convert.request_dtype(request.dtype, F32)
        base = request.base or 10000.0

        def work() -> inspector_pb2.PositionalEncodingResponse:
            t = self.engine.positional_encoding(request.length, request.d_model, base)
            for name, value in t.items():
                convert.check_size(name, value, dtype, self.max_message_bytes)
            return inspector_pb2.PositionalEncodingResponse(
                **{name: to_tensor(value, dtype) for name, value in t.items()},
                rope_theta=self.engine.cfg.rope_theta,
                head_dim=self.engine.cfg.head_dim,
                base=base,
            )

        return await self._unary("PositionalEncoding", work)

    async def ListTaps(self, request, context):
        return inspector_pb2.ListTapsResponse(
            taps=[inspector_pb2.TapInfo(name=n, description=d) for n, d in self.engine.taps]
        )

    async def GetModelInfo(self, request, context):
        e = self.engine
        return model_info(
            e.name, e.digest, e.cfg, e.max_tokens, model_pb2.ENGINE_KIND_INSPECTOR,
            f"tviz {__version__} / torch {torch.__version__}",
        )  # fmt: skip
