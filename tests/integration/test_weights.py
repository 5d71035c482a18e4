"""The converted default weights: loadable by HF transformers, digest, clear errors."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tviz.errors import WeightsError
from tviz.model.transformer import Transformer
from tviz.model.weights import MANIFEST_NAME, Manifest, load_manifest

pytestmark = pytest.mark.integration


def test_hf_transformers_answers_paris(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_manifest_digest_matches_files(model_dir: Path) -> None:
    manifest = Manifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
    assert set(manifest.files) == {p.name for p in model_dir.glob("*.safetensors")}
    for name, entry in manifest.files.items():
        assert hashlib.sha256((model_dir / name).read_bytes()).hexdigest() == entry.sha256
    lines = "".join(f"{n}:{manifest.files[n].sha256}\n" for n in sorted(manifest.files))
    assert manifest.digest == hashlib.sha256(lines.encode()).hexdigest()
    assert load_manifest(model_dir, verify=True).digest == manifest.digest


def _linked_copy(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        os.symlink(f, dst / f.name)


def test_missing_weight_file_is_named(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    _linked_copy(model_dir, copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no weight files"):
        load_manifest(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match=r"missing tokenizer\.json"):
        load_manifest(copy)


def test_corrupted_weight_file_is_named(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    _linked_copy(model_dir, copy)
    weights = copy / "model.safetensors"
    weights.unlink()
    shutil.copyfile(model_dir / "model.safetensors", weights)
    with weights.open("r+b") as f:  # flip bytes in the middle of a tensor
        f.seek(weights.stat().st_size // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(WeightsError, match=r"model\.safetensors is corrupted: sha256"):
        load_manifest(copy, verify=True)
    with weights.open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(WeightsError, match=r"model\.safetensors is corrupted: 1000 bytes"):
        load_manifest(copy, verify=False)
    with pytest.raises(WeightsError, match=r"model\.safetensors cannot be read"):
        Transformer.from_pretrained(copy)


def _tviz(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "tviz"
    return subprocess.run(
        [str(cli), *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


def test_model_info_shows_architecture(model_dir: Path) -> None:
    result = _tviz("model", "info", "--no-verify")
    assert result.returncode == 0, result.stderr
    lines = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if line.count("│") >= 3
    }
    assert lines["layers"] == "30" and lines["heads"] == "9" and lines["kv heads"] == "3"
    assert lines["d_model"] == "576" and lines["rope theta"] == "100000"
    manifest = load_manifest(model_dir, verify=False)
    assert manifest.digest.startswith(lines["weights digest"].split()[0][:32])


def test_model_info_on_a_broken_directory_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "TVIZ_MODEL__PATH": str(tmp_path / "nowhere")}
    result = _tviz("model", "info", env=env)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_second_fetch_does_nothing(model_dir: Path) -> None:
    before = (model_dir / "model.safetensors").stat().st_mtime
    result = _tviz("model", "fetch")
    assert result.returncode == 0, result.stderr
    assert "matches its" in result.stderr
    assert (model_dir / "model.safetensors").stat().st_mtime == before
