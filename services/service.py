"""The Generation servicer of a replica: validates, tokenizes, streams from the engine."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from services.engine import Engine, EngineDead
from services.metrics import ReplicaMetrics
from tviz import generation
from tviz.errors import InvalidArgument, ResourceExhausted, Unavailable, to_status
from tviz.model.tokenizer import Tokenizer
from tviz.server import Service
from tviz.v1 import generation_pb2, generation_pb2_grpc, model_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name
LOAD_HEADERS = ("x-tviz-replica", "x-tviz-running", "x-tviz-waiting")


def encode_input(tokenizer: Tokenizer, inp: generation.GenerationInput, vocab: int) -> list[int]:
    """Chat → the model's chat template with a generation prompt; prompt → as is."""
    if inp.chat:
        return tokenizer.encode_chat([m.model_dump() for m in inp.chat], add_generation_prompt=True)
    if inp.prompt is not None:
        return tokenizer.encode(inp.prompt)
    for i in inp.token_ids:
        if not 0 <= i < vocab:
            raise InvalidArgument(f"token_ids: {i} is outside the vocabulary (0..{vocab - 1})")
    return list(inp.token_ids)


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        info: model_pb2.ModelInfo,
        replica_id: str,
        max_pending: int,
        metrics: ReplicaMetrics,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.info = info
        self.replica_id = replica_id
        self.max_pending = max_pending
        self.metrics = metrics
        self.ready = False
        self.served = 0  # requests handed to the engine

    def service(self) -> Service:
        return Service(
            SERVICE_NAME,
            lambda server: generation_pb2_grpc.add_GenerationServicer_to_server(self, server),
        )

    def load_metadata(self) -> tuple[tuple[str, str], ...]:
        load = self.engine.load()
        return tuple(
            zip(LOAD_HEADERS, (self.replica_id, str(load.running), str(load.waiting)), strict=True)
        )

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateChunk]:
        start, code = time.perf_counter(), grpc.StatusCode.OK
        self.metrics.active_streams.inc()
        try:
            generation.check_model(request.model, self.info.name)
            sampling = generation.parse_sampling(request.sampling)
            inp = generation.parse_input(request)
            ids = encode_input(self.tokenizer, inp, self.info.vocab_size)
            max_tokens = generation.resolve_max_tokens(
                sampling, len(ids), self.engine.max_model_len
            )
            if not self.ready:
                raise Unavailable("replica is warming up: the engine is not ready yet")
            if self.engine.num_unfinished() >= self.max_pending:
                raise ResourceExhausted(
                    f"replica queue full: {self.engine.num_unfinished()} requests in the engine"
                )
            request_id = request.request_id or uuid.uuid4().hex
            await context.send_initial_metadata(self.load_metadata())
            self.served += 1
            first = True
            try:
                async for delta in self.engine.generate(ids, sampling, max_tokens, request_id):
                    yield generation.chunk(delta, request_id if first else "")
                    first = False
            except EngineDead as exc:
                raise Unavailable(f"engine failed: {exc}") from exc
        except BaseException as exc:
            code = to_status(exc, log_unexpected=False)[0]
            remaining = context.time_remaining()
            if code == grpc.StatusCode.CANCELLED and remaining is not None and remaining <= 0:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            raise
        finally:
            self.metrics.active_streams.dec()
            self.metrics.requests.labels(code=code.name).inc()
            self.metrics.stream_seconds.observe(time.perf_counter() - start)

    async def GetModelInfo(
        self, request: model_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        info = model_pb2.ModelInfo()
        info.CopyFrom(self.info)
        info.kv_cache_tokens = self.engine.kv_cache_tokens
        return info
