#!/usr/bin/env bash
# Wheels for a lent GPU machine that has Python 3.12 and PyTorch but no package registry (the device tool's
# nvidia-h200 image): what benchmarks/throughput.py needs there beyond that image, at this venv's versions.
#
#   benchmarks/device_wheels.sh            # here (make device-wheels): writes .whl/ (about 5 MB; git ignores it)
#
# Then one device run, with `.whl` carried, does it all: benchmarks/device_throughput.sh.
# DeepSpeed ships no wheel on PyPI: its pure-Python wheel is built here (DS_BUILD_OPS=0: ops are JIT-built where used).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-.whl}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
mkdir -p "$OUT"
pins=()
for pkg in hjson pydantic pydantic_core annotated-types typing-inspection; do pins+=("$pkg==$(version "$pkg")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$OUT" "${pins[@]}"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "deepspeed==$(version deepspeed)"
ls -1 "$OUT"
