"""The grpc.aio server factory every tviz service uses.

It adds, around a service's own servicers: API-key authentication, the one error→status
mapping, grpc.health.v1, reflection, explicit message-size limits, optional TLS, a Prometheus
endpoint, and a graceful stop on SIGTERM (health turns NOT_SERVING, in-flight calls get the
grace period, new ones are refused).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tviz.config import ServerSettings, hash_api_key
from tviz.errors import to_status

log = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"
# Probes and discovery stay open so load balancers and grpcurl work without a key.
OPEN_SERVICES = (health.SERVICE_NAME, reflection.SERVICE_NAME)


@dataclass(frozen=True)
class Service:
    """A servicer to mount: its full proto name and the generated add_*_to_server call."""

    name: str
    register: Callable[[grpc.aio.Server], None]


def _service_of(method: str) -> str:
    # "/tviz.v1.Inspector/Inspect" -> "tviz.v1.Inspector"
    return method.lstrip("/").split("/", 1)[0]


def _replace_behavior(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]],
    wrap_stream: Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]],
) -> grpc.RpcMethodHandler:
    """Rebuild a method handler with wrapped behaviour, keeping its (de)serializers."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kw)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **kw)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions raised by servicers to a gRPC status (tviz.errors.to_status)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        def wrap_unary(fn):
            async def call(request, context):
                try:
                    return await fn(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await context.abort(*to_status(exc))

            return call

        def wrap_stream(fn):
            async def call(request, context):
                try:
                    async for item in fn(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await context.abort(*to_status(exc))

            return call

        return _replace_behavior(handler, wrap_unary, wrap_stream)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Requires `x-api-key` (or `authorization: Bearer KEY`) whose sha256 is configured."""

    def __init__(self, key_hashes: Sequence[str]) -> None:
        self._hashes = [h.lower() for h in key_hashes]

    def _check(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        key = None
        for name, value in metadata or ():
            text = value.decode() if isinstance(value, bytes) else value
            if name == API_KEY_HEADER:
                key = text
            elif name == "authorization" and text.lower().startswith("bearer "):
                key = text[7:].strip()
        if not key:
            return f"missing API key (send it as '{API_KEY_HEADER}' metadata)"
        digest = hash_api_key(key)
        if not any(hmac.compare_digest(digest, h) for h in self._hashes):
            return "invalid API key"
        return None

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or _service_of(handler_call_details.method) in OPEN_SERVICES:
            return handler
        problem = self._check(handler_call_details.invocation_metadata)
        if problem is None:
            return handler

        def wrap_unary(fn):
            async def deny(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

            return deny

        def wrap_stream(fn):
            async def deny(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
                yield  # pragma: no cover - makes this an async generator

            return deny

        return _replace_behavior(handler, wrap_unary, wrap_stream)


def message_options(max_bytes: int) -> list[tuple[str, int]]:
    """Explicit size limits, used by servers and by tviz's clients alike."""
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


class GrpcServer:
    """A grpc.aio server with tviz's interceptors, health, reflection and graceful stop."""

    def __init__(
        self,
        settings: ServerSettings,
        services: Sequence[Service],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.settings = settings
        chain: list[grpc.aio.ServerInterceptor] = []
        if settings.api_key_hashes:
            chain.append(ApiKeyInterceptor(settings.api_key_hashes))
        chain.append(ErrorInterceptor())
        chain.extend(interceptors)
        self.server = grpc.aio.server(
            interceptors=chain, options=message_options(settings.max_message_bytes)
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = [s.name for s in services]
        for s in services:
            s.register(self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self._stop = asyncio.Event()

    async def start(self) -> int:
        """Bind and start; returns the bound port. Health stays NOT_SERVING until set_serving."""
        address = f"{self.settings.host}:{self.settings.port}"
        if self.settings.tls_cert and self.settings.tls_key:
            creds = grpc.ssl_server_credentials(
                [(self.settings.tls_key.read_bytes(), self.settings.tls_cert.read_bytes())]
            )
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self.set_serving(False)
        await self.server.start()
        if self.settings.metrics_port is not None:
            from tviz.metrics_http import start_metrics_server

            start_metrics_server(self.settings.metrics_port, self.settings.host)
        log.info(
            "listening on %s:%d (tls=%s)",
            self.settings.host,
            self.port,
            self.settings.tls_cert is not None,
        )
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give in-flight ones the grace period, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)

    async def wait_for_signal(self) -> None:
        """Return on SIGTERM or SIGINT (or request_stop); the caller then stops what it runs."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()
        log.info("stopping: draining for up to %.1f s", self.settings.grace_seconds)

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM or SIGINT (or request_stop), then stop gracefully."""
        await self.wait_for_signal()
        await self.stop()
        log.info("stopped")
