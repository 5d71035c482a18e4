"""The locust smoke: 30 seconds of every user type through a real gateway, zero failures."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_gateway import gateway_settings, started

pytestmark = pytest.mark.integration


async def test_locust_smoke_has_no_failures(
    vllm_replica, reference_replica, inspector_target: str, artifacts: Path
) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    gw = await started(
        gateway_settings(
            [vllm_replica.target, reference_replica.target], None, routing="prefix_affinity"
        )
    )
    out = artifacts / "loadtest"
    cli = str(Path(sys.executable).parent / "tviz")
    try:
        proc = await asyncio.create_subprocess_exec(
            cli, "loadtest", "--target", gw.target, "--inspector", inspector_target,  # type: ignore[attr-defined]
            "--users", "6", "--spawn-rate", "6", "--duration", "30s", "--out", str(out),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=180)
        text = output.decode()
        (artifacts / "loadtest.log").write_text(text)
        assert proc.returncode == 0, text[-3000:]
    finally:
        await gw.stop(0)
    with (out / "tviz_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert int(rows["Aggregated"]["Request Count"]) > 20
    for name in ("Generate chat", "Generate shared-prefix", "Generate cached", "Inspect attention"):
        assert int(rows[name]["Request Count"]) > 0, name
    assert (out / "report.html").stat().st_size > 10_000
