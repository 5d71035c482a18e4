"""The gateway's Generation servicer: admission, rate limit, context, cache, route, retry."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from gateway.cache import Flight, cache_key, decode_chunks, encode_chunks
from gateway.context import ContextStrategy, PreparedPrompt
from gateway.metrics import GatewayMetrics
from gateway.router import Router
from gateway.settings import GatewaySection
from gateway.store import SharedStore
from gateway.upstream import ReplicaPool
from tviz import generation
from tviz.config import hash_api_key
from tviz.errors import ResourceExhausted, TvizError, Unavailable, to_status
from tviz.model.tokenizer import Tokenizer
from tviz.server import API_KEY_HEADER, Service
from tviz.v1 import generation_pb2 as g
from tviz.v1 import generation_pb2_grpc, model_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = g.DESCRIPTOR.services_by_name["Generation"].full_name
STRATEGIES = {
    g.CONTEXT_STRATEGY_REJECT: "reject",
    g.CONTEXT_STRATEGY_TRUNCATE: "truncate",
    g.CONTEXT_STRATEGY_SUMMARIZE: "summarize",
}
# Replica statuses that another replica would answer the same way: never retried.
FINAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}


class UpstreamError(TvizError):
    """A replica's status passed on to the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def tokenizer_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        path = directory / name
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def tenant_of(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for name, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if name == API_KEY_HEADER:
            return hash_api_key(text)[:16]
        if name == "authorization" and text.lower().startswith("bearer "):
            return hash_api_key(text[7:].strip())[:16]
    return "anonymous"


class GatewayServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(
        self,
        settings: GatewaySection,
        tokenizer: Tokenizer,
        tok_digest: str,
        pool: ReplicaPool,
        router: Router,
        store: SharedStore,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.tok_digest = tok_digest
        self.pool = pool
        self.router = router
        self.store = store
        self.metrics = metrics
        self.context = ContextStrategy(
            tokenizer, settings.keep_last_turns, settings.summary_max_tokens
        )
        self.flights: dict[str, Flight] = {}
        self.inflight = 0
        self.handled = 0  # Generate calls received

    def service(self) -> Service:
        return Service(
            SERVICE_NAME,
            lambda server: generation_pb2_grpc.add_GenerationServicer_to_server(self, server),
        )

    # -- upstream ----------------------------------------------------------------------------
    async def _upstream(
        self,
        request: g.GenerateRequest,
        ids: list[int],
        timeout: float | None,
        served_by: list[str] | None = None,
    ) -> AsyncIterator[g.GenerateChunk]:
        """Stream from a replica; a replica failing before the first chunk is retried elsewhere."""
        tried: set[str] = set()
        for attempt in range(self.settings.retries + 1):
            upstream = await self.router.choose(ids, tried)
            tried.add(upstream.target)
            if served_by is not None:
                served_by.append(upstream.target)
            upstream.inflight += 1
            self.metrics.inflight.labels(replica=upstream.target).set(upstream.inflight)
            started = False
            call = upstream.stub.Generate(request, timeout=timeout)
            try:
                self.pool.record_load(upstream, await call.initial_metadata())
                async for chunk in call:
                    started = True
                    yield chunk
                self.pool.record_success(upstream)
                return
            except grpc.aio.AioRpcError as err:
                code = err.code()
                self.metrics.upstream_errors.labels(replica=upstream.target, code=code.name).inc()
                if code in FINAL_CODES or started:
                    raise UpstreamError(code, err.details() or code.name) from None
                self.pool.record_failure(upstream)
                log.warning(
                    "replica %s failed before the first token: %s %s",
                    upstream.target,
                    code.name,
                    err.details(),
                )
                if attempt == self.settings.retries or not [
                    u for u in self.pool.available() if u.target not in tried
                ]:
                    raise Unavailable(
                        f"no replica could serve the request (last: {code.name})"
                    ) from None
                self.metrics.retries.inc()
            finally:
                if not call.done():
                    call.cancel()  # client gone or deadline: the replica aborts the request
                upstream.inflight -= 1
                self.metrics.inflight.labels(replica=upstream.target).set(upstream.inflight)

    async def _summarize(self, prompt: str, max_tokens: int) -> str:
        ids = self.tokenizer.encode_chat([{"role": "user", "content": prompt}])
        request = g.GenerateRequest(
            token_ids=g.TokenIds(ids=ids),
            sampling=g.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        )
        return "".join([c.text async for c in self._upstream(request, ids, timeout=120)])

    # -- the RPC -----------------------------------------------------------------------------
    async def Generate(
        self, request: g.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[g.GenerateChunk]:
        start, code, label = time.perf_counter(), grpc.StatusCode.OK, "miss"
        first_token_at: float | None = None
        self.handled += 1
        if self.inflight >= self.settings.max_inflight:
            self.metrics.requests.labels(code="RESOURCE_EXHAUSTED").inc()
            raise ResourceExhausted(f"gateway busy: {self.inflight} requests in flight")
        self.inflight += 1
        try:
            tenant = tenant_of(context.invocation_metadata())
            await self._rate_limit(tenant)
            info = self.pool.model_info()
            generation.check_model(request.model, info.name)
            sampling = generation.parse_sampling(request.sampling)
            inp = generation.parse_input(request)
            strategy = STRATEGIES.get(request.context_strategy, self.settings.context_strategy)
            prepared = await self.context.prepare(
                inp, sampling, strategy, info.max_context, self._summarize
            )
            if prepared.action:
                self.metrics.context_actions.labels(action=prepared.action).inc()
            max_tokens = generation.resolve_max_tokens(
                sampling, len(prepared.ids), info.max_context
            )
            request_id = request.request_id or uuid.uuid4().hex
            upstream_request = g.GenerateRequest(
                token_ids=g.TokenIds(ids=prepared.ids), request_id=request_id
            )
            upstream_request.sampling.CopyFrom(request.sampling)
            upstream_request.sampling.max_tokens = max_tokens
            timeout = context.time_remaining()

            chunks: AsyncIterator[g.GenerateChunk]
            served_by: list[str] = []
            if not sampling.deterministic or request.cache == g.CACHE_MODE_BYPASS:
                label = "bypass"
                chunks = self._upstream(upstream_request, prepared.ids, timeout, served_by)
            else:
                key = self.store.key(
                    "cache",
                    cache_key(
                        info.weights_digest,
                        self.tok_digest,
                        info.name,
                        tenant,
                        prepared.ids,
                        sampling,
                        max_tokens,
                    ),
                )
                cached = (
                    None if request.cache == g.CACHE_MODE_REFRESH else await self.store.get(key)
                )
                if cached is not None:
                    label = "hit"
                    served_by.append("cache")
                    chunks = self._replay(decode_chunks(cached))
                else:
                    flight = self.flights.get(key)
                    if flight is not None:
                        label = "shared"
                    else:
                        flight = self._start_flight(key, upstream_request, prepared.ids, timeout)
                    served_by = flight.served_by
                    chunks = flight.subscribe()
            self.metrics.cache.labels(result=label).inc()

            first = True
            async for chunk in chunks:
                out = g.GenerateChunk()
                out.CopyFrom(chunk)
                if first:
                    out.request_id = request_id
                    first = False
                if out.token_ids and first_token_at is None:
                    first_token_at = time.perf_counter()
                if out.finish_reason:
                    self._finish_usage(out, prepared, label == "hit")
                self.metrics.tokens.labels(kind="completion").inc(len(out.token_ids))
                yield out
            context.set_trailing_metadata((("x-tviz-replica", served_by[-1] if served_by else ""),))
        except BaseException as exc:
            code = to_status(exc, log_unexpected=False)[0]
            raise
        finally:
            self.inflight -= 1
            self.metrics.requests.labels(code=code.name).inc()
            self.metrics.request_seconds.labels(cache=label).observe(time.perf_counter() - start)
            if first_token_at is not None:
                self.metrics.ttft_seconds.labels(cache=label).observe(first_token_at - start)

    @staticmethod
    def _finish_usage(chunk: g.GenerateChunk, prepared: PreparedPrompt, hit: bool) -> None:
        chunk.usage.response_cache_hit = hit
        chunk.usage.context_action = prepared.action
        chunk.usage.turns_affected = prepared.turns_affected

    async def _replay(self, chunks: list[g.GenerateChunk]) -> AsyncIterator[g.GenerateChunk]:
        for chunk in chunks:
            yield chunk

    def _start_flight(
        self, key: str, request: g.GenerateRequest, ids: list[int], timeout: float | None
    ) -> Flight:
        served_by: list[str] = []

        async def run() -> AsyncIterator[g.GenerateChunk]:
            collected: list[g.GenerateChunk] = []
            try:
                async for chunk in self._upstream(request, ids, timeout, served_by):
                    collected.append(chunk)
                    yield chunk
                last = collected[-1] if collected else None
                if last is not None and last.finish_reason not in (0, g.FINISH_REASON_ABORT):
                    await self.store.set(key, encode_chunks(collected), self.settings.cache_ttl_s)
                    self.metrics.cache.labels(result="store").inc()
            finally:
                self.flights.pop(key, None)

        flight = Flight(run)
        flight.served_by = served_by
        self.flights[key] = flight
        return flight

    async def _rate_limit(self, tenant: str) -> None:
        rate = self.settings.rate_limit_per_s
        if rate is None:
            return
        allowed, wait = await self.store.token_bucket(
            self.store.key("ratelimit", tenant), rate, self.settings.rate_limit_burst
        )
        if not allowed:
            self.metrics.rate_limited.inc()
            raise ResourceExhausted(f"rate limit exceeded: retry in {wait:.2f} s")

    async def GetModelInfo(
        self, request: model_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        return self.pool.model_info()
