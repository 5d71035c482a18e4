"""A server built only from the factory (health + reflection + a test service), for tests.

Prints `READY <port>` once serving; exits 0 after a graceful SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from tviz.config import ServerSettings
from tviz.errors import InvalidArgument
from tviz.server import GrpcServer, Service

SERVICE = "tviz.test.Echo"


def _identity(b: bytes) -> bytes:
    return b


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"invalid":
        raise InvalidArgument("payload: 'invalid' is not allowed")
    if request == b"boom":
        raise RuntimeError("secret internal detail")
    if request.startswith(b"sleep"):
        await asyncio.sleep(float(request[5:]))
    return request


def register(server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


def build(settings: ServerSettings) -> GrpcServer:
    return GrpcServer(settings, [Service(SERVICE, register)])


async def main(port: int) -> None:
    server = build(ServerSettings(port=port, grace_seconds=5))
    bound = await server.start()
    await server.set_serving(True)
    print(f"READY {bound}", flush=True)
    await server.serve_until_signal()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
