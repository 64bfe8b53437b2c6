#!/usr/bin/env bash
# The GPU check: tests/gpu and the GPU benchmark rows in one command, for a fresh GPU machine
# without network (ends within 8 minutes; JUnit XML, logs and JSON lines go to one folder).
#
#   benchmarks/gpu_check.sh --prepare   # here, with network: fetch the wheels the GPU machine
#                                       # lacks (pyzmq for CPython 3.12) into .whl/
#   benchmarks/gpu_check.sh [OUT_DIR]   # there: install .whl/*, run everything; OUT_DIR defaults
#                                       # to $OUT (the device tool's folder) or ./gpu-check-out
#
# Without CUDA every GPU test and row skips with its reason, so the script can be dry-run anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${PYTHON:-python3}

if [[ "${1:-}" == "--prepare" ]]; then
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "pyzmq>=25"
    ls -l .whl
    exit
fi

out=${1:-${OUT:-$root/gpu-check-out}}
mkdir -p "$out"
export PYTHONPATH=$root PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null && ! $py -c "import zmq" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ember-site .whl/*.whl || exit 1
    export PYTHONPATH=$root:/tmp/ember-site
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    $py -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$out/machine.txt"

status=0
timeout 330 $py -m pytest -q -p no:cacheprovider -rs --timeout=120 tests/gpu \
    --junitxml "$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log" || status=1
# every workload whose name starts with gpu_ or dyn_tensor_ (the GPU rows, whatever exists now)
rows=$($py -m benchmarks --list | awk '$1 ~ /^(gpu_|dyn_tensor_)/ {print $1}' | paste -sd, -)
timeout 150 $py -m benchmarks --only "$rows" --json-out "$out/gpu-rows.jsonl" 2>&1 | tee "$out/gpu-rows.log" || status=1
exit $status
