"""HTTP for the web visualizer. The page asks only for what it shows; tensors travel as binary.

Binary responses (`application/x-tviz-tensors`) are: b"TVIZ", a little-endian u32 header
length, a JSON header padded to 4 bytes, then float32 tensors back to back. The header lists
each tensor's name, layer, shape, byte offset and element count, plus the tokens and whatever
else the endpoint adds. The browser reads them with one Float32Array view each, no parsing.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from tviz.client import aio_channel, auth_metadata
from tviz.errors import format_validation_error
from tviz.v1 import (
    generation_pb2,
    generation_pb2_grpc,
    inspector_pb2,
    inspector_pb2_grpc,
    model_pb2,
    tensor_pb2,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class Message(BaseModel):
    role: str
    content: str


class InputBody(BaseModel):
    prompt: str | None = Field(default=None, max_length=50_000)
    messages: list[Message] | None = Field(default=None, max_length=200)

    def model_input(self) -> inspector_pb2.ModelInput:
        if self.messages:
            chat = generation_pb2.ChatMessages(
                messages=[
                    generation_pb2.ChatMessage(role=m.role, content=m.content)
                    for m in self.messages
                ]
            )
            return inspector_pb2.ModelInput(chat=chat)
        return inspector_pb2.ModelInput(prompt=self.prompt or "")


class InspectBody(InputBody):
    layers: list[int] = Field(default_factory=list, max_length=64)
    heads: list[int] = Field(default_factory=list, max_length=64)
    query_rows: list[int] = Field(default_factory=list, max_length=4096)
    taps: list[str] = Field(default_factory=list, max_length=64)


class StepsBody(InputBody):
    layers: list[int] = Field(default_factory=list, max_length=64)


class ProfileBody(InputBody):
    repeats: int = Field(default=3, ge=1, le=20)


class PEBody(BaseModel):
    length: int = Field(default=64, ge=1, le=2048)
    d_model: int = Field(default=0, ge=0, le=8192)


class GenerateBody(BaseModel):
    messages: list[Message] = Field(min_length=1, max_length=200)
    max_tokens: int = Field(default=128, ge=1, le=2048)
    temperature: float = Field(default=0.0, ge=0, le=5)
    no_cache: bool = False


def pack(header: dict[str, Any], tensors: list[tuple[str, int, list[int], bytes]]) -> bytes:
    """The binary container described in the module docstring (tensors already float32 LE)."""
    entries, offset = [], 0
    for name, layer, shape, data in tensors:
        entries.append(
            {
                "name": name,
                "layer": layer,
                "shape": shape,
                "offset": offset,
                "length": len(data) // 4,
            }
        )
        offset += len(data)
    head = json.dumps({**header, "tensors": entries}).encode()
    head += b" " * (-len(head) % 4)
    return b"TVIZ" + struct.pack("<I", len(head)) + head + b"".join(t[3] for t in tensors)


def binary(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/x-tviz-tensors")


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


class WebApp:
    def __init__(
        self, inspector_target: str, gateway_target: str, api_key: str | None = None
    ) -> None:
        self.inspector_target = inspector_target
        self.gateway_target = gateway_target
        self.metadata = auth_metadata(api_key)
        self._inspector_channel: grpc.aio.Channel | None = None
        self._gateway_channel: grpc.aio.Channel | None = None

    @property
    def inspector(self) -> inspector_pb2_grpc.InspectorStub:
        if self._inspector_channel is None:
            self._inspector_channel = aio_channel(self.inspector_target)
        return inspector_pb2_grpc.InspectorStub(self._inspector_channel)

    @property
    def gateway(self) -> generation_pb2_grpc.GenerationStub:
        if self._gateway_channel is None:
            self._gateway_channel = aio_channel(self.gateway_target)
        return generation_pb2_grpc.GenerationStub(self._gateway_channel)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=2 * 1024 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC)
        app.router.add_get("/api/model", self.model)
        app.router.add_post("/api/inspect", self.inspect)
        app.router.add_post("/api/steps", self.steps)
        app.router.add_post("/api/pe", self.pe)
        app.router.add_post("/api/profile", self.profile)
        app.router.add_post("/api/generate", self.generate)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        for ch in (self._inspector_channel, self._gateway_channel):
            if ch is not None:
                await ch.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            return error(HTTP_STATUS.get(code, 502), code.name, err.details() or code.name)
        except ValidationError as exc:
            return error(400, "INVALID_ARGUMENT", format_validation_error(exc))
        except json.JSONDecodeError:
            return error(400, "INVALID_ARGUMENT", "the request body is not valid JSON")

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def model(self, request: web.Request) -> web.Response:
        info = await self.inspector.GetModelInfo(
            model_pb2.GetModelInfoRequest(), metadata=self.metadata
        )
        taps = await self.inspector.ListTaps(
            inspector_pb2.ListTapsRequest(), metadata=self.metadata
        )
        return web.json_response({
            "name": info.name, "digest": info.weights_digest, "num_layers": info.num_layers,
            "num_heads": info.num_heads, "num_kv_heads": info.num_kv_heads, "d_model": info.d_model,
            "max_context": info.max_context, "gateway": self.gateway_target,
            "taps": [{"name": t.name, "description": t.description} for t in taps.taps],
        })  # fmt: skip

    async def inspect(self, request: web.Request) -> web.Response:
        body = InspectBody.model_validate(await request.json())
        req = inspector_pb2.InspectRequest(
            input=body.model_input(), layers=body.layers, heads=body.heads,
            query_rows=body.query_rows, taps=body.taps, dtype=tensor_pb2.DTYPE_FLOAT32,
        )  # fmt: skip
        start = time.perf_counter()
        header: dict[str, Any] = {}
        tensors = []
        async for chunk in self.inspector.Inspect(req, metadata=self.metadata):
            if chunk.HasField("header"):
                h = chunk.header
                header = {
                    "tokens": [{"id": t.id, "text": t.text} for t in h.tokens],
                    "layers": list(h.layers), "heads": list(h.heads),
                    "query_rows": list(h.query_rows), "digest": h.weights_digest,
                }  # fmt: skip
            else:
                t = chunk.tensor
                tensors.append((t.name, t.layer, list(t.tensor.shape), t.tensor.data))
        header["elapsed_ms"] = (time.perf_counter() - start) * 1000
        return binary(pack(header, tensors))

    async def steps(self, request: web.Request) -> web.Response:
        body = StepsBody.model_validate(await request.json())
        req = inspector_pb2.StepThroughRequest(input=body.model_input(), layers=body.layers)
        tokens: list[dict[str, Any]] = []
        states = []
        async for chunk in self.inspector.StepThrough(req, metadata=self.metadata):
            if chunk.HasField("header"):
                tokens = [{"id": t.id, "text": t.text} for t in chunk.header.tokens]
                continue
            s = chunk.state
            stats = ("min", "max", "mean", "std", "norm")
            nexts = [
                {"text": n.token.text, "id": n.token.id, "p": n.probability} for n in s.next_tokens
            ]
            states.append({
                "index": s.index, "name": s.name, "description": s.description, "layer": s.layer,
                "shape": list(s.shape), "summary": {k: getattr(s.summary, k) for k in stats},
                "next_tokens": nexts,
            })  # fmt: skip
        return web.json_response({"tokens": tokens, "states": states})

    async def pe(self, request: web.Request) -> web.Response:
        body = PEBody.model_validate(await request.json())
        resp = await self.inspector.PositionalEncoding(
            inspector_pb2.PositionalEncodingRequest(
                length=body.length, d_model=body.d_model, dtype=tensor_pb2.DTYPE_FLOAT32
            ),
            metadata=self.metadata,
        )
        names = [
            "sinusoidal",
            "sinusoidal_similarity",
            "rope_inv_freq",
            "rope_cos",
            "rope_sin",
            "rope_similarity",
        ]
        tensors = [(n, -1, list(getattr(resp, n).shape), getattr(resp, n).data) for n in names]
        return binary(
            pack(
                {"rope_theta": resp.rope_theta, "head_dim": resp.head_dim, "base": resp.base},
                tensors,
            )
        )

    async def profile(self, request: web.Request) -> web.Response:
        body = ProfileBody.model_validate(await request.json())
        resp = await self.inspector.Profile(
            inspector_pb2.ProfileRequest(input=body.model_input(), repeats=body.repeats),
            metadata=self.metadata,
        )
        layers = [
            {"layer": x.layer, "attention_ms": x.attention_ms, "mlp_ms": x.mlp_ms}
            for x in resp.layers
        ]
        return web.json_response({
            "layers": layers,
            "embed_ms": resp.embed_ms, "head_ms": resp.head_ms, "total_ms": resp.total_ms,
            "num_tokens": resp.num_tokens, "repeats": resp.repeats, "threads": resp.threads,
        })  # fmt: skip

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = GenerateBody.model_validate(await request.json())
        req = generation_pb2.GenerateRequest(
            chat=generation_pb2.ChatMessages(
                messages=[
                    generation_pb2.ChatMessage(role=m.role, content=m.content)
                    for m in body.messages
                ]
            ),
            sampling=generation_pb2.SamplingParams(
                temperature=body.temperature, max_tokens=body.max_tokens
            ),
            cache=generation_pb2.CACHE_MODE_BYPASS
            if body.no_cache
            else generation_pb2.CACHE_MODE_UNSPECIFIED,
        )
        call = self.gateway.Generate(req, metadata=self.metadata)
        start = time.perf_counter()
        try:
            await call.initial_metadata()
            first = await call.read()
        except grpc.aio.AioRpcError:
            raise
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        chunk = first
        while chunk is not grpc.aio.EOF:
            line = {
                "t_ms": (time.perf_counter() - start) * 1000, "text": chunk.text,
                "token_ids": list(chunk.token_ids),
            }  # fmt: skip
            if chunk.finish_reason:
                u = chunk.usage
                line["finish_reason"] = generation_pb2.FinishReason.Name(chunk.finish_reason)
                line["usage"] = {
                    "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                    "cached_tokens": u.cached_tokens, "response_cache_hit": u.response_cache_hit,
                }  # fmt: skip
            await response.write((json.dumps(line) + "\n").encode())
            try:
                chunk = await call.read()
            except grpc.aio.AioRpcError as err:
                await response.write(
                    (
                        json.dumps({"error": err.code().name, "message": err.details()}) + "\n"
                    ).encode()
                )
                break
        trailing = dict(await call.trailing_metadata() or ())
        await response.write(
            (json.dumps({"served_by": trailing.get("x-tviz-replica", "")}) + "\n").encode()
        )
        await response.write_eof()
        return response


async def start_web(app: WebApp, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("web visualizer on http://%s:%d/", host, port)
    return runner
