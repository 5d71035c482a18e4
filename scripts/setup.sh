#!/usr/bin/env bash
# One set-up for both README commands: .venv, pinned packages, the serving engine for this
# machine, generated gRPC code and the default weights. Idempotent: a second run takes seconds.
#
#   TVIZ_ENGINE=cpu|gpu   force the engine (default: gpu when nvidia-smi sees a GPU, else cpu)
#   PYTHON=python3.11     interpreter for the virtualenv
#   TVIZ_SKIP_WEIGHTS=1   do not fetch the weights (container images: a volume holds them)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;36m[setup]\033[0m %s\n' "$*"; }

PYTHON=${PYTHON:-python3.11}
if [[ -z "${TVIZ_ENGINE:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TVIZ_ENGINE=gpu
  else
    TVIZ_ENGINE=cpu
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# Reinstall only when what we install from has changed.
stamp_file=.venv/.tviz-setup
stamp="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$TVIZ_ENGINE"
if [[ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]]; then
  say "installing tviz with the $TVIZ_ENGINE engine and dev tools (first run: a few minutes, ~3.5 GB)"
  "${PIP[@]}" install --quiet --upgrade pip
  log=.venv/setup-pip.log
  if ! "${PIP[@]}" install --progress-bar off -e ".[$TVIZ_ENGINE,dev]" >"$log" 2>&1; then
    tail -40 "$log"; say "pip install failed (full log: $log)"; exit 1
  fi
  grep -E '^Successfully installed' "$log" | cut -c1-300 || true
  if [[ "$TVIZ_ENGINE" == cpu ]]; then
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break beside the CPU torch
    # (transformers imports torchvision whenever it is installed); text serving needs none.
    say "removing torchvision, torchaudio and torchcodec (incompatible with the CPU torch)"
    "${PIP[@]}" uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  .venv/bin/python -c "import vllm, torch, grpc; print('vllm', vllm.__version__, '| torch', torch.__version__, '| grpcio', grpc.__version__)" 2>/dev/null | tail -1
  echo "$stamp" > "$stamp_file"
else
  say "packages up to date ($TVIZ_ENGINE engine)"
fi

say "generating gRPC code from proto/"
.venv/bin/python -m tviz.codegen

if [[ -n "${TVIZ_SKIP_WEIGHTS:-}" ]]; then
  say "skipping the weights (TVIZ_SKIP_WEIGHTS is set)"
else
  say "fetching the default weights"
  .venv/bin/tviz model fetch
fi
say "ready"
