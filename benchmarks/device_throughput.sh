#!/usr/bin/env bash
# The GPU half of benchmarks/throughput.py as one command on a lent GPU machine (H100/H200), from the repository's
# root, with the wheels of benchmarks/device_wheels.sh in .whl/ (carried there):
#
#   BUDGET=360 benchmarks/device_throughput.sh      # results to $OUT (the device tool's) or benchmarks/results
#
# Installs the wheels into /tmp/site (nothing else on the machine changes), runs the GPU preset within BUDGET
# seconds of rows (default 360; 900 adds the max-autotune variant), then the one-step profile by op category.
# Writes throughput-gpu.json/.md, profile-gpu.md and the log; copy them into benchmarks/results/ and commit.
# QUICK=1: tiny sizes (a smoke test, also on a CPU); WHEELS=DIR: another wheel folder (none there: nothing installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-benchmarks/results}
WHEELS=${WHEELS:-.whl}
mkdir -p "$DEST"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, deepspeed, timm; print('torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| timm',
      timm.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv || true
"$PY" benchmarks/throughput.py --preset gpu --budget-s "${BUDGET:-360}" ${QUICK:+--quick} --out "$DEST" 2>&1 | tee "$DEST/throughput-gpu.log"
"$PY" benchmarks/throughput.py --preset gpu --profile ${QUICK:+--quick} --out "$DEST" > /dev/null 2>> "$DEST/throughput-gpu.log"
