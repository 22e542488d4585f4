#!/usr/bin/env bash
# A CUDA training check on a GPU machine: the main job with compute=gpu (fp32 and bf16-mixed),
# a short training on the full data. Usage: bash benchmarks/cuda_check.sh [mirror-url]
set -euo pipefail
export MNISTOPS_DATA_MIRROR="${1:-${MNISTOPS_DATA_MIRROR:-}}"
export MNISTOPS_HOME="${MNISTOPS_HOME:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
time "$PY" -m mnistops compute=gpu trainer.max_epochs=2 trainer.enable_progress_bar=false
time "$PY" -m mnistops stage=train compute=gpu trainer.precision=bf16-mixed trainer.max_epochs=1 \
  trainer.enable_progress_bar=false
"$PY" -m mnistops stage=evaluate
