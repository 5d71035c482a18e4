"""`tviz up` starts the local stack, serves through it, and Ctrl-C stops every process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "tviz")
    gw, rep, ins, met, web = free_port(), free_port(), free_port(), free_port(), free_port()
    edge_port, prom = free_port(), free_port()
    proc = subprocess.Popen(
        [cli, "up", "--engine", "reference", "--gateway-port", str(gw), "--replica-port", str(rep),
         "--inspector-port", str(ins), "--metrics-port", str(met), "--web-port", str(web),
         "--edge-port", str(edge_port), "--prometheus-port", str(prom)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert "tviz is up" in output, output
        children = psutil.Process(proc.pid).children(recursive=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/model", timeout=30) as resp:
            assert json.load(resp)["num_layers"] == 30
        with urllib.request.urlopen(f"http://127.0.0.1:{met}/metrics", timeout=30) as resp:
            assert b"tviz_gateway_requests" in resp.read()
        assert len(children) >= 3

        # through the NGINX edge, in front of the gateway
        result = subprocess.run(
            [cli, "generate", "What is the capital of France?", "--target", f"127.0.0.1:{edge_port}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "Paris" in result.stdout and "TTFT" in result.stdout
        again = subprocess.run(
            [cli, "generate", "What is the capital of France?", "--target", f"127.0.0.1:{gw}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert "cache hit" in again.stdout
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{prom}/api/v1/targets", timeout=10
            ) as resp:
                targets = json.load(resp)["data"]["activeTargets"]
            up = len(targets) == 3 and all(t["health"] == "up" for t in targets)
            if up or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {t["labels"]["job"] for t in targets} == {"gateway", "replica", "inspector"}
        assert all(t["health"] == "up" for t in targets), targets

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        time.sleep(0.5)
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            for c in psutil.Process(proc.pid).children(recursive=True):
                c.kill()
            proc.kill()
