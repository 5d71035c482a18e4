"""Helpers for side-by-side benchmarks: interleaved repetitions, medians, a markdown table."""

from __future__ import annotations

import inspect
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.progress import Progress

RESULTS = Path(__file__).resolve().parent / "results"


async def interleaved(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every case once per round, `repeats` rounds, so machine noise hits all alike.

    A case may return an awaitable (a gRPC call); it is awaited inside the timing."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    with Progress() as progress:
        task = progress.add_task("measuring", total=(warmup + repeats) * len(cases))
        for round_ in range(warmup + repeats):
            for name, fn in cases.items():
                progress.update(task, description=f"round {round_ + 1}: {name}")
                start = time.perf_counter()
                result = fn()
                if inspect.isawaitable(result):
                    await result
                elapsed = time.perf_counter() - start
                if round_ >= warmup:
                    times[name].append(elapsed)
                progress.advance(task)
    return times


def machine() -> str:
    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )


def write_table(
    name: str,
    title: str,
    times: dict[str, list[float]],
    baseline: str,
    notes: str = "",
    unit_scale: float = 1000.0,
    unit: str = "ms",
) -> str:
    base = statistics.median(times[baseline])
    lines = [f"### {title}", "", f"Machine: {machine()}. Median of {len(times[baseline])} "
             "interleaved rounds.", "", f"| case | median {unit} | ratio to {baseline} |",
             "|---|---:|---:|"]  # fmt: skip
    for case, values in times.items():
        med = statistics.median(values)
        lines.append(f"| {case} | {med * unit_scale:.1f} | {med / base:.2f}× |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return text
