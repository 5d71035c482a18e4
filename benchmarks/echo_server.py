"""A bare grpc.aio Generation server that streams fixed chunks: the floor for cache-hit serving.

python -m benchmarks.echo_server PORT CHUNKS_FILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from gateway.cache import decode_chunks
from tviz.v1 import generation_pb2_grpc


class Echo(generation_pb2_grpc.GenerationServicer):
    def __init__(self, chunks: list) -> None:  # type: ignore[type-arg]
        self.chunks = chunks

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        for chunk in self.chunks:
            yield chunk


async def main(port: int, chunks_file: Path) -> None:
    server = grpc.aio.server()
    generation_pb2_grpc.add_GenerationServicer_to_server(
        Echo(decode_chunks(chunks_file.read_bytes())), server
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
