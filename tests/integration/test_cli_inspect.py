"""`tviz inspect` writes a heatmap, a JSON dump and a safetensors dump with a tap manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

pytestmark = pytest.mark.integration


def test_inspect_writes_png_json_and_safetensors(tmp_path: Path, artifacts: Path) -> None:
    png, js, st = artifacts / "cli-map.png", tmp_path / "d.json", tmp_path / "d.safetensors"
    cli = Path(sys.executable).parent / "tviz"
    result = subprocess.run(
        [str(cli), "inspect", "The bank of the river flooded", "--layer", "5", "--head", "2",
         "--out", str(png), "--json", str(js), "--safetensors", str(st)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    dump = json.loads(js.read_text())
    assert [t["text"] for t in dump["tokens"]] == [
        "The",
        " bank",
        " of",
        " the",
        " river",
        " flooded",
    ]
    pattern = dump["taps"]["layers.5.attn.pattern"]
    assert pattern["shape"] == [1, 6, 6]
    assert dump["taps"]["layers.5.attn.masked_scores"]["data"][0][0][1] is None  # -inf
    with safe_open(str(st), "numpy") as f:
        manifest = json.loads(f.metadata()["tviz_manifest"])
        assert set(manifest["taps"]) == set(f.keys()) == set(dump["taps"])
        assert f.get_tensor("layers.5.attn.pattern").shape == (1, 6, 6)


def test_inspect_bad_layer_is_a_clear_error() -> None:
    cli = Path(sys.executable).parent / "tviz"
    result = subprocess.run(
        [str(cli), "inspect", "hello", "--layer", "99"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "layers: 99" in result.stderr
    assert "Traceback" not in result.stderr
