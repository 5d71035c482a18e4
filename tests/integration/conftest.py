"""One inspector engine per test session; servers on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inspector.engine import InspectorEngine
from inspector.main import build
from inspector.settings import InspectorSection, InspectorSettings
from tviz.config import ModelSettings, ServerSettings


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> InspectorEngine:
    return InspectorEngine(ModelSettings(), max_tokens=1024)


def inspector_settings(**section: object) -> InspectorSettings:
    server = section.pop("server", ServerSettings(port=0))
    return InspectorSettings(inspector=InspectorSection(server=server, **section))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def inspector_target(engine: InspectorEngine) -> AsyncIterator[str]:
    server = build(inspector_settings(max_concurrency=2), engine)
    port = await server.start()
    await server.set_serving(True)
    yield f"127.0.0.1:{port}"
    await server.stop(0)


# -- replicas --------------------------------------------------------------------------------
def replica_settings(engine: str, **section: object):  # type: ignore[no-untyped-def]
    from services.settings import ReplicaSection, ReplicaSettings

    server = section.pop("server", ServerSettings(port=0, grace_seconds=30))
    return ReplicaSettings(
        replica=ReplicaSection(server=server, engine=engine, kv_cache_space_gib=2, **section)  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
async def vllm_replica():  # type: ignore[no-untyped-def]
    """One real vLLM engine for the whole session (it takes about a minute to start)."""
    from services.main import Replica

    replica = Replica(replica_settings("vllm"))
    port = await replica.start()
    replica.target = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield replica
    await replica.stop(0)


@pytest.fixture(scope="session")
async def reference_replica():  # type: ignore[no-untyped-def]
    from services.main import Replica

    replica = Replica(replica_settings("reference"))
    port = await replica.start()
    replica.target = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield replica
    await replica.stop(0)
