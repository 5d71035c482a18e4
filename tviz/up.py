"""`tviz up`: the local stack as processes — Redis (when none answers), replicas, gateway,
inspector — started in order, health-checked, and stopped together on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from tviz.client import aio_channel

LOG_DIR = Path(".tviz/logs")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    address: str = ""
    metrics: str = ""
    log: Path | None = None


def redis_answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


async def serving(target: str) -> bool:
    try:
        async with aio_channel(target) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.aio.AioRpcError:
        return False


class Stack:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.children: list[Child] = []
        LOG_DIR.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, args: list[str], address: str = "", metrics: str = "") -> Child:
        log = LOG_DIR / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        child = Child(name, proc, address, metrics, log)
        self.children.append(child)
        self.console.print(f"[cyan]•[/] started {name} (pid {proc.pid}, log {log})")
        return child

    async def wait_serving(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.console.status(f"waiting for {child.name} at {child.address} …"):
            while time.monotonic() < deadline:
                if child.proc.poll() is not None:
                    tail = child.log.read_text()[-2000:] if child.log else ""
                    raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{tail}")
                if await serving(child.address):
                    self.console.print(f"[green]✓[/] {child.name} is SERVING at {child.address}")
                    return
                await asyncio.sleep(1)
        raise TimeoutError(f"{child.name} not SERVING after {timeout:.0f} s (see {child.log})")

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.proc.kill()
        self.console.print("[cyan]•[/] all services stopped")


async def wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


async def start_edge_and_prometheus(
    stack: Stack, gateway_port: int, edge_port: int, prometheus_port: int,
    jobs: dict[str, list[str]],
) -> dict[str, str]:  # fmt: skip
    """NGINX in front of the gateway and Prometheus scraping everything, when installed."""
    from tviz import edge, monitoring

    started: dict[str, str] = {}
    if edge.nginx_binary() is not None:
        conf = edge.render(
            edge.EdgeConfig(gateways=[f"127.0.0.1:{gateway_port}"], port=edge_port),
            Path(".tviz/nginx").resolve(),
        )
        edge.check(conf)
        child = stack.spawn("nginx-edge", edge.command(conf), f"127.0.0.1:{edge_port}")
        await stack.wait_serving(child, timeout=30)
        started["edge"] = child.address
    if monitoring.prometheus_binary() is not None:
        work = Path(".tviz/prometheus").resolve()
        work.mkdir(parents=True, exist_ok=True)
        config = work / "prometheus.yml"
        config.write_text(monitoring.prometheus_config(jobs))
        url = f"http://127.0.0.1:{prometheus_port}"
        stack.spawn("prometheus", monitoring.command(config, work / "data", prometheus_port), url)
        await wait_http(f"{url}/-/ready", timeout=60)
        started["prometheus"] = url
    return started


async def run_stack(
    replicas: int,
    engine: str,
    gateway_port: int,
    replica_port: int,
    inspector_port: int,
    metrics_port: int,
    redis_port: int,
    web_port: int,
    edge_port: int,
    prometheus_port: int,
    console: Console,
) -> None:
    tviz = str(Path(sys.executable).parent / "tviz")
    stack = Stack(console)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if redis_answers(redis_port):
            console.print(f"[green]✓[/] Redis answers on 127.0.0.1:{redis_port}")
        else:
            exe = shutil.which("redis-server")
            if exe is None:
                raise RuntimeError(
                    "no Redis answers and redis-server is not installed "
                    "(apt-get install redis-server)"
                )
            stack.spawn(
                "redis",
                [
                    exe,
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                f"127.0.0.1:{redis_port}",
            )
            for _ in range(50):
                if redis_answers(redis_port):
                    break
                await asyncio.sleep(0.1)
        reps = []
        for i in range(replicas):
            port, mport = replica_port + i, metrics_port + 1 + i
            reps.append(
                stack.spawn(
                    f"replica-{i}",
                    [
                        tviz,
                        "serve",
                        "replica",
                        "--port",
                        str(port),
                        "--engine",
                        engine,
                        "--metrics-port",
                        str(mport),
                    ],
                    f"127.0.0.1:{port}",
                    f"http://127.0.0.1:{mport}/metrics",
                )
            )
        inspector_mport = metrics_port + 1 + replicas
        inspector = stack.spawn(
            "inspector",
            [
                tviz,
                "serve",
                "inspector",
                "--port",
                str(inspector_port),
                "--metrics-port",
                str(inspector_mport),
                "--web-port",
                str(web_port),
                "--gateway",
                f"127.0.0.1:{gateway_port}",
            ],
            f"127.0.0.1:{inspector_port}",
            f"http://127.0.0.1:{inspector_mport}/metrics",
        )
        for child in reps:
            await stack.wait_serving(child, timeout=600)
        gateway = stack.spawn(
            "gateway",
            [
                tviz,
                "serve",
                "gateway",
                "--port",
                str(gateway_port),
                "--metrics-port",
                str(metrics_port),
                "--replicas",
                ",".join(c.address for c in reps),
            ],
            f"127.0.0.1:{gateway_port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
        await stack.wait_serving(gateway, timeout=120)
        await stack.wait_serving(inspector, timeout=300)
        extras = await start_edge_and_prometheus(
            stack, gateway_port, edge_port, prometheus_port,
            {"gateway": [f"127.0.0.1:{metrics_port}"],
             "replica": [c.metrics.split("/")[2] for c in reps],
             "inspector": [f"127.0.0.1:{inspector_mport}"]},
        )  # fmt: skip

        table = Table(title="tviz is up")
        for col in ("service", "gRPC", "metrics", "log"):
            table.add_column(col, overflow="fold")
        for child in stack.children:
            table.add_row(child.name, child.address, child.metrics, str(child.log))
        console.print(table)
        gw, ins = f"127.0.0.1:{gateway_port}", f"127.0.0.1:{inspector_port}"
        if "edge" in extras:
            gw = extras["edge"]
        console.print(
            f"Web visualizer: http://127.0.0.1:{web_port}/\n"
            + (
                f"Prometheus: {extras['prometheus']} (dashboards: k8s/base/dashboards/*.json)\n"
                if "prometheus" in extras
                else "Prometheus is not installed: no metrics server.\n"
            )
            + ("" if "edge" in extras else "NGINX is not installed: clients call the gateway.\n")
            + "Try:\n"
            f'  .venv/bin/tviz generate "What is the capital of France?" --target {gw}\n'
            f'  .venv/bin/tviz inspect "The bank of the river flooded" --target {ins} '
            "--layer 5 --head 2 --out map.png\n"
            "Ctrl-C stops everything.",
            soft_wrap=True,
        )
        while not stop.is_set():
            for child in stack.children:
                if child.proc.poll() is not None:
                    code = child.proc.returncode
                    console.print(f"[red]✗ {child.name} exited with {code} (see {child.log})[/]")
                    stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1)
    finally:
        stack.stop()
