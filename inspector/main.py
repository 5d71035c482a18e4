"""`tviz serve inspector`: load the weights into the instrumented model and serve it."""

from __future__ import annotations

import asyncio
import logging

import torch

from inspector.engine import InspectorEngine
from inspector.metrics import InspectorMetrics
from inspector.service import InspectorServicer
from inspector.settings import InspectorSettings
from tviz.logs import setup_logging
from tviz.server import GrpcServer

log = logging.getLogger(__name__)


def build(settings: InspectorSettings, engine: InspectorEngine | None = None) -> GrpcServer:
    section = settings.inspector
    if section.threads:
        torch.set_num_threads(section.threads)
    if engine is None:
        dtype = torch.bfloat16 if section.dtype == "bfloat16" else torch.float32
        engine = InspectorEngine(settings.model, section.max_tokens, dtype)
    servicer = InspectorServicer(
        engine,
        InspectorMetrics.get(),
        section.max_concurrency,
        section.max_queue,
        section.server.max_message_bytes,
    )
    return GrpcServer(section.server, [servicer.service()])


async def serve(settings: InspectorSettings) -> None:
    log.info("loading %s from %s", settings.model.display_name, settings.model.directory)
    server = build(settings)
    port = await server.start()
    web = settings.inspector.web
    runner = None
    if web.port is not None:
        from inspector.web.server import WebApp, start_web

        app = WebApp(f"127.0.0.1:{port}", web.gateway, web.api_key)
        runner = await start_web(app, web.host, web.port)
    await server.set_serving(True)
    log.info("inspector ready on port %d", port)
    await server.serve_until_signal()
    if runner is not None:
        await runner.cleanup()


def main(settings: InspectorSettings | None = None) -> None:
    settings = settings or InspectorSettings()
    setup_logging(settings.log)
    asyncio.run(serve(settings))
