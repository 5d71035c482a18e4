"""`tviz loadtest`: a headless locust run with CSV and HTML reports and a summary."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtest" / "locustfile.py"


def run_loadtest(
    target: str, inspector: str | None, users: int, spawn_rate: float, duration: str,
    out_dir: Path, api_key: str | None, console: Console,
) -> int:  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    if inspector:
        env["TVIZ_LOADTEST_INSPECTOR"] = inspector
    if api_key:
        env["TVIZ_API_KEY"] = api_key
    locust = Path(sys.executable).parent / "locust"
    cmd = [
        str(locust), "-f", str(LOCUSTFILE), "--host", target, "--headless", "-u", str(users),
        "-r", str(spawn_rate), "-t", duration, "--csv", str(out_dir / "tviz"),
        "--html", str(out_dir / "report.html"), "--only-summary", "--stop-timeout", "30",
    ]  # fmt: skip
    console.print(f"[cyan]•[/] locust: {users} users for {duration} against {target} → {out_dir}")
    code = subprocess.run(cmd, env=env, check=False).returncode
    stats = out_dir / "tviz_stats.csv"
    if stats.exists():
        table = Table(title="load test")
        cols = ["Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%"]
        for c in cols:
            table.add_column(c)
        with stats.open() as f:
            for row in csv.DictReader(f):
                table.add_row(*(row[c] for c in cols))
        console.print(table)
    return code
