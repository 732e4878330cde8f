#!/usr/bin/env bash
# The GPU checks, in one short run on a CUDA machine that has only torch + numpy (no feast,
# bentoml or redis): the CUDA tests of the served model, then `bench model` (bf16 + CUDA graphs,
# fp16, and bf16 + torch.compile'd graphs). JSON and logs go to $OUT (default ./gpu-out).
#   usage: OUT=dir bash scripts/gpu-check.sh
# Optional: pytest wheels in .gpu-wheels/ (pip download pytest iniconfig pluggy packaging -d .gpu-wheels).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
$PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"

if ! $PY -c "import pytest" 2>/dev/null && [ -d .gpu-wheels ]; then
  $PY -m pip install -q --no-index --find-links .gpu-wheels --target /tmp/gpu-pytest pytest \
    && export PYTHONPATH=$PYTHONPATH:/tmp/gpu-pytest
fi
if $PY -c "import pytest" 2>/dev/null; then
  # --noconftest: the suite's conftest starts Redis/Kafka, which this machine does not need
  timeout 150 $PY -m pytest -q -p no:cacheprovider --noconftest tests/test_fast_model.py tests/test_model.py \
    2>&1 | tail -25 > "$OUT/pytest.txt"
  echo "pytest rc=${PIPESTATUS[0]}" >> "$OUT/pytest.txt"
else
  echo "pytest unavailable: CUDA tests not run" > "$OUT/pytest.txt"
fi

bench() {  # name, extra args
  local name=$1; shift
  timeout 170 $PY -m homefeed.bench.serve model --json --repeats 50 "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  echo "$name rc=$?"
}
bench bench_model_bf16
bench bench_model_fp16 --dtype float16
bench bench_model_bf16_compiled --compile
