"""`tviz serve replica`: one Generation replica on vLLM (or the reference engine)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
import time

from services.engine import Engine
from services.health import HealthProber
from services.metrics import ReplicaMetrics
from services.service import GenerationServicer
from services.settings import ReplicaSettings
from tviz.convert import model_info
from tviz.generation import Sampling
from tviz.model.config import ModelConfig
from tviz.model.tokenizer import Tokenizer
from tviz.model.weights import load_manifest
from tviz.server import GrpcServer

log = logging.getLogger(__name__)


def make_engine(settings: ReplicaSettings) -> Engine:
    r = settings.replica
    kind = r.engine
    if kind == "auto":
        kind = "vllm" if importlib.util.find_spec("vllm") is not None else "reference"
    if kind == "vllm":
        from services.vllm_engine import VllmEngine

        return VllmEngine(
            settings.model.directory,
            max_model_len=r.max_model_len,
            dtype=r.dtype,
            kv_cache_space_gib=r.kv_cache_space_gib,
            gpu_memory_utilization=r.gpu_memory_utilization,
            enforce_eager=r.enforce_eager,
            enable_prefix_caching=r.enable_prefix_caching,
            max_num_seqs=r.max_num_seqs,
        )
    from services.reference_engine import ReferenceEngine

    return ReferenceEngine(
        settings.model.directory,
        max_model_len=r.max_model_len,
        dtype=r.dtype,
        max_batch=r.max_num_seqs,
    )


class Replica:
    """The replica process's parts, started and stopped in order."""

    def __init__(self, settings: ReplicaSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        directory = settings.model.directory
        manifest = load_manifest(directory, verify=settings.model.verify)
        cfg = ModelConfig.from_dir(directory)
        self.engine = engine or make_engine(settings)
        self.tokenizer = Tokenizer(directory)
        info = model_info(
            settings.model.display_name, manifest.digest, cfg, settings.replica.max_model_len,
            self.engine.kind, self.engine.version,
        )  # fmt: skip
        self.metrics = ReplicaMetrics.get()
        section = settings.replica
        self.servicer = GenerationServicer(
            self.engine, self.tokenizer, info, section.replica_id, section.max_pending, self.metrics
        )
        self.server = GrpcServer(section.server, [self.servicer.service()])
        bos = cfg.bos_token_id if cfg.bos_token_id is not None else 0
        self.prober = HealthProber(
            self.engine, self.server.set_serving, [bos], section.probe_interval_s,
            section.probe_timeout_s, self.metrics,
        )  # fmt: skip
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Listen first (NOT_SERVING while the engine loads), then start the engine."""
        port = await self.server.start()
        if not self.servicer.replica_id:
            self.servicer.replica_id = f"{socket.gethostname()}:{port}"
        log.info(
            "replica %s: starting the %s engine", self.servicer.replica_id, self.engine.version
        )
        await self.engine.start()
        await self._warm_up()
        self.servicer.ready = True
        if not await self.prober.probe_once():
            raise RuntimeError("the engine started but does not answer a one-token probe")
        self._probe_task = asyncio.create_task(self.prober.run())
        log.info("replica ready on port %d", port)
        return port

    async def _warm_up(self) -> None:
        """One short chat completion before SERVING: the first batches of a fresh engine pay
        one-off costs (kernel selection, allocator growth) that a client should not see."""
        start = time.perf_counter()
        ids = self.tokenizer.encode_chat([{"role": "user", "content": "Say hello."}])
        sampling = Sampling(temperature=0.0, max_tokens=8)
        async for _ in self.engine.generate(ids, sampling, 8, "tviz-warm-up"):
            pass
        log.info("warm-up done in %.1f s", time.perf_counter() - start)

    async def stop(self, grace: float | None = None) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self.server.stop(grace)  # NOT_SERVING, drain in-flight streams
        await self.engine.shutdown()


async def serve(settings: ReplicaSettings) -> None:
    replica = Replica(settings)
    await replica.start()
    await replica.server.wait_for_signal()
    await replica.stop()
    log.info("stopped")


def main(settings: ReplicaSettings | None = None) -> None:
    from tviz.logs import setup_logging

    settings = settings or ReplicaSettings()
    setup_logging(settings.log)
    asyncio.run(serve(settings))
