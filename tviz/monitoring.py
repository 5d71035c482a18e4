"""Prometheus for the local stack: a scrape configuration for running services, and the binary."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

DASHBOARDS = Path(__file__).resolve().parent.parent / "k8s" / "base" / "dashboards"


def prometheus_config(jobs: dict[str, list[str]], interval_s: float = 5.0) -> str:
    """prometheus.yml scraping `jobs` (job name → host:port list of /metrics endpoints)."""
    config = {
        "global": {
            "scrape_interval": f"{interval_s:g}s",
            "evaluation_interval": f"{interval_s:g}s",
        },
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def command(config: Path, data_dir: Path, port: int) -> list[str]:
    exe = prometheus_binary()
    if exe is None:
        raise FileNotFoundError("prometheus is not installed (apt-get install prometheus)")
    return [
        exe, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]  # fmt: skip


def dashboard_queries() -> dict[str, list[str]]:
    """Every panel's PromQL, by "dashboard / panel" (what the dashboard test checks)."""
    import json

    queries: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            queries[f"{board['title']} / {panel['title']}"] = [t["expr"] for t in panel["targets"]]
    return queries
