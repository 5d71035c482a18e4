"""Shared fixtures: the real converted weights (scripts/setup.sh fetches them)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tviz.config import ModelSettings

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    directory = ModelSettings().directory
    if not (directory / "tviz-manifest.json").exists():
        pytest.fail(f"{directory} is missing: run scripts/setup.sh (it fetches the weights)")
    return directory


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
